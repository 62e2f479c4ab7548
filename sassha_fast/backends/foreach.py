"""foreach backend: each step of an op is one ``torch._foreach_*`` call over the whole list.

Runs wherever PyTorch does. fp32 parameters are updated in place; low-precision ones go
through fp32 copies that are rounded back once, as the op contract in ``reference.py`` asks.
"""
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .reference import Scalar


def unavailable_reason():
    return None


def supports(device: torch.device) -> bool:
    return True


def _fp32(tensors: List[Tensor]) -> Tuple[List[Tensor], bool]:
    """The tensors as fp32 (themselves when already fp32) and whether they are copies."""
    if not tensors or tensors[0].dtype == torch.float32:
        return tensors, False
    return [t.float() for t in tensors], True


def _sum_of_squares(tensors: List[Tensor]) -> Tensor:
    return torch.stack(torch._foreach_norm(tensors)).square().sum()


def global_norm(tensors: List[Tensor], weights: Optional[List[Tensor]] = None) -> Tensor:
    if not tensors:
        return torch.zeros((), dtype=torch.float32)
    xs, _ = _fp32(tensors)
    if weights is not None:
        ws, _ = _fp32(weights)
        xs = torch._foreach_mul(torch._foreach_abs(ws), xs)
    return torch.stack(torch._foreach_norm(xs)).norm(p=2)


def perturb(params: List[Tensor], grads: List[Tensor], scale: Scalar, adaptive: bool) -> None:
    if not params:
        return
    es, copied = _fp32(grads)
    if copied:
        es = torch._foreach_mul(es, scale)
    else:
        torch._foreach_mul_(es, scale)
    if adaptive:
        ps, _ = _fp32(params)
        torch._foreach_mul_(es, torch._foreach_mul(ps, ps))
    if copied or adaptive:
        torch._foreach_copy_(grads, es)
    xs, p_copied = _fp32(params)
    torch._foreach_add_(xs, _fp32(grads)[0])
    if p_copied:
        torch._foreach_copy_(params, xs)


def _adaptive_step(xs: List[Tensor], grads: List[Tensor], exp_avgs: List[Tensor],
                   exp_hessians: List[Tensor], lr: float, weight_decay: float, beta1: float,
                   bias_correction1: float, bias_correction2: float, hessian_power: float,
                   eps: float) -> None:
    """Decay, momentum and preconditioned step on fp32 parameters ``xs`` (shared by both
    updates, which differ only in how they leave the perturbed point)."""
    if weight_decay != 0:
        torch._foreach_mul_(xs, 1 - lr * weight_decay)
    torch._foreach_mul_(exp_avgs, beta1)
    torch._foreach_add_(exp_avgs, _fp32(grads)[0], alpha=1 - beta1)
    if hessian_power == 0.5:
        denom = torch._foreach_sqrt(exp_hessians)
    else:
        denom = torch._foreach_pow(exp_hessians, hessian_power)
    torch._foreach_div_(denom, bias_correction2)
    torch._foreach_add_(denom, eps)
    torch._foreach_addcdiv_(xs, exp_avgs, denom, value=-lr / bias_correction1)


def sassha_update(params: List[Tensor], grads: List[Tensor], exp_avgs: List[Tensor],
                  exp_hessians: List[Tensor], perturbations: Optional[List[Tensor]], *,
                  lr: float, weight_decay: float, beta1: float, bias_correction1: float,
                  bias_correction2: float, hessian_power: float, eps: float) -> None:
    if not params:
        return
    xs, copied = _fp32(params)
    if perturbations is not None:
        torch._foreach_sub_(xs, _fp32(perturbations)[0])
    _adaptive_step(xs, grads, exp_avgs, exp_hessians, lr, weight_decay, beta1,
                   bias_correction1, bias_correction2, hessian_power, eps)
    if copied:
        torch._foreach_copy_(params, xs)


def hessian_ema(exp_hessians: List[Tensor], hessians: List[Tensor], beta2: float) -> None:
    if not exp_hessians:
        return
    torch._foreach_mul_(exp_hessians, beta2)
    torch._foreach_add_(exp_hessians, torch._foreach_abs(_fp32(hessians)[0]), alpha=1 - beta2)


def msassha_update(params: List[Tensor], grads: List[Tensor], exp_avgs: List[Tensor],
                   exp_hessians: List[Tensor], *, norm_factor: Scalar, lr: float,
                   weight_decay: float, beta1: float, bias_correction1: float,
                   bias_correction2: float, hessian_power: float, eps: float) -> Tensor:
    if not params:
        return torch.zeros((), dtype=torch.float32)
    xs, copied = _fp32(params)
    torch._foreach_add_(xs, torch._foreach_mul(exp_avgs, norm_factor))
    _adaptive_step(xs, grads, exp_avgs, exp_hessians, lr, weight_decay, beta1,
                   bias_correction1, bias_correction2, hessian_power, eps)
    if copied:
        torch._foreach_copy_(params, xs)
    return _sum_of_squares(exp_avgs)


def add_scaled(params: List[Tensor], tensors: List[Tensor], alpha: Scalar) -> None:
    if not params:
        return
    xs, copied = _fp32(params)
    torch._foreach_add_(xs, torch._foreach_mul(_fp32(tensors)[0], alpha))
    if copied:
        torch._foreach_copy_(params, xs)
