"""triton backend: each op is one Triton kernel launch over the whole list of tensors.

The kernels (``sassha_fast.triton_kernels``) find every tensor through a cached device table
with one row per tensor. Norms are two-stage reductions that stay on the device, and the
per-step scalars and ``found_inf`` may be device tensors read by pointer, so no op waits for
the host. Parameters may be fp32, bf16 or fp16 (not float64: ``supports_dtype``). Runs on
CUDA tensors, or on CPU tensors in Triton's interpreter when TRITON_INTERPRET=1 was set
before triton was first imported (the tests' way to run these kernels without a GPU).
"""
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .reference import Scalar
from .tensor_checks import check_plain_tensors

try:
    # The kernels' source is the repository's top-level triton_kernels/, installed under
    # this name (pyproject.toml's package-dir): the name cannot clash with another package.
    from sassha_fast.triton_kernels import kernels
    from sassha_fast.triton_kernels.launch import (Operand, Prepared, found_inf_arg, scalar,
                                                   tl_dtype, zero)
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


def _power_mode(hessian_power: float):
    """Which specialisation of the power a kernel compiles (see ``kernels._power``)."""
    return {0.5: kernels.POW_SQRT, 1.0: kernels.POW_ONE}.get(float(hessian_power),
                                                             kernels.POW_ANY)


def _step_scalars(op: str, device: torch.device, lr: Scalar, bias_correction1: Scalar,
                  bias_correction2: Scalar, weight_decay: float, beta1: float,
                  hessian_power: float, eps: float) -> Tuple[dict, Tuple[bool, ...]]:
    """The keyword arguments of an update kernel's step, and which of lr and the bias
    corrections are pointers."""
    args, pointers = {}, []
    for name, value in (("lr", lr), ("bias_correction1", bias_correction1),
                        ("bias_correction2", bias_correction2)):
        args[name], is_ptr = scalar(op, name, value, device)
        pointers.append(is_ptr)
    args.update(weight_decay=float(weight_decay), beta1=float(beta1),
                one_minus_beta1=1 - float(beta1), hessian_power=float(hessian_power),
                eps=float(eps))
    return args, tuple(pointers)


def _prepared(op: str, operands: List["Operand"]) -> "Prepared":
    """The launch of ``op``, once no operand holds a tensor the kernels cannot read (a
    subclass such as DTensor, a meta tensor, another device)."""
    check_plain_tensors(op, **{operand.name: operand.tensors for operand in operands})
    return Prepared(op, operands)


def global_norm(tensors: List[Tensor], weights: Optional[List[Tensor]] = None) -> Tensor:
    if not tensors:
        return zero()
    operands = [Operand("tensors", tensors)]
    if weights is not None:
        operands.append(Operand("weights", weights))
    with _prepared("global_norm", operands) as run:
        return run.reduction(kernels.sum_squares_kernel, sqrt=True, WEIGHTED=weights is not None,
                             X_DTYPE=tl_dtype(operands[0].tensors),
                             W_DTYPE=tl_dtype(operands[-1].tensors))


def perturb(params: List[Tensor], grads: List[Tensor], scale: Scalar, adaptive: bool, *,
            found_inf: Optional[Tensor] = None) -> None:
    if not params:
        return
    with _prepared("perturb", [Operand("params", params, written=True),
                              Operand("grads", grads, written=True)]) as run:
        scale_arg, scale_is_ptr = scalar("perturb", "scale", scale, run.device)
        found_inf_ptr, skippable = found_inf_arg("perturb", found_inf, run.device)
        run.elementwise(kernels.perturb_kernel, scale=scale_arg, found_inf=found_inf_ptr,
                        SCALE_IS_PTR=scale_is_ptr, SKIPPABLE=skippable,
                        ADAPTIVE=bool(adaptive), P_DTYPE=tl_dtype(params),
                        G_DTYPE=tl_dtype(grads))


def sassha_update(params: List[Tensor], grads: List[Tensor], exp_avgs: List[Tensor],
                  exp_hessians: List[Tensor], perturbations: Optional[List[Tensor]], *,
                  lr: Scalar, weight_decay: float, beta1: float, bias_correction1: Scalar,
                  bias_correction2: Scalar, hessian_power: float, eps: float,
                  found_inf: Optional[Tensor] = None) -> None:
    if not params:
        return
    operands = [Operand("params", params, written=True), Operand("grads", grads),
                Operand("exp_avgs", exp_avgs, written=True, fp32=True),
                Operand("exp_hessians", exp_hessians, fp32=True)]
    if perturbations is not None:
        operands.append(Operand("perturbations", perturbations))
    with _prepared("sassha_update", operands) as run:
        step, pointers = _step_scalars("sassha_update", run.device, lr, bias_correction1,
                                       bias_correction2, weight_decay, beta1, hessian_power,
                                       eps)
        found_inf_ptr, skippable = found_inf_arg("sassha_update", found_inf, run.device)
        run.elementwise(kernels.sassha_update_kernel, **step, found_inf=found_inf_ptr,
                        SCALAR_PTRS=pointers, SKIPPABLE=skippable,
                        POWER=_power_mode(hessian_power), UNPERTURB=perturbations is not None,
                        P_DTYPE=tl_dtype(params), G_DTYPE=tl_dtype(grads),
                        E_DTYPE=tl_dtype(perturbations or params))


def hessian_ema(exp_hessians: List[Tensor], hessians: List[Tensor], beta2: float, *,
                found_inf: Optional[Tensor] = None) -> None:
    if not exp_hessians:
        return
    with _prepared("hessian_ema", [Operand("exp_hessians", exp_hessians, written=True, fp32=True),
                                  Operand("hessians", hessians)]) as run:
        found_inf_ptr, skippable = found_inf_arg("hessian_ema", found_inf, run.device)
        run.elementwise(kernels.hessian_ema_kernel, beta2=float(beta2),
                        one_minus_beta2=1 - float(beta2), found_inf=found_inf_ptr,
                        SKIPPABLE=skippable, H_DTYPE=tl_dtype(hessians))


def msassha_update(params: List[Tensor], grads: List[Tensor], exp_avgs: List[Tensor],
                   exp_hessians: List[Tensor], *, norm_factor: Scalar, lr: Scalar,
                   weight_decay: float, beta1: float, bias_correction1: Scalar,
                   bias_correction2: Scalar, hessian_power: float, eps: float,
                   found_inf: Optional[Tensor] = None) -> Tensor:
    if not params:
        return zero()
    with _prepared("msassha_update",
                  [Operand("params", params, written=True), Operand("grads", grads),
                   Operand("exp_avgs", exp_avgs, written=True, fp32=True),
                   Operand("exp_hessians", exp_hessians, fp32=True)]) as run:
        factor, factor_is_ptr = scalar("msassha_update", "norm_factor", norm_factor, run.device)
        step, pointers = _step_scalars("msassha_update", run.device, lr, bias_correction1,
                                       bias_correction2, weight_decay, beta1, hessian_power,
                                       eps)
        found_inf_ptr, skippable = found_inf_arg("msassha_update", found_inf, run.device)
        return run.reduction(kernels.msassha_update_kernel, sqrt=False, norm_factor=factor,
                             **step, found_inf=found_inf_ptr,
                             SCALAR_PTRS=(factor_is_ptr,) + pointers, SKIPPABLE=skippable,
                             POWER=_power_mode(hessian_power), P_DTYPE=tl_dtype(params),
                             G_DTYPE=tl_dtype(grads))


def add_scaled(params: List[Tensor], tensors: List[Tensor], alpha: Scalar) -> None:
    if not params:
        return
    with _prepared("add_scaled", [Operand("params", params, written=True),
                                 Operand("tensors", tensors)]) as run:
        alpha_arg, is_ptr = scalar("add_scaled", "alpha", alpha, run.device)
        run.elementwise(kernels.add_scaled_kernel, alpha=alpha_arg, ALPHA_IS_PTR=is_ptr,
                        P_DTYPE=tl_dtype(params), T_DTYPE=tl_dtype(tensors))
