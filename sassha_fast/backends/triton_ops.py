"""The triton backend's ops as dispatcher operators, ``torch.ops.sassha_fast.triton_<op>``,
each implemented by one launch of a Triton kernel over the whole list of tensors
(``sassha_fast.triton_kernels``), with the fake kernels of ``fake_kernels.py``. So, as for
the C++ ops, torch.compile traces a call as an op instead of breaking the graph, FakeTensor
and meta tensors reach the fake kernel, and a tensor subclass with its own dispatch
(DTensor) receives the op and decides.

The schemas are those of the C++ ops (csrc/schema.cpp; a test keeps them equal) under
other names: one op cannot have two CUDA kernels, and which backend runs is the user's
choice, not the dispatcher's. They are written out because custom_op cannot infer an
optional list (``Tensor[]?``) from type hints. ``torch.library.custom_op`` adds what the C++ side does by
hand: written lists' version counters are bumped, and autograd refuses a backward through
an op instead of returning a wrong gradient. The namespace is the one ``sassha_fast._C``
defines (TORCH_LIBRARY) when it loads; custom_op adds to it as a fragment, so these ops
exist whether or not the extension was built.

Per-step scalars are one-element tensors, as in the C++ schemas (custom_op has no type for
a number-or-tensor argument): a number comes as a float64 CPU tensor. ``launch.scalar``
passes a CPU tensor to GPU kernels by value and a tensor on the kernels' device by pointer.
"""
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from sassha_fast.triton_kernels import kernels
from sassha_fast.triton_kernels.launch import (Operand, Prepared, flag_arg, largest_finite,
                                               scalar, tl_dtype)

from . import fake_kernels


def _power_mode(hessian_power: float):
    """Which specialisation of the power a kernel compiles (see ``kernels._power``)."""
    return {0.5: kernels.POW_SQRT, 1.0: kernels.POW_ONE}.get(float(hessian_power),
                                                             kernels.POW_ANY)


def _step_scalars(op: str, device: torch.device, lr: Tensor, bias_correction1: Tensor,
                  bias_correction2: Tensor, weight_decay: float, beta1: float,
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


# Opaque custom ops, not torch.library.triton_op / wrap_triton (which would show the
# compiler the kernels themselves): those trace kernels that take their tensors as
# arguments, and these kernels find theirs through a device table of addresses (data_ptr)
# built per call, which neither a FakeTensor (it has no address) nor a traced graph (the
# addresses change from call to call) can provide.
@torch.library.custom_op("sassha_fast::triton_global_norm", mutates_args=(),
                         schema="(Tensor[] tensors, Tensor[]? weights) -> Tensor")
def global_norm(tensors: List[Tensor], weights: Optional[List[Tensor]]) -> Tensor:
    operands = [Operand("tensors", tensors)]
    if weights is not None:
        operands.append(Operand("weights", weights))
    with Prepared("global_norm", operands) as run:
        return run.reduction(kernels.sum_squares_kernel, sqrt=True, WEIGHTED=weights is not None,
                             X_DTYPE=tl_dtype(operands[0].tensors),
                             W_DTYPE=tl_dtype(operands[-1].tensors))


@torch.library.custom_op("sassha_fast::triton_perturb", mutates_args=("params", "grads"),
                         schema="(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor scale, "
                         "bool adaptive, Tensor? found_inf) -> ()")
def perturb(params: List[Tensor], grads: List[Tensor], scale: Tensor, adaptive: bool,
            found_inf: Optional[Tensor]) -> None:
    if not params:
        return
    with Prepared("perturb", [Operand("params", params, written=True),
                              Operand("grads", grads, written=True)]) as run:
        scale_arg, scale_is_ptr = scalar("perturb", "scale", scale, run.device)
        found_inf_ptr, skippable = flag_arg("perturb", "found_inf", found_inf, run.device)
        run.elementwise(kernels.perturb_kernel, scale=scale_arg, found_inf=found_inf_ptr,
                        SCALE_IS_PTR=scale_is_ptr, SKIPPABLE=skippable,
                        ADAPTIVE=bool(adaptive), P_DTYPE=tl_dtype(params),
                        G_DTYPE=tl_dtype(grads))


@torch.library.custom_op(
    "sassha_fast::triton_sassha_update", mutates_args=("params", "exp_avgs", "wrote_nonfinite"),
    schema="(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, "
    "Tensor[] exp_hessians, Tensor[]? perturbations, Tensor lr, float weight_decay, "
    "float beta1, Tensor bias_correction1, Tensor bias_correction2, float hessian_power, "
    "float eps, Tensor? found_inf, Tensor(c!)? wrote_nonfinite=None) -> ()")
def sassha_update(params: List[Tensor], grads: List[Tensor], exp_avgs: List[Tensor],
                  exp_hessians: List[Tensor], perturbations: Optional[List[Tensor]],
                  lr: Tensor, weight_decay: float, beta1: float, bias_correction1: Tensor,
                  bias_correction2: Tensor, hessian_power: float, eps: float,
                  found_inf: Optional[Tensor], wrote_nonfinite: Optional[Tensor] = None) -> None:
    if not params:
        return
    operands = [Operand("params", params, written=True), Operand("grads", grads),
                Operand("exp_avgs", exp_avgs, written=True, fp32=True),
                Operand("exp_hessians", exp_hessians, fp32=True)]
    if perturbations is not None:
        operands.append(Operand("perturbations", perturbations))
    with Prepared("sassha_update", operands) as run:
        step, pointers = _step_scalars("sassha_update", run.device, lr, bias_correction1,
                                       bias_correction2, weight_decay, beta1, hessian_power,
                                       eps)
        found_inf_ptr, skippable = flag_arg("sassha_update", "found_inf", found_inf, run.device)
        flag_ptr, flagged = flag_arg("sassha_update", "wrote_nonfinite", wrote_nonfinite,
                                     run.device)
        run.elementwise(kernels.sassha_update_kernel, **step, found_inf=found_inf_ptr,
                        wrote_nonfinite=flag_ptr, p_largest=largest_finite(params),
                        SCALAR_PTRS=pointers, SKIPPABLE=skippable, FLAGGED=flagged,
                        POWER=_power_mode(hessian_power), UNPERTURB=perturbations is not None,
                        P_DTYPE=tl_dtype(params), G_DTYPE=tl_dtype(grads),
                        E_DTYPE=tl_dtype(perturbations or params))


@torch.library.custom_op("sassha_fast::triton_hessian_ema",
                         mutates_args=("exp_hessians", "wrote_nonfinite"),
                         schema="(Tensor(a!)[] exp_hessians, Tensor[] hessians, float beta2, "
                         "Tensor? found_inf, Tensor(b!)? wrote_nonfinite=None) -> ()")
def hessian_ema(exp_hessians: List[Tensor], hessians: List[Tensor], beta2: float,
                found_inf: Optional[Tensor], wrote_nonfinite: Optional[Tensor] = None) -> None:
    if not exp_hessians:
        return
    with Prepared("hessian_ema", [Operand("exp_hessians", exp_hessians, written=True, fp32=True),
                                  Operand("hessians", hessians)]) as run:
        found_inf_ptr, skippable = flag_arg("hessian_ema", "found_inf", found_inf, run.device)
        flag_ptr, flagged = flag_arg("hessian_ema", "wrote_nonfinite", wrote_nonfinite,
                                     run.device)
        run.elementwise(kernels.hessian_ema_kernel, beta2=float(beta2),
                        one_minus_beta2=1 - float(beta2), found_inf=found_inf_ptr,
                        wrote_nonfinite=flag_ptr, SKIPPABLE=skippable, FLAGGED=flagged,
                        H_DTYPE=tl_dtype(hessians))


@torch.library.custom_op(
    "sassha_fast::triton_msassha_update",
    mutates_args=("params", "exp_avgs", "wrote_nonfinite"),
    schema="(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, "
    "Tensor[] exp_hessians, Tensor norm_factor, Tensor lr, float weight_decay, "
    "float beta1, Tensor bias_correction1, Tensor bias_correction2, float hessian_power, "
    "float eps, Tensor? found_inf, Tensor(c!)? wrote_nonfinite=None) -> Tensor")
def msassha_update(params: List[Tensor], grads: List[Tensor], exp_avgs: List[Tensor],
                   exp_hessians: List[Tensor], norm_factor: Tensor, lr: Tensor,
                   weight_decay: float, beta1: float, bias_correction1: Tensor,
                   bias_correction2: Tensor, hessian_power: float, eps: float,
                   found_inf: Optional[Tensor], wrote_nonfinite: Optional[Tensor] = None
                   ) -> Tensor:
    if not params:  # what the fake kernel answers, as the C++ op does
        return norm_factor.new_zeros((), dtype=torch.float32)
    with Prepared("msassha_update",
                  [Operand("params", params, written=True), Operand("grads", grads),
                   Operand("exp_avgs", exp_avgs, written=True, fp32=True),
                   Operand("exp_hessians", exp_hessians, fp32=True)]) as run:
        factor, factor_is_ptr = scalar("msassha_update", "norm_factor", norm_factor, run.device)
        step, pointers = _step_scalars("msassha_update", run.device, lr, bias_correction1,
                                       bias_correction2, weight_decay, beta1, hessian_power,
                                       eps)
        found_inf_ptr, skippable = flag_arg("msassha_update", "found_inf", found_inf,
                                            run.device)
        flag_ptr, flagged = flag_arg("msassha_update", "wrote_nonfinite", wrote_nonfinite,
                                     run.device)
        return run.reduction(kernels.msassha_update_kernel, sqrt=False, norm_factor=factor,
                             **step, found_inf=found_inf_ptr, wrote_nonfinite=flag_ptr,
                             p_largest=largest_finite(params),
                             SCALAR_PTRS=(factor_is_ptr,) + pointers, SKIPPABLE=skippable,
                             FLAGGED=flagged,
                             POWER=_power_mode(hessian_power), P_DTYPE=tl_dtype(params),
                             G_DTYPE=tl_dtype(grads))


@torch.library.custom_op("sassha_fast::triton_add_scaled", mutates_args=("params",),
                         schema="(Tensor(a!)[] params, Tensor[] tensors, Tensor alpha) -> ()")
def add_scaled(params: List[Tensor], tensors: List[Tensor], alpha: Tensor) -> None:
    if not params:
        return
    with Prepared("add_scaled", [Operand("params", params, written=True),
                                 Operand("tensors", tensors)]) as run:
        alpha_arg, is_ptr = scalar("add_scaled", "alpha", alpha, run.device)
        run.elementwise(kernels.add_scaled_kernel, alpha=alpha_arg, ALPHA_IS_PTR=is_ptr,
                        P_DTYPE=tl_dtype(params), T_DTYPE=tl_dtype(tensors))


fake_kernels.register("triton_")
