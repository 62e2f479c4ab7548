"""Hutchinson's estimate from first-order gradients (docs/algorithm.md, docs/estimators.md).

The Hessian-vector product is a difference of two gradients of the same loss:
``H z ~ (g(w + eps z) - g(w)) / eps`` (one-sided: ``g(w)`` is the gradient the iteration
already holds) or ``(g(w + eps z) - g(w - eps z)) / (2 eps)`` (central). No backward pass
differentiates another one, so whatever trains with ``loss.backward()`` (fused attention,
torch.compile, DDP, activation checkpointing) can be estimated.

The step is relative: ``eps * ||z|| = eps_rel * ||w||`` over the parameters estimated, so
the perturbation is the same fraction of the weights whatever their scale (the choice of
``eps_rel`` and the measurements behind it: ``python -m bench.studies.hvp_accuracy``,
docs/estimators.md).

"The same loss" means: the same batch and loss scale (the caller's job), the same dropout
masks (the global RNG states captured before the gradient's forward are replayed in each
probe, then the states are put back as the probe found them), and BatchNorm running
statistics frozen in each probe.

No zero from round-off: two fp32 gradients differ only in steps of about ulp(g), so an
entry of H z below ``ulp(g) / eps`` comes out exactly 0 (or a few ulps' noise), and a zero
curvature turns SASSHA's update into ``lr * m / eps``, thousands of times the momentum.
The estimate's magnitude is therefore floored at what the difference can resolve,
``2 RESOLUTION_FLOOR u |g(w)| / span`` per entry (u the unit round-off of fp32, span eps
or 2 eps; 16-bit gradients: at least one rounding to their dtype): what the gradients
cannot resolve is taken as the most curvature it could hide, not as none. The factor: a
backward pass's fp32 gradient carries many roundings, not one (against fp64, a median of
5 to 18 u |g| and a 90th percentile of 26 to 121 u |g| per entry on bench/studies/hvp_accuracy.py's
models, ``python -m bench.studies.hvp_accuracy``); the measurements
behind its value and the comparison with a larger step, the central scheme and
``curvature_floor``: docs/estimators.md "No zero from round-off"."""
import contextlib
import math
from typing import Callable, Dict, Generator, List, NamedTuple, Optional

import torch
from torch import Tensor

from ..distributed.dtensor import local
from ..step import errors
from ..step.batchnorm import frozen_batchnorm_stats
from .hutchinson import RademacherSource

ESTIMATORS = ("autograd", "finite_difference")
SCHEMES = ("one_sided", "central")
# Relative steps chosen from bench/studies/hvp_accuracy.py's measurements (docs/estimators.md):
# the error is truncation (O(eps), O(eps^2)) above them and fp32 round-off in the gradients
# below.
DEFAULT_EPS = {"one_sided": 3e-4, "central": 1e-3}
# Low precision (bf16 / fp16 parameters, or a forward under autocast) rounds the step and
# the gradients to 2-3 significant digits: at the fp32 steps the estimate is round-off
# (relative error above 1), it needs eps_rel of a few 1e-2 (bench/studies/hvp_accuracy.py), which
# the user must ask for; smaller steps are refused.
LOW_PRECISION_MIN_EPS = 1e-2
FULL_PRECISION = (torch.float32, torch.float64)
# The floor in units of one rounding of each gradient (2 u |g| / span): 1 left a small ViT
# diverging on one seed of 8, 16 none (bench/studies/fd_stability.py, docs/estimators.md).
RESOLUTION_FLOOR = 16.0


class FiniteDifferenceSettings(NamedTuple):
    scheme: str  # "one_sided" or "central"
    eps: float  # relative step: eps * ||z|| = eps_rel * ||w||
    # |H z| is floored at ``floor`` times the difference's resolution (0: the raw
    # difference, only to measure it: bench/studies/hvp_accuracy.py, bench/studies/fd_stability.py).
    floor: float = RESOLUTION_FLOOR


def make_settings(name: str, scheme: str,
                  eps: Optional[float]) -> Optional[FiniteDifferenceSettings]:
    """The finite-difference settings an optimizer was asked for (None: the double
    backward), every argument checked."""
    if name not in ESTIMATORS:
        raise ValueError(f"Invalid hessian_estimator: {name!r} (choose from "
                         + ", ".join(repr(e) for e in ESTIMATORS) + ")")
    if scheme not in SCHEMES:
        raise ValueError(f"Invalid fd_scheme: {scheme!r} (choose from "
                         + ", ".join(repr(s) for s in SCHEMES) + ")")
    if eps is not None and not (isinstance(eps, (int, float)) and not isinstance(eps, bool)
                                and math.isfinite(eps) and eps > 0):
        raise ValueError(f"Invalid fd_eps value: {eps!r} (expected a positive float)")
    if name == "autograd":
        if eps is not None or scheme != SCHEMES[0]:
            raise ValueError("fd_scheme and fd_eps apply to "
                             "hessian_estimator='finite_difference' only")
        return None
    return FiniteDifferenceSettings(scheme, DEFAULT_EPS[scheme] if eps is None else float(eps))


class RNGState(NamedTuple):
    """The global generators a forward pass draws dropout masks from."""
    cpu: Tensor
    cuda: Optional[List[Tensor]]


def capture_rng_state() -> RNGState:
    """The global CPU and CUDA generator states now: capture them just before the forward
    whose gradient a probe differences against, and pass them to ``hessian_probes``."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    return RNGState(torch.get_rng_state(), cuda)


def _set_rng_state(state: RNGState) -> None:
    torch.set_rng_state(state.cpu)
    if state.cuda is not None:
        torch.cuda.set_rng_state_all(state.cuda)


@contextlib.contextmanager
def _replaying(state: Optional[RNGState]):
    if state is None:
        yield
        return
    after = capture_rng_state()
    _set_rng_state(state)
    try:
        yield
    finally:
        _set_rng_state(after)


def _low_precision_advice(fd: FiniteDifferenceSettings, what: str) -> str:
    return (f"hessian_estimator='finite_difference' with {what}: at fd_eps={fd.eps:g} the "
            "difference of two gradients is mostly round-off. Pass fd_eps=3e-2 with "
            "fd_scheme='central' (relative error about 4e-2 measured on a GPT by "
            "`python -m bench.studies.hvp_accuracy`; fd_eps must be at least "
            f"{LOW_PRECISION_MIN_EPS:g}), "
            "or use " + errors.double_backward_advice())


def check_dtypes(fd: FiniteDifferenceSettings, params: List[Tensor]) -> None:
    if fd.eps >= LOW_PRECISION_MIN_EPS:
        return
    for p in params:
        if p.dtype not in FULL_PRECISION:
            raise TypeError(_low_precision_advice(
                fd, f"{p.dtype} parameters (one of shape {tuple(p.shape)})"))


@contextlib.contextmanager
def _refusing_autocast(fd: FiniteDifferenceSettings, check: bool):
    """Raises after the block when a module ran under autocast with too small a step."""
    if not check or fd.eps >= LOW_PRECISION_MIN_EPS:
        yield
        return
    seen: List[str] = []

    def record(_module, _inputs):
        if not seen:
            seen.extend(device for device in ("cpu", "cuda")
                        if torch.is_autocast_enabled(device))

    handle = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        yield
    finally:
        handle.remove()
    if seen:
        raise RuntimeError(_low_precision_advice(fd, f"a forward under {seen[0]} autocast"))


def _by_device(tensors: List[Tensor]) -> Dict[torch.device, List[int]]:
    indices: Dict[torch.device, List[int]] = {}
    for i, t in enumerate(tensors):
        indices.setdefault(t.device, []).append(i)
    return indices


def _mul_(tensors: List[Tensor], factor: Tensor) -> None:
    for device, indices in _by_device(tensors).items():
        torch._foreach_mul_([tensors[i] for i in indices], factor.to(device))


def _add_(tensors: List[Tensor], others: List[Tensor], alpha: float) -> None:
    torch._foreach_add_(tensors, others, alpha=alpha)


def step_size(fd: FiniteDifferenceSettings, params: List[Tensor],
              norm_of: Callable[[List[Tensor]], Tensor]) -> Tensor:
    """eps (a 0-d tensor, no host synchronisation) with eps * ||z|| = eps_rel * ||w||;
    all-zero parameters take eps = eps_rel."""
    numel = sum(p.numel() for p in params)
    rms = norm_of(params).float() / math.sqrt(max(numel, 1))
    return fd.eps * torch.where(rms > 0, rms, torch.ones_like(rms))


def _gradient_at(fd: FiniteDifferenceSettings, params: List[Tensor], deltas: List[Tensor],
                 sign: float, rng: Optional[RNGState], check_precision: bool
                 ) -> Generator[None, None, List[Optional[Tensor]]]:
    """Moves the parameters to w + sign * delta for the caller's forward/backward, back to
    w afterwards (also when the caller fails), and returns the gradients it left."""
    with torch.no_grad():
        _add_(params, deltas, sign)
    try:
        with _replaying(rng), frozen_batchnorm_stats(), _refusing_autocast(fd, check_precision):
            yield
    finally:
        with torch.no_grad():
            _add_(params, deltas, -sign)
    grads = [None if p.grad is None else p.grad.detach() for p in params]
    for p in params:
        p.grad = None
    return grads


def estimate(fd: FiniteDifferenceSettings, params: List[Tensor], source: RademacherSource,
             n_samples: int, norm_of: Callable[[List[Tensor]], Tensor],
             rng: Optional[RNGState], check_precision: bool = True
             ) -> Generator[None, None, List[Tensor]]:
    """The Hessian-diagonal estimate for ``params`` at the point they are at, whose
    gradients ``.grad`` hold. Yields once per gradient evaluation the caller runs (a
    forward and ``backward()`` of the same loss, the parameters moved); returns the
    estimate in the form ``hutchinson.hutchinson`` returns it. ``.grad`` is as it was after.
    ``check_precision``: refuse low precision with a step too small for it (off only to
    measure the error there, in bench/studies/hvp_accuracy.py)."""
    if check_precision:
        check_dtypes(fd, params)
    base = [p.grad for p in params]
    eps = step_size(fd, params, norm_of)
    for p in params:
        p.grad = None
    result: List[Tensor] = []
    try:
        for draw in range(n_samples):
            deltas = source.draw(params)
            _mul_(deltas, eps)
            upper = yield from _gradient_at(fd, params, deltas, 1.0, rng, check_precision)
            if fd.scheme == "central":
                lower = yield from _gradient_at(fd, params, deltas, -1.0, rng,
                                                check_precision)
                span = 2 * eps
            else:
                lower, span = base, eps
            hz = _difference(params, upper, lower, span)
            if n_samples == 1:
                result = hz
                break
            # z * Hz with z = delta / eps, averaged over the draws.
            _mul_(hz, 1.0 / (eps * n_samples))
            torch._foreach_mul_(hz, deltas)
            if draw == 0:
                result = hz
            else:
                torch._foreach_add_(result, hz)
        if fd.floor:
            floor_at_resolution_(result, base, span, fd.floor)
        return result
    finally:
        for p, g in zip(params, base):
            p.grad = g


def _difference(params: List[Tensor], upper: List[Optional[Tensor]],
                lower: List[Optional[Tensor]], span: Tensor) -> List[Tensor]:
    """(upper - lower) / span, in ``upper``'s buffers; a parameter missing from either
    pass gets a zero estimate, as the double backward gives one the loss does not reach."""
    present = [i for i, (u, l) in enumerate(zip(upper, lower)) if u is not None and l is not None]
    for i in present:
        if local(upper[i]).data_ptr() == local(lower[i]).data_ptr():
            # DistributedDataParallel(gradient_as_bucket_view=True) writes every backward
            # into the same buffer, which would overwrite the gradient being differenced.
            raise RuntimeError(
                "hessian_estimator='finite_difference': the probe's backward wrote its "
                "gradient into the buffer of the gradient it is compared with (DDP with "
                "gradient_as_bucket_view=True does); use gradient_as_bucket_view=False")
    out = [u if u is not None and l is not None else torch.zeros_like(p)
           for p, u, l in zip(params, upper, lower)]
    if present:
        torch._foreach_sub_([out[i] for i in present], [lower[i] for i in present])
        _mul_([out[i] for i in present], 1.0 / span)
    return out


def unit_roundoff(dtype: torch.dtype) -> float:
    """Half the distance from 1 to the next number: the relative error of one rounding."""
    return torch.finfo(dtype).eps / 2


def gradient_roundoff(dtype: torch.dtype, factor: float = RESOLUTION_FLOOR) -> float:
    """The relative round-off taken for a gradient stored in ``dtype``: ``factor``
    roundings of the arithmetic that computed it (float32 for 16-bit gradients, whose
    matmuls accumulate in float32), or the one rounding to ``dtype``, whichever is
    larger."""
    arithmetic = torch.promote_types(dtype, torch.float32)
    return max(unit_roundoff(dtype), factor * unit_roundoff(arithmetic))


@torch.no_grad()
def floor_at_resolution_(estimate: List[Tensor], gradients: List[Optional[Tensor]],
                         span: Tensor, factor: float = RESOLUTION_FLOOR) -> None:
    """|h| = max(|h|, 2 r |g| / span) per entry, the sign kept, in place (r: the
    gradients' relative round-off, ``gradient_roundoff``, ``factor`` roundings; ``span``:
    the difference's denominator, a 0-d tensor: no host synchronisation). Two gradients
    each within r |g| resolve their difference at best to 2 r |g|; below that the
    difference is round-off, exactly 0 when they round alike, and a zero curvature is the
    one value SASSHA's update must not see. The mean of Hutchinson's draws is floored alike (its
    round-off is the draws'). Entries whose gradient is exactly 0 keep their estimate:
    there the double backward's is 0 too (an unused embedding row, a dead ReLU unit).
    Works on local shards: every operation is per entry."""
    scales: Dict[tuple, Tensor] = {}
    for h, g in zip(estimate, gradients):
        if g is None or h.numel() == 0:
            continue
        h, g = local(h), local(g)
        key = (h.device, g.dtype)
        if key not in scales:
            scales[key] = 2 * gradient_roundoff(g.dtype, factor) / span.to(h.device)
        floor = g.abs().mul_(scales[key])
        torch.maximum(h.abs(), floor, out=floor)
        h.copy_(floor.copysign_(h))
