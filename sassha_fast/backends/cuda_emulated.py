"""cuda_emulated backend, for tests only: the CUDA kernels of csrc/cuda/ compiled for the host
and run on CPU tensors, every block and every thread of a block in turn
(csrc/cuda/host_emulation.h; ops ``torch.ops.sassha_fast_cuda_emulated.<op>``). It runs the
kernels' own code (chunk bounds, vector and scalar paths, 16-bit loads and stores, block
reductions, both kernel argument layouts) on a machine without a GPU, slowly; it says
nothing about what only a GPU shows (docs/backends.md). Never picked by "auto" nor listed by
``available_backends()``: name it, as the tests do.
"""
from contextlib import contextmanager
from typing import Iterator, Optional

import torch

from .dispatcher_ops import LibraryOps
from .extension import IMPORT_ERROR, _C

_ops = LibraryOps("sassha_fast_cuda_emulated")
global_norm = _ops.global_norm
perturb = _ops.perturb
sassha_update = _ops.sassha_update
hessian_ema = _ops.hessian_ema
msassha_update = _ops.msassha_update
add_scaled = _ops.add_scaled

ARG_BYTES = (4096, 32764)  # the launches' kernel argument layouts (csrc/cuda/launch_plan.h)


def unavailable_reason() -> Optional[str]:
    if _C is None:
        return f"the CUDA kernels' host emulation is in sassha_fast._C: {IMPORT_ERROR}"
    return None


def supports(device: torch.device) -> bool:
    return device.type == "cpu"


def supports_dtype(dtype: torch.dtype) -> bool:
    """As the cuda backend: parameters of fp32, bf16 or fp16 (the kernels compute in fp32)."""
    return dtype in (torch.float32, torch.bfloat16, torch.float16)


@contextmanager
def kernel_arg_bytes(arg_bytes: int) -> Iterator[None]:
    """Within the block, the emulated launches take kernel arguments of ``arg_bytes`` (4096
    or 32764, which decides how many tensors and blocks one launch holds)."""
    previous = torch.ops.sassha_fast_cuda_emulated.set_kernel_arg_bytes(arg_bytes)
    try:
        yield
    finally:
        torch.ops.sassha_fast_cuda_emulated.set_kernel_arg_bytes(previous)
