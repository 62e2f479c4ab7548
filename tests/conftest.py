import os
import pathlib

import torch

# Triton reads this when it is first imported: without a GPU its kernels then run on CPU
# tensors in the interpreter, so CI exercises the triton backend too.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_GOLDEN = REPO.parent / "shared" / "golden"


def golden_dir() -> pathlib.Path:
    """The authors' recorded trajectories: the copy in tests/data/golden (a fresh clone has
    it), or $SASSHA_GOLDEN_DIR."""
    configured = os.environ.get("SASSHA_GOLDEN_DIR")
    return pathlib.Path(configured) if configured else REPO / "tests" / "data" / "golden"


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
