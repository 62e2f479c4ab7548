"""Reference backend: one plain PyTorch expression per tensor, written to be read
against ``spec/ALGORITHMS.md``. Every fused backend is tested against these functions.

Every op takes lists of equal length whose tensors share one device; parameters and
gradients share one dtype (fp32, bf16 or fp16) and the optimizer state is fp32. Values are
computed in fp32 and a low-precision parameter is rounded once, when it is stored.
Scalars that come out of a norm (``scale``, ``norm_factor``) may be Python floats or 0-d
fp32 tensors on the parameters' device, so that a device backend never has to synchronise.
"""
from typing import List, Optional, Union

import torch
from torch import Tensor

Scalar = Union[float, Tensor]


def global_norm(tensors: List[Tensor], weights: Optional[List[Tensor]] = None) -> Tensor:
    """sqrt(sum_i ||w_i * t_i||^2) with w_i = |weights_i| (or 1), as a 0-d fp32 tensor."""
    if not tensors:
        return torch.zeros((), dtype=torch.float32)
    norms = []
    for i, t in enumerate(tensors):
        x = t.float()
        if weights is not None:
            x = weights[i].float().abs() * x
        norms.append(x.norm(p=2))
    return torch.stack(norms).norm(p=2)


def perturb(params: List[Tensor], grads: List[Tensor], scale: Scalar, adaptive: bool) -> None:
    """e = scale * g (times p*p when adaptive), written into g's own buffer; then p += e.

    The perturbation is rounded to the gradient's dtype when stored, and p moves by that
    stored value, so that ``sassha_update`` can undo exactly what was added."""
    for p, g in zip(params, grads):
        e = g.float() * scale
        if adaptive:
            e = e * p.float().pow(2)
        g.copy_(e)
        p.copy_(p.float() + g.float())


def sassha_update(params: List[Tensor], grads: List[Tensor], exp_avgs: List[Tensor],
                  exp_hessians: List[Tensor], perturbations: Optional[List[Tensor]], *,
                  lr: float, weight_decay: float, beta1: float, bias_correction1: float,
                  bias_correction2: float, hessian_power: float, eps: float) -> None:
    """Optionally leave the perturbed point (p -= e), then the SASSHA step:
    p *= 1 - lr*wd; m = b1*m + (1-b1)*g; p -= (lr/bc1) * m / (D^hp / bc2 + eps).
    ``bias_correction2`` already carries its power (the frozen ``b`` of the spec)."""
    step_size = lr / bias_correction1
    for i, (p, g, m, d) in enumerate(zip(params, grads, exp_avgs, exp_hessians)):
        x = p.float()
        if perturbations is not None:
            x = x - perturbations[i].float()
        x = x * (1 - lr * weight_decay)
        m.mul_(beta1).add_(g.float(), alpha=1 - beta1)
        denom = d.pow(hessian_power) / bias_correction2 + eps
        x = x - step_size * (m / denom)
        p.copy_(x)


def hessian_ema(exp_hessians: List[Tensor], hessians: List[Tensor], beta2: float) -> None:
    """D = b2*D + (1-b2)*|h| (h: the Hutchinson estimate, any dtype)."""
    for d, h in zip(exp_hessians, hessians):
        d.mul_(beta2).add_(h.float().abs(), alpha=1 - beta2)


def msassha_update(params: List[Tensor], grads: List[Tensor], exp_avgs: List[Tensor],
                   exp_hessians: List[Tensor], *, norm_factor: Scalar, lr: float,
                   weight_decay: float, beta1: float, bias_correction1: float,
                   bias_correction2: float, hessian_power: float, eps: float) -> Tensor:
    """Leave the momentum-perturbed point (p += nf*m_old), then the same step as
    ``sassha_update`` (``bias_correction2`` already carries its power). Returns
    sum_i ||m_new_i||^2 as a 0-d fp32 tensor for the next perturbation's norm."""
    step_size = lr / bias_correction1
    sq = torch.zeros((), dtype=torch.float32, device=params[0].device if params else None)
    for p, g, m, d in zip(params, grads, exp_avgs, exp_hessians):
        x = p.float() + norm_factor * m
        x = x * (1 - lr * weight_decay)
        m.mul_(beta1).add_(g.float(), alpha=1 - beta1)
        denom = d.pow(hessian_power) / bias_correction2 + eps
        x = x - step_size * (m / denom)
        p.copy_(x)
        sq = sq + m.pow(2).sum()
    return sq


def add_scaled(params: List[Tensor], tensors: List[Tensor], alpha: Scalar) -> None:
    """p += alpha * t (M-SASSHA's move to / from the perturbed point)."""
    for p, t in zip(params, tensors):
        p.copy_(p.float() + alpha * t.float())


def unavailable_reason():
    return None


def supports(device: torch.device) -> bool:
    return True
