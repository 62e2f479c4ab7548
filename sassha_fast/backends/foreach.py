"""foreach backend: each step of an op is one ``torch._foreach_*`` call over the whole list.

Runs wherever PyTorch does, with every dtype of the contract in ``reference.py`` (float64
included). float32 and float64 parameters are updated in place; low-precision ones go
through float32 copies that are rounded back once. With ``found_inf`` the step is computed
into copies and committed with one ``torch.where`` per tensor, so the skip flag is only
read on the device. ``wrote_nonfinite`` costs a read of the written tensors after the
update (no torch op reports non-finite values as it writes them).
"""
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .reference import Scalar, check_wrote_nonfinite, compute_dtype, flag_nonfinite_
from .reference import supports_dtype  # noqa: F401 (backend API)
from .tensor_checks import check_plain_tensors


def unavailable_reason():
    return None


def supports(device: torch.device) -> bool:
    return True


def _wide(tensors: List[Tensor]) -> Tuple[List[Tensor], bool]:
    """The tensors in the compute dtype (themselves when already in it) and whether they
    are copies."""
    if not tensors or tensors[0].dtype in (torch.float32, torch.float64):
        return tensors, False
    return [t.float() for t in tensors], True


def _copies(tensors: List[Tensor]) -> List[Tensor]:
    """New tensors in the compute dtype holding the values of ``tensors``."""
    return [t.to(compute_dtype(t.dtype), copy=True) for t in tensors]


def _skipped(found_inf: Optional[Tensor]) -> Optional[Tensor]:
    return None if found_inf is None else found_inf != 0


def _commit(targets: List[Tensor], kept: List[Tensor], results: List[Tensor],
            skip: Tensor) -> None:
    """targets[i] = kept[i] if skipped else results[i], the flag read on the device."""
    for target, old, new in zip(targets, kept, results):
        target.copy_(torch.where(skip, old, new))


def _sum_of_squares(tensors: List[Tensor]) -> Tensor:
    return torch.stack(torch._foreach_norm(tensors)).square().sum()


def global_norm(tensors: List[Tensor], weights: Optional[List[Tensor]] = None) -> Tensor:
    if not tensors:
        return torch.zeros((), dtype=torch.float32)
    check_plain_tensors("global_norm", tensors=tensors, weights=weights)
    xs, _ = _wide(tensors)
    if weights is not None:
        ws, _ = _wide(weights)
        xs = torch._foreach_mul(torch._foreach_abs(ws), xs)
    return torch.stack(torch._foreach_norm(xs)).norm(p=2)


def perturb(params: List[Tensor], grads: List[Tensor], scale: Scalar, adaptive: bool, *,
            found_inf: Optional[Tensor] = None) -> None:
    if not params:
        return
    check_plain_tensors("perturb", params=params, grads=grads)
    skip = _skipped(found_inf)
    es, copied = _wide(grads)
    if copied or skip is not None:
        es = torch._foreach_mul(es, scale)
    else:
        torch._foreach_mul_(es, scale)
    if adaptive:
        ps, _ = _wide(params)
        torch._foreach_mul_(es, torch._foreach_mul(ps, ps))
    if skip is not None:
        torch._foreach_copy_(grads, [torch.where(skip, 0.0, e) for e in es])
    elif copied or adaptive:
        torch._foreach_copy_(grads, es)
    xs, p_copied = _wide(params)
    if skip is not None:
        _commit(params, params, torch._foreach_add(xs, _wide(grads)[0]), skip)
        return
    torch._foreach_add_(xs, _wide(grads)[0])
    if p_copied:
        torch._foreach_copy_(params, xs)


def _adaptive_step(xs: List[Tensor], grads: List[Tensor], exp_avgs: List[Tensor],
                   exp_hessians: List[Tensor], lr: Scalar, weight_decay: float, beta1: float,
                   bias_correction1: Scalar, bias_correction2: Scalar, hessian_power: float,
                   eps: float) -> None:
    """Decay, momentum and preconditioned step, in place on parameters ``xs`` and momenta
    ``exp_avgs`` of the compute dtype (shared by both updates, which differ only in how
    they leave the perturbed point)."""
    if weight_decay != 0:
        torch._foreach_mul_(xs, 1 - lr * weight_decay)
    torch._foreach_mul_(exp_avgs, beta1)
    torch._foreach_add_(exp_avgs, _wide(grads)[0], alpha=1 - beta1)
    if hessian_power == 0.5:
        denom = torch._foreach_sqrt(exp_hessians)
    else:
        denom = torch._foreach_pow(exp_hessians, hessian_power)
    torch._foreach_div_(denom, bias_correction2)
    torch._foreach_add_(denom, eps)
    step_size = lr / bias_correction1
    if isinstance(step_size, Tensor):  # addcdiv's value must be a number
        steps = torch._foreach_div(exp_avgs, denom)
        torch._foreach_mul_(steps, step_size)
        torch._foreach_sub_(xs, steps)
    else:
        torch._foreach_addcdiv_(xs, exp_avgs, denom, value=-step_size)


def sassha_update(params: List[Tensor], grads: List[Tensor], exp_avgs: List[Tensor],
                  exp_hessians: List[Tensor], perturbations: Optional[List[Tensor]], *,
                  lr: Scalar, weight_decay: float, beta1: float, bias_correction1: Scalar,
                  bias_correction2: Scalar, hessian_power: float, eps: float,
                  found_inf: Optional[Tensor] = None,
                  wrote_nonfinite: Optional[Tensor] = None) -> None:
    check_wrote_nonfinite(wrote_nonfinite, params)
    if not params:
        return
    check_plain_tensors("sassha_update", params=params, grads=grads, exp_avgs=exp_avgs,
                        exp_hessians=exp_hessians, perturbations=perturbations)
    hyper = (lr, weight_decay, beta1, bias_correction1, bias_correction2, hessian_power, eps)
    skip = _skipped(found_inf)
    if skip is not None:
        left = _copies(params)
        if perturbations is not None:
            torch._foreach_sub_(left, _wide(perturbations)[0])
        xs, ms = _copies(left), _copies(exp_avgs)
        _adaptive_step(xs, grads, ms, exp_hessians, *hyper)
        _commit(exp_avgs, exp_avgs, ms, skip)
        _commit(params, left, xs, skip)
    else:
        xs, copied = _wide(params)
        if perturbations is not None:
            torch._foreach_sub_(xs, _wide(perturbations)[0])
        _adaptive_step(xs, grads, exp_avgs, exp_hessians, *hyper)
        if copied:
            torch._foreach_copy_(params, xs)
    flag_nonfinite_(wrote_nonfinite, skip, params + exp_avgs)


def hessian_ema(exp_hessians: List[Tensor], hessians: List[Tensor], beta2: float, *,
                found_inf: Optional[Tensor] = None,
                wrote_nonfinite: Optional[Tensor] = None) -> None:
    check_wrote_nonfinite(wrote_nonfinite, exp_hessians)
    if not exp_hessians:
        return
    check_plain_tensors("hessian_ema", exp_hessians=exp_hessians, hessians=hessians)
    skip = _skipped(found_inf)
    ds = exp_hessians if skip is None else _copies(exp_hessians)
    torch._foreach_mul_(ds, beta2)
    torch._foreach_add_(ds, torch._foreach_abs(_wide(hessians)[0]), alpha=1 - beta2)
    if skip is not None:
        _commit(exp_hessians, exp_hessians, ds, skip)
    flag_nonfinite_(wrote_nonfinite, skip, exp_hessians)


def msassha_update(params: List[Tensor], grads: List[Tensor], exp_avgs: List[Tensor],
                   exp_hessians: List[Tensor], *, norm_factor: Scalar, lr: Scalar,
                   weight_decay: float, beta1: float, bias_correction1: Scalar,
                   bias_correction2: Scalar, hessian_power: float, eps: float,
                   found_inf: Optional[Tensor] = None,
                   wrote_nonfinite: Optional[Tensor] = None) -> Tensor:
    check_wrote_nonfinite(wrote_nonfinite, params)
    if not params:
        return torch.zeros((), dtype=torch.float32)
    check_plain_tensors("msassha_update", params=params, grads=grads, exp_avgs=exp_avgs,
                        exp_hessians=exp_hessians)
    hyper = (lr, weight_decay, beta1, bias_correction1, bias_correction2, hessian_power, eps)
    skip = _skipped(found_inf)
    if skip is not None:
        xs, ms = _copies(params), _copies(exp_avgs)
    else:
        (xs, copied), ms = _wide(params), exp_avgs
    torch._foreach_add_(xs, torch._foreach_mul(exp_avgs, norm_factor))
    _adaptive_step(xs, grads, ms, exp_hessians, *hyper)
    if skip is not None:
        _commit(exp_avgs, exp_avgs, ms, skip)
        _commit(params, params, xs, skip)
    elif copied:
        torch._foreach_copy_(params, xs)
    flag_nonfinite_(wrote_nonfinite, skip, params + exp_avgs)
    return _sum_of_squares(exp_avgs)


def add_scaled(params: List[Tensor], tensors: List[Tensor], alpha: Scalar) -> None:
    if not params:
        return
    check_plain_tensors("add_scaled", params=params, tensors=tensors)
    xs, copied = _wide(params)
    torch._foreach_add_(xs, torch._foreach_mul(_wide(tensors)[0], alpha))
    if copied:
        torch._foreach_copy_(params, xs)
