"""The compiled extension ``sassha_fast._C``, loaded only when it was built against the
torch that is running, and the facts of its build (``build_info()``). Loading it defines
the dispatcher ops ``torch.ops.sassha_fast.<op>``; their fake kernels are registered then.

An extension built against another torch release does not share its C++ ABI: importing it
fails with an undefined symbol at best and crashes later at worst. setup.py records the
torch it built against in ``sassha_fast/_build_config.py``; that record is compared with
the running torch before ``_C`` is imported. On a mismatch ``_C`` is left alone, the backends
that need it (cpu, cuda) report why and what to run, and the others (reference, foreach,
triton where usable) still work.
"""
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, List, Optional, Tuple

import torch

from .._version import __version__

try:
    from .. import _build_config
except ImportError:  # an extension built by other means (copied in, or before this record)
    _build_config = None


def _release(version: str) -> str:
    """"2.14.1" for "2.14.1+cu130": the local label names the build variant, not the ABI."""
    return version.split("+", 1)[0]


def torch_mismatch(built_torch: str, built_cuda: Optional[str], cuda_targets: List[str],
                   running_torch: str, running_cuda: Optional[str]) -> Optional[str]:
    """Why an extension built against ``built_torch`` (CUDA ``built_cuda``, with a CUDA part
    when ``cuda_targets`` is not empty) cannot be loaded under ``running_torch``, or None."""
    if _release(built_torch) != _release(running_torch):
        return f"built against torch {built_torch}, but torch {running_torch} is running"
    if cuda_targets and running_cuda != built_cuda:
        running = f"CUDA {running_cuda}" if running_cuda else "a CPU-only build"
        return (f"its CUDA part was built against torch {built_torch} with CUDA {built_cuda}, "
                f"but torch {running_torch} ({running}) is running")
    return None


def rebuild_command() -> str:
    """What to run to rebuild _C against the running torch."""
    source = Path(__file__).resolve().parents[2]
    if (source / "setup.py").is_file() and (source / "csrc").is_dir():  # a source checkout
        return f"pip install --no-build-isolation -e {source}"
    return ("pip install --no-build-isolation --no-deps --force-reinstall "
            f"<sassha_fast's source directory, or sassha_fast-{__version__}.tar.gz>")


def _load() -> Tuple[Optional[ModuleType], Optional[str]]:
    """(_C, None), or (None, why it is not loaded and what to run)."""
    if _build_config is not None:
        mismatch = torch_mismatch(_build_config.TORCH_VERSION, _build_config.TORCH_CUDA_VERSION,
                                  _build_config.CUDA_TARGETS, torch.__version__,
                                  torch.version.cuda)
        if mismatch is not None:
            reason = (f"sassha_fast._C is not loaded: it was {mismatch}; rebuild it against "
                      f"this torch: {rebuild_command()}")
            warnings.warn(reason + " (the reference and foreach backends, and triton where "
                          "usable, still work)", RuntimeWarning)
            return None, reason
    try:
        from .. import _C
    except ImportError as exc:  # an install without its extension still offers other backends
        return None, (f"cannot import the extension sassha_fast._C ({exc}); rebuild it: "
                      f"{rebuild_command()}")
    from . import fake_kernels
    fake_kernels.register("")
    return _C, None


_C, IMPORT_ERROR = _load()


def build_info() -> Dict[str, Any]:
    """The facts of this install: its version, the torch and CUDA that ``_C`` was built
    against, the GPU targets of its CUDA part and the CPU instruction sets of its kernels
    (None where setup.py left no record), the running torch, and whether ``_C`` is loaded
    ("loaded", or why not)."""
    def recorded(name: str) -> Any:
        return getattr(_build_config, name, None)

    return {
        "version": __version__,
        "built_with_torch": recorded("TORCH_VERSION"),
        "built_with_cuda": recorded("TORCH_CUDA_VERSION"),
        "cuda_part": recorded("CUDA_PART"),
        "cuda_targets": recorded("CUDA_TARGETS"),
        "cpu_isas": recorded("CPU_ISAS"),
        "running_torch": torch.__version__,
        "extension": "loaded" if _C is not None else IMPORT_ERROR,
    }
