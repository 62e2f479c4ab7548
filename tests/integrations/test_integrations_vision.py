"""The timm and torchvision examples (examples/) train: the loss falls. timm's ViT goes
through SDPA (finite-difference estimate), torchvision's ResNet-18 through convolutions
and BatchNorm (double backward)."""
import importlib.util
import pathlib

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_timm_vit_trains_with_the_finite_difference_estimator():
    pytest.importorskip("timm", reason="the integrations extra (pip install -e .[integrations])")
    losses = load("timm_vit").main(steps=24)
    assert losses[-1] < 0.5 * losses[0]


def test_torchvision_resnet_trains_with_the_double_backward():
    pytest.importorskip("torchvision",
                        reason="the integrations extra (pip install -e .[integrations])")
    losses = load("torchvision_resnet").main(steps=10)
    assert losses[-1] < 0.7 * losses[0]
