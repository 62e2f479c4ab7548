"""cpu backend: the fused ops of ``sassha_fast._C`` (csrc/cpu), one multi-threaded,
vectorized pass over a whole tensor list per op.

Parameters, gradients, perturbations and Hessian estimates may be fp32, bf16 or fp16 (one
dtype per list); optimizer state is fp32; every tensor is on the CPU, and tensor i of every
list has the shape of parameter i. The C++ side checks this and raises RuntimeError naming
the op, the list and the index of the tensor at fault. Any memory layout works: tensors laid
out like their parameter are used in place, others through a copy. Scalars given as 0-d
tensors are read on the host (a CPU tensor: no synchronisation).
"""
from typing import Optional

import torch

from .extension_ops import IMPORT_ERROR, _C, extension_ops


def unavailable_reason() -> Optional[str]:
    if _C is None:
        return IMPORT_ERROR
    if not hasattr(_C, "sassha_update_cpu"):
        return "sassha_fast._C was built without the CPU ops"
    return None


def supports(device: torch.device) -> bool:
    return device.type == "cpu"


def supports_dtype(dtype: torch.dtype) -> bool:
    return dtype in (torch.float32, torch.bfloat16, torch.float16)


def isa() -> str:
    """The instruction set the kernels run with here: "avx512", "avx2" or "generic"."""
    return _C.cpu_isa()


# A 0-d CPU tensor is read on the host: no synchronisation.
global_norm, perturb, sassha_update, hessian_ema, msassha_update, add_scaled = \
    extension_ops("cpu", float)
