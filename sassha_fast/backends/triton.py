"""triton backend: each op is one Triton kernel launch over the whole list of tensors.

The kernels (``sassha_fast.triton_kernels``) find every tensor through a cached device table
with one row per tensor. Norms are two-stage reductions that stay on the device, and the
per-step scalars and ``found_inf`` may be device tensors read by pointer, so no op waits for
the host. Parameters may be fp32, bf16 or fp16 (not float64: ``supports_dtype``). Runs on
CUDA tensors, or on CPU tensors in Triton's interpreter when TRITON_INTERPRET=1 was set
before triton was first imported (the tests' way to run these kernels without a GPU).

Each op is the dispatcher operator ``torch.ops.sassha_fast.triton_<op>`` (``triton_ops.py``),
so torch.compile traces it as an op. This module adapts the op contract of ``reference.py``
to its schema (a number becomes a one-element tensor) and answers the reductions over no
tensors itself: their zero belongs on the kernels' device, which no argument then names.
"""
from typing import List, Optional

import torch
from torch import Tensor

from .dispatcher_ops import scalar_tensor
from .reference import Scalar

try:
    # The kernels' source is the repository's top-level triton_kernels/, installed under
    # this name (pyproject.toml's package-dir): the name cannot clash with another package.
    from sassha_fast.triton_kernels import kernels
    from sassha_fast.triton_kernels.launch import zero

    from . import triton_ops  # noqa: F401 (defines torch.ops.sassha_fast.triton_<op>)
    _IMPORT_ERROR: Optional[str] = None
except ImportError as exc:
    _IMPORT_ERROR = ("triton is not installed" if getattr(exc, "name", None) == "triton"
                     else f"cannot load the Triton kernels: {exc}")

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def unavailable_reason() -> Optional[str]:
    if _IMPORT_ERROR is not None:
        return _IMPORT_ERROR
    if not kernels.INTERPRETED and not torch.cuda.is_available():
        return ("no CUDA device; set TRITON_INTERPRET=1 before triton is imported to run the "
                "kernels on CPU tensors in Triton's interpreter")
    return None


def supports(device: torch.device) -> bool:
    if _IMPORT_ERROR is not None:
        return False
    return device.type == ("cpu" if kernels.INTERPRETED else "cuda")


def supports_dtype(dtype: torch.dtype) -> bool:
    """Parameters of fp32, bf16 or fp16 (the kernels compute in fp32); not float64."""
    return dtype in SUPPORTED_DTYPES


def global_norm(tensors: List[Tensor], weights: Optional[List[Tensor]] = None) -> Tensor:
    if not tensors:
        return zero()
    return torch.ops.sassha_fast.triton_global_norm.default(tensors, weights)


def perturb(params: List[Tensor], grads: List[Tensor], scale: Scalar, adaptive: bool, *,
            found_inf: Optional[Tensor] = None) -> None:
    torch.ops.sassha_fast.triton_perturb.default(params, grads, scalar_tensor(scale),
                                                 bool(adaptive), found_inf)


def sassha_update(params: List[Tensor], grads: List[Tensor], exp_avgs: List[Tensor],
                  exp_hessians: List[Tensor], perturbations: Optional[List[Tensor]], *,
                  lr: Scalar, weight_decay: float, beta1: float, bias_correction1: Scalar,
                  bias_correction2: Scalar, hessian_power: float, eps: float,
                  found_inf: Optional[Tensor] = None,
                  wrote_nonfinite: Optional[Tensor] = None) -> None:
    torch.ops.sassha_fast.triton_sassha_update.default(
        params, grads, exp_avgs, exp_hessians, perturbations, scalar_tensor(lr), weight_decay,
        beta1, scalar_tensor(bias_correction1), scalar_tensor(bias_correction2), hessian_power,
        eps, found_inf, wrote_nonfinite)


def hessian_ema(exp_hessians: List[Tensor], hessians: List[Tensor], beta2: float, *,
                found_inf: Optional[Tensor] = None,
                wrote_nonfinite: Optional[Tensor] = None) -> None:
    torch.ops.sassha_fast.triton_hessian_ema.default(exp_hessians, hessians, beta2, found_inf,
                                                     wrote_nonfinite)


def msassha_update(params: List[Tensor], grads: List[Tensor], exp_avgs: List[Tensor],
                   exp_hessians: List[Tensor], *, norm_factor: Scalar, lr: Scalar,
                   weight_decay: float, beta1: float, bias_correction1: Scalar,
                   bias_correction2: Scalar, hessian_power: float, eps: float,
                   found_inf: Optional[Tensor] = None,
                   wrote_nonfinite: Optional[Tensor] = None) -> Tensor:
    if not params:
        return zero()
    return torch.ops.sassha_fast.triton_msassha_update.default(
        params, grads, exp_avgs, exp_hessians, scalar_tensor(norm_factor), scalar_tensor(lr),
        weight_decay, beta1, scalar_tensor(bias_correction1), scalar_tensor(bias_correction2),
        hessian_power, eps, found_inf, wrote_nonfinite)


def add_scaled(params: List[Tensor], tensors: List[Tensor], alpha: Scalar) -> None:
    torch.ops.sassha_fast.triton_add_scaled.default(params, tensors, scalar_tensor(alpha))
