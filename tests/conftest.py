import os
import pathlib

import pytest
import torch

REPO = pathlib.Path(__file__).resolve().parents[1]


def golden_dir() -> pathlib.Path:
    """The authors' recorded trajectories: ../shared/golden beside the checkout (or
    $SASSHA_GOLDEN_DIR)."""
    configured = os.environ.get("SASSHA_GOLDEN_DIR")
    return pathlib.Path(configured) if configured else REPO.parent / "shared" / "golden"


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
