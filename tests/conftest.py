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


def cpu_kernels() -> str:
    """The instruction sets this process's CPU kernels run with (torch's, sassha_fast's)."""
    from sassha_fast import available_backends
    isa = "unavailable"
    if available_backends()["cpu"].available:
        from sassha_fast.backends import cpu
        isa = cpu.isa()
    return (f"CPU kernels: torch {torch.backends.cpu.get_cpu_capability().lower()}, "
            f"sassha_fast cpu backend {isa}")


def pytest_report_header(config):
    # test_portability.py reads this line from the runs it forces onto other instruction sets.
    return cpu_kernels()
