"""cpu backend: the fused ops of ``sassha_fast._C`` (csrc/cpu), one multi-threaded,
vectorized pass over a whole tensor list per op.

Parameters, gradients, perturbations and Hessian estimates may be fp32, bf16 or fp16 (one
dtype per list) with fp32 optimizer state, or all float64 (computed in double); every
tensor is a plain ``torch.Tensor`` on the CPU, and tensor i of every list has the shape of
parameter i. The C++ side checks this and raises an error naming the op, the list and the
index of the tensor at fault (TypeError for a tensor subclass such as DTensor, RuntimeError
otherwise). Any memory layout works: tensors laid out like their parameter are used in
place, others through a copy. Scalars given as one-element CPU tensors, and ``found_inf``,
are read by the C++ side (no synchronisation, no Python conversion).
"""
from typing import Optional

import torch

from .extension_ops import IMPORT_ERROR, _C, extension_ops
from .reference import Scalar


def unavailable_reason() -> Optional[str]:
    if _C is None:
        return IMPORT_ERROR
    if not hasattr(_C, "sassha_update_cpu"):
        return "sassha_fast._C was built without the CPU ops"
    return None


def supports(device: torch.device) -> bool:
    return device.type == "cpu"


def supports_dtype(dtype: torch.dtype) -> bool:
    return dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def isa() -> str:
    """The instruction set the kernels run with here: "avx512", "avx2" or "generic"."""
    return _C.cpu_isa()


# Numbers and one-element CPU tensors go to the extension as they are: it reads them in C++.
def _as_given(value: Scalar) -> Scalar:
    return value


global_norm, perturb, sassha_update, hessian_ema, msassha_update, add_scaled = \
    extension_ops("cpu", _as_given)
