"""cuda backend: the CUDA kernels of the dispatcher ops ``torch.ops.sassha_fast`` (csrc/cuda/;
called through ``dispatcher_ops.py``).

Each op is one pass of a multi-tensor launcher over the whole list (a few kernel launches
however many tensors), reading and writing every element once. Norms stay on the device.
Scalars (``scale``, ``norm_factor``, ``alpha``, ``lr`` and both bias corrections) may be
numbers or one-element tensors; a CUDA tensor is read by the kernel when it runs, so a step
captured in a CUDA graph can be replayed after writing new values into those tensors.
"""
from typing import Optional

import torch

from .dispatcher_ops import (add_scaled, global_norm, hessian_ema, msassha_update,  # noqa: F401
                             perturb, sassha_update)
from .extension import IMPORT_ERROR, _C


def unavailable_reason() -> Optional[str]:
    if _C is None:
        return IMPORT_ERROR
    if not _C.with_cuda:
        return f"sassha_fast._C was built without its CUDA part ({_C.cuda_status})"
    if not torch.cuda.is_available():
        return "no CUDA device present"
    return None


def supports(device: torch.device) -> bool:
    return device.type == "cuda"


def supports_dtype(dtype: torch.dtype) -> bool:
    """Parameters of fp32, bf16 or fp16 (the kernels compute in fp32); not float64."""
    return dtype in (torch.float32, torch.bfloat16, torch.float16)
