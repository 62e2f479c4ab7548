"""triton backend: each op is one Triton kernel launch over the whole list of tensors.

The kernels (``sassha_fast.triton_kernels``) find every tensor through a cached device table
of addresses and block offsets. Norms are two-stage reductions that stay on the device, and
the scalars that come out of them are read by pointer, so no op waits for the host. Runs on
CUDA tensors, or on CPU tensors in Triton's interpreter when TRITON_INTERPRET=1 was set
before triton was first imported (the tests' way to run these kernels without a GPU).
"""
from typing import List, Optional

import torch
from torch import Tensor

from .reference import Scalar

try:
    from ..triton_kernels import kernels
    from ..triton_kernels.launch import Operand, finish_sum, launch, scalar
    _IMPORT_ERROR: Optional[str] = None
except ImportError as exc:
    _IMPORT_ERROR = ("triton is not installed" if getattr(exc, "name", None) == "triton"
                     else f"cannot load the Triton kernels: {exc}")


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
    return dtype != torch.float64


def _power_mode(hessian_power: float) -> str:
    """Which specialisation of the power a kernel compiles (see ``kernels._power``)."""
    return {0.5: "sqrt", 1.0: "one"}.get(float(hessian_power), "pow")


def _step_args(lr: float, weight_decay: float, beta1: float, bias_correction1: float,
               bias_correction2: float, hessian_power: float, eps: float) -> tuple:
    """The scalar arguments of ``kernels._adaptive_step``, in its order."""
    return tuple(float(v) for v in (1 - lr * weight_decay, beta1, 1 - beta1,
                                     lr / bias_correction1, bias_correction2, hessian_power,
                                     eps))


def global_norm(tensors: List[Tensor], weights: Optional[List[Tensor]] = None) -> Tensor:
    if not tensors:
        return torch.zeros((), dtype=torch.float32)
    operands = [Operand("X", tensors)] + ([Operand("W", weights)] if weights is not None else [])
    partials = launch(kernels.sum_squares_kernel, operands, partials=True,
                      WEIGHTED=weights is not None)
    return finish_sum(partials, sqrt=True)


def perturb(params: List[Tensor], grads: List[Tensor], scale: Scalar, adaptive: bool) -> None:
    if not params:
        return
    scale_arg, is_ptr = scalar(scale, params[0].device)
    launch(kernels.perturb_kernel, [Operand("P", params, written=True),
                                    Operand("G", grads, written=True)],
           scale_arg, SCALE_IS_PTR=is_ptr, ADAPTIVE=bool(adaptive))


def sassha_update(params: List[Tensor], grads: List[Tensor], exp_avgs: List[Tensor],
                  exp_hessians: List[Tensor], perturbations: Optional[List[Tensor]], *,
                  lr: float, weight_decay: float, beta1: float, bias_correction1: float,
                  bias_correction2: float, hessian_power: float, eps: float) -> None:
    if not params:
        return
    operands = [Operand("P", params, written=True), Operand("G", grads),
                Operand("M", exp_avgs, written=True, fp32=True),
                Operand("D", exp_hessians, fp32=True)]
    if perturbations is not None:
        operands.append(Operand("E", perturbations))
    launch(kernels.sassha_update_kernel, operands,
           *_step_args(lr, weight_decay, beta1, bias_correction1, bias_correction2,
                       hessian_power, eps),
           POWER=_power_mode(hessian_power), UNPERTURB=perturbations is not None)


def hessian_ema(exp_hessians: List[Tensor], hessians: List[Tensor], beta2: float) -> None:
    if not exp_hessians:
        return
    launch(kernels.hessian_ema_kernel, [Operand("D", exp_hessians, written=True, fp32=True),
                                        Operand("H", hessians)],
           float(beta2), 1 - beta2)


def msassha_update(params: List[Tensor], grads: List[Tensor], exp_avgs: List[Tensor],
                   exp_hessians: List[Tensor], *, norm_factor: Scalar, lr: float,
                   weight_decay: float, beta1: float, bias_correction1: float,
                   bias_correction2: float, hessian_power: float, eps: float) -> Tensor:
    if not params:
        return torch.zeros((), dtype=torch.float32)
    factor, is_ptr = scalar(norm_factor, params[0].device)
    partials = launch(kernels.msassha_update_kernel,
                      [Operand("P", params, written=True), Operand("G", grads),
                       Operand("M", exp_avgs, written=True, fp32=True),
                       Operand("D", exp_hessians, fp32=True)],
                      factor,
                      *_step_args(lr, weight_decay, beta1, bias_correction1, bias_correction2,
                                  hessian_power, eps),
                      partials=True, NF_IS_PTR=is_ptr, POWER=_power_mode(hessian_power))
    return finish_sum(partials, sqrt=False)


def add_scaled(params: List[Tensor], tensors: List[Tensor], alpha: Scalar) -> None:
    if not params:
        return
    alpha_arg, is_ptr = scalar(alpha, params[0].device)
    launch(kernels.add_scaled_kernel, [Operand("P", params, written=True), Operand("T", tensors)],
           alpha_arg, ALPHA_IS_PTR=is_ptr)
