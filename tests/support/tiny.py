"""A tiny network and batch shared by the production tests, exact snapshots of a model
with its optimizer, and a double backward drawing the finite difference's z."""
import copy

import torch
from torch import nn

from sassha_fast import MSASSHA, SASSHA
from sassha_fast.hessian import estimators

LOSS = nn.CrossEntropyLoss()
# What the tests pass where the authors' constructor defaults (which the package keeps) would
# change what they cover: SASSHA's rho=0 turns the perturbation off (one backward per step),
# and the M-SASSHA tests were written for hessian_power=0.5.
PAPER_SETTINGS = {SASSHA: dict(rho=0.05), MSASSHA: dict(hessian_power=0.5)}


def make_model(dtype=torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)


def whole_batch(dtype=torch.float32):
    generator = torch.Generator().manual_seed(1)
    return (torch.randn(16, 5, generator=generator).to(dtype),
            torch.randint(0, 3, (16,), generator=generator))


def with_finite_difference_draws(opt) -> None:
    """``opt`` (a double backward) draws the finite difference's Rademacher vectors instead
    of the authors': set against a finite-difference run it then differs by the estimator,
    not by Hutchinson's noise between two draws (about 140%)."""
    opt._rademacher = estimators.make("finite_difference", "one_sided", None).probe_source(
        opt.seed)


def snapshot(model: nn.Module, opt) -> dict:
    return {"params": [p.detach().clone() for p in model.parameters()],
            "optimizer": copy.deepcopy(opt.state_dict())}


def assert_identical(got, want, path="") -> None:
    """Bit-for-bit equality of nested dicts / lists of tensors and numbers."""
    if isinstance(want, dict):
        assert got.keys() == want.keys(), path
        for key in want:
            assert_identical(got[key], want[key], f"{path}/{key}")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), path
        for i, (a, b) in enumerate(zip(got, want)):
            assert_identical(a, b, f"{path}/{i}")
    elif isinstance(want, torch.Tensor):
        assert got.dtype == want.dtype and torch.equal(got, want), path
    else:
        assert got == want, path
