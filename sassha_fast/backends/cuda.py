"""cuda backend: the fused CUDA kernels of the extension ``sassha_fast._C`` (csrc/cuda/).

Each op is one pass of a multi-tensor launcher over the whole list (a few kernel launches
however many tensors), reading and writing every element once. Norms stay on the device.
Scalars (``scale``, ``norm_factor``, ``alpha``, ``lr`` and both bias corrections) may be
numbers or one-element tensors; a CUDA tensor is read by the kernel when it runs, so a step
captured in a CUDA graph can be replayed after writing new values into those tensors.
"""
from typing import Optional, Union

import torch
from torch import Tensor

from .extension_ops import IMPORT_ERROR, _C, extension_ops
from .reference import Scalar


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


def _kernel_scalar(value: Scalar) -> Union[float, Tensor]:
    """A number, or an fp32 CUDA tensor for the kernel to read. A CPU tensor is read here,
    which costs no synchronisation."""
    if isinstance(value, Tensor):
        return value.float() if value.is_cuda else float(value)
    return float(value)


global_norm, perturb, sassha_update, hessian_ema, msassha_update, add_scaled = \
    extension_ops("cuda", _kernel_scalar)
