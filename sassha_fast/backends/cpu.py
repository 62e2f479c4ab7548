"""cpu backend: the CPU kernels of the dispatcher ops ``torch.ops.sassha_fast`` (csrc/cpu;
called through ``dispatcher_ops.py``), one multi-threaded, vectorized pass over a whole
tensor list per op.

Parameters, gradients, perturbations and Hessian estimates may be fp32, bf16 or fp16 (one
dtype per list) with fp32 optimizer state, or all float64 (computed in double); every
tensor is on the CPU, and tensor i of every list has the shape of parameter i. The C++ side
checks this and raises an error naming the op, the list and the index of the tensor at
fault. Any memory layout works: tensors laid out like their parameter are used in place,
others through a copy. Scalars and ``found_inf`` are read by the C++ side.
"""
from typing import Optional

import torch

from .dispatcher_ops import (add_scaled, global_norm, hessian_ema, msassha_update,  # noqa: F401
                             perturb, sassha_update)
from .extension import IMPORT_ERROR, _C


def unavailable_reason() -> Optional[str]:
    if _C is None:
        return IMPORT_ERROR
    return None


def supports(device: torch.device) -> bool:
    return device.type == "cpu"


def supports_dtype(dtype: torch.dtype) -> bool:
    return dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def isa() -> str:
    """The instruction set the kernels run with here: "avx512", "avx2" or "generic"."""
    return _C.cpu_isa()
