"""Reference backend: one plain PyTorch expression per tensor, written to be read
against docs/algorithm.md. Every fused backend is tested against these functions.

The op contract every backend follows:

* Lists. Every op takes lists of equal length whose tensors share one device; tensor i of
  every list has the shape of parameter i.
* Dtypes. Parameters, gradients and perturbations share one dtype: float32, bfloat16,
  float16 or float64 (Hessian estimates may be any of these). The optimizer state
  (``exp_avgs``, ``exp_hessians``) is float64 for float64 parameters, else float32. Values
  are computed in the state's dtype (the *compute dtype*) and a low-precision parameter is
  rounded once, when it is stored. Backends say which parameter dtypes they run with
  ``supports_dtype``.
* Scalars. The per-step scalars (``scale``, ``alpha``, ``norm_factor``, ``lr``,
  ``bias_correction1``, ``bias_correction2``) may be Python floats or 0-d tensors on the
  parameters' device (float32, or float64 for float64 parameters), so that a device
  backend never has to synchronise: no backend reads a CUDA tensor on the host.
  ``weight_decay``, ``beta1``, ``beta2``, ``hessian_power`` and ``eps`` are Python floats.
* found_inf. ``perturb``, ``sassha_update``, ``hessian_ema`` and ``msassha_update`` take
  ``found_inf``: None (the step runs) or a 0-d float32 tensor on the parameters' device,
  read on the device; nonzero (NaN included) means this iteration is skipped, and then
  each op writes only what its docstring says.
* wrote_nonfinite. ``sassha_update``, ``hessian_ema`` and ``msassha_update`` take
  ``wrote_nonfinite``: None, or a 0-d float32 tensor on the parameters' device that the op
  sets to 1 when a value it stores (a parameter in its own dtype, a moment, D) is inf or
  NaN; never cleared by the op, never set by a skipped one. The fused kernels find it in
  the pass that writes the values.
* Empty lists. ``global_norm([])`` and ``msassha_update`` of empty lists return a zero 0-d
  tensor (float32).
* Tensor types. A backend given a tensor it cannot run on (a tensor subclass such as
  DTensor, a tensor on another device) raises an error naming the op, the list, the index
  and the tensor's type or device. The reference and foreach backends refuse meta tensors
  too; the dispatcher ops of the cpu, cuda and triton backends (``torch.ops.sassha_fast``)
  treat FakeTensor, meta tensors and subclasses with their own dispatch as every PyTorch
  operator does: their fake kernels check the lists and touch no data, and a subclass
  (DTensor) receives the op and decides.
"""
from typing import List, Optional, Union

import torch
from torch import Tensor

Scalar = Union[float, Tensor]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype ops compute in, and the optimizer state's dtype, for parameters of ``dtype``."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _wide(t: Tensor) -> Tensor:
    return t.to(compute_dtype(t.dtype))


def _skipped(found_inf: Optional[Tensor]) -> Optional[Tensor]:
    """A 0-d bool tensor, true when this iteration is skipped (None: never skipped)."""
    return None if found_inf is None else found_inf != 0


def _unless_skipped(skip: Optional[Tensor], old: Tensor, new: Tensor) -> Tensor:
    return new if skip is None else torch.where(skip, old, new)


def check_wrote_nonfinite(wrote_nonfinite: Optional[Tensor], like: List[Tensor]) -> None:
    """Refuses, before the op writes anything, a flag it could not set: the flag must be
    None or a one-element float32 tensor on the device of the lists (``like``)."""
    if wrote_nonfinite is None:
        return
    device = like[0].device if like else wrote_nonfinite.device
    if (wrote_nonfinite.numel() != 1 or wrote_nonfinite.dtype != torch.float32
            or wrote_nonfinite.device != device):
        raise ValueError(f"wrote_nonfinite must be None or a one-element float32 tensor on "
                         f"{device}, got a {wrote_nonfinite.dtype} tensor of "
                         f"{wrote_nonfinite.numel()} elements on {wrote_nonfinite.device}")


def flag_nonfinite_(wrote_nonfinite: Optional[Tensor], skip: Optional[Tensor],
                    written: List[Tensor]) -> None:
    """Set ``wrote_nonfinite`` (checked by ``check_wrote_nonfinite``) when a tensor the op
    wrote holds inf or NaN (not when the op was skipped), read on the device: the largest
    magnitude of each is inf or NaN then."""
    written = [t for t in written if t.numel()]  # an empty tensor has no largest value
    if wrote_nonfinite is None or not written:
        return
    found = ~torch.stack([torch.isfinite(n) for n in
                          torch._foreach_norm(written, float("inf"))]).all()
    if skip is not None:
        found = found & ~skip
    wrote_nonfinite.copy_(torch.where(found, torch.ones_like(wrote_nonfinite), wrote_nonfinite))


def global_norm(tensors: List[Tensor], weights: Optional[List[Tensor]] = None) -> Tensor:
    """sqrt(sum_i ||w_i * t_i||^2) with w_i = |weights_i| (or 1), as a 0-d tensor of the
    compute dtype (float64 for float64 tensors, else float32)."""
    if not tensors:
        return torch.zeros((), dtype=torch.float32)
    norms = []
    for i, t in enumerate(tensors):
        x = _wide(t)
        if weights is not None:
            x = _wide(weights[i]).abs() * x
        norms.append(x.norm(p=2))
    return torch.stack(norms).norm(p=2)


def perturb(params: List[Tensor], grads: List[Tensor], scale: Scalar, adaptive: bool, *,
            found_inf: Optional[Tensor] = None) -> None:
    """e = scale * g (times p*p when adaptive), written into g's own buffer; then p += e.

    The perturbation is rounded to the gradient's dtype when stored, and p moves by that
    stored value, so that ``sassha_update`` can undo exactly what was added. Skipped
    (``found_inf`` nonzero): every e is stored as 0 and p is not written."""
    skip = _skipped(found_inf)
    for p, g in zip(params, grads):
        e = _wide(g) * scale
        if adaptive:
            e = e * _wide(p).pow(2)
        g.copy_(_unless_skipped(skip, torch.zeros_like(e), e))
        p.copy_(_unless_skipped(skip, p, _wide(p) + _wide(g)))


def sassha_update(params: List[Tensor], grads: List[Tensor], exp_avgs: List[Tensor],
                  exp_hessians: List[Tensor], perturbations: Optional[List[Tensor]], *,
                  lr: Scalar, weight_decay: float, beta1: float, bias_correction1: Scalar,
                  bias_correction2: Scalar, hessian_power: float, eps: float,
                  found_inf: Optional[Tensor] = None,
                  wrote_nonfinite: Optional[Tensor] = None) -> None:
    """Optionally leave the perturbed point (p -= e), then the SASSHA step:
    p *= 1 - lr*wd; m = b1*m + (1-b1)*g; p -= (lr/bc1) * m / (D^hp / bc2 + eps).
    ``bias_correction2`` already carries its power (the frozen second correction of
    docs/algorithm.md).
    Skipped (``found_inf`` nonzero): m and D are untouched and p only leaves the perturbed
    point (p = p - e, rounded as usual) when ``perturbations`` is given.
    ``wrote_nonfinite``: see the module's docstring."""
    check_wrote_nonfinite(wrote_nonfinite, params)
    skip = _skipped(found_inf)
    step_size = lr / bias_correction1
    for i, (p, g, m, d) in enumerate(zip(params, grads, exp_avgs, exp_hessians)):
        x = _wide(p)
        if perturbations is not None:
            x = x - _wide(perturbations[i])
        unperturbed = x
        x = x * (1 - lr * weight_decay)
        m_new = torch.add(m * beta1, _wide(g), alpha=1 - beta1)
        denom = d.pow(hessian_power) / bias_correction2 + eps
        x = x - step_size * (m_new / denom)
        m.copy_(_unless_skipped(skip, m, m_new))
        p.copy_(_unless_skipped(skip, unperturbed, x))
    flag_nonfinite_(wrote_nonfinite, skip, list(params) + list(exp_avgs))


def hessian_ema(exp_hessians: List[Tensor], hessians: List[Tensor], beta2: float, *,
                found_inf: Optional[Tensor] = None,
                wrote_nonfinite: Optional[Tensor] = None) -> None:
    """D = b2*D + (1-b2)*|h| (h: the Hutchinson estimate, any supported dtype).
    Skipped (``found_inf`` nonzero): D is untouched."""
    check_wrote_nonfinite(wrote_nonfinite, exp_hessians)
    skip = _skipped(found_inf)
    for d, h in zip(exp_hessians, hessians):
        d.copy_(_unless_skipped(skip, d, torch.add(d * beta2, _wide(h).abs(), alpha=1 - beta2)))
    flag_nonfinite_(wrote_nonfinite, skip, list(exp_hessians))


def msassha_update(params: List[Tensor], grads: List[Tensor], exp_avgs: List[Tensor],
                   exp_hessians: List[Tensor], *, norm_factor: Scalar, lr: Scalar,
                   weight_decay: float, beta1: float, bias_correction1: Scalar,
                   bias_correction2: Scalar, hessian_power: float, eps: float,
                   found_inf: Optional[Tensor] = None,
                   wrote_nonfinite: Optional[Tensor] = None) -> Tensor:
    """Leave the momentum-perturbed point (p += nf*m_old), then the same step as
    ``sassha_update`` (``bias_correction2`` already carries its power). Returns
    sum_i ||m_i||^2 of the momenta as stored (for the next perturbation's norm) as a 0-d
    tensor of the compute dtype. Skipped (``found_inf`` nonzero): p, m and D are
    untouched and the sum is that of the unchanged m."""
    check_wrote_nonfinite(wrote_nonfinite, params)
    skip = _skipped(found_inf)
    step_size = lr / bias_correction1
    dtype = compute_dtype(params[0].dtype) if params else torch.float32
    sq = torch.zeros((), dtype=dtype, device=params[0].device if params else None)
    for p, g, m, d in zip(params, grads, exp_avgs, exp_hessians):
        x = _wide(p) + norm_factor * m
        x = x * (1 - lr * weight_decay)
        m_new = torch.add(m * beta1, _wide(g), alpha=1 - beta1)
        denom = d.pow(hessian_power) / bias_correction2 + eps
        x = x - step_size * (m_new / denom)
        m.copy_(_unless_skipped(skip, m, m_new))
        p.copy_(_unless_skipped(skip, p, x))
        sq = sq + m.pow(2).sum()
    flag_nonfinite_(wrote_nonfinite, skip, list(params) + list(exp_avgs))
    return sq


def add_scaled(params: List[Tensor], tensors: List[Tensor], alpha: Scalar) -> None:
    """p += alpha * t (M-SASSHA's move to / from the perturbed point)."""
    for p, t in zip(params, tensors):
        p.copy_(_wide(p) + alpha * _wide(t))


def unavailable_reason():
    return None


def supports(device: torch.device) -> bool:
    return True


def supports_dtype(dtype: torch.dtype) -> bool:
    return dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64)
