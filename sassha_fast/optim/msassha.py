"""M-SASSHA: SASSHA whose perturbation reuses the momentum, one backward per iteration
(docs/algorithm.md)."""
import contextlib
from typing import Callable, List, Optional

import torch
from torch import Tensor

from ..step.nonfinite import UpdateFlags
from ..step.plan import Plan
from .base import HessianOptimizer
from .bias_correction import MsasshaCorrection
from .buckets import buckets, group_scalars, kernel_scalar, sqrt_of_sum
from .validation import shared_options

NORM_EPS = 1e-12


class _Point:
    """Whether the parameters are at the perturbed point w - nf * m. An object the optimizer
    holds, not an attribute of it: torch.compile drops attribute writes on an optimizer
    (pytorch/pytorch#171590), and a compiled step writes this."""

    def __init__(self, perturbed: bool):
        self.perturbed = perturbed


class MSASSHA(HessianOptimizer):
    """M-SASSHA. Parameters live at the perturbed point w - nf * m during training; every
    step leaves it, updates, and moves to the next one. Evaluate at the clean point with::

        with opt.evaluation():
            validate(model)

    (``move_back_from_momentumAscent()`` / ``move_up_to_momentumAscent()``, the authors'
    names, do the same two moves; both are idempotent, and a step taken at the clean point
    is correct too). ``loss = opt.step(closure)`` runs one whole iteration, with
    ``create_graph`` only when the Hessian is due. Several parameter groups share one
    momentum norm, each with its own ``rho``. ``process_group`` / ``sync_gradients``,
    ``step(..., scaler=)``, ``nonfinite``, ``capturable``, ``skip_check_interval``,
    ``max_consecutive_skips``, ``curvature_floor``, ``diagnostics()`` and
    ``hessian_estimator`` work as in ``SASSHA`` (the finite-difference estimate is taken at
    the perturbed point, where the one gradient is); a skipped step leaves the parameters
    where the iteration found them (on the device path the norm factor, too, stays a device
    tensor).
    """

    def __init__(self, params, lr: float = 0.15, betas=(0.9, 0.999), weight_decay: float = 1e-2,
                 lazy_hessian: int = 10, rho: float = 0.3, n_samples: int = 1,
                 eps: float = 1e-4, hessian_power: float = 1.0, seed: int = 0,
                 maximize: bool = False, hessian_power_scheduler=None, backend: str = "auto",
                 process_group=None, sync_gradients: bool = False, nonfinite: str = "skip",
                 grad_reduce: str = "mean", capturable: Optional[bool] = None,
                 skip_check_interval: int = 100, max_consecutive_skips: Optional[int] = 100,
                 curvature_floor: float = 0.0, hessian_estimator: str = "autograd",
                 fd_scheme: str = "one_sided", fd_eps: Optional[float] = None):
        if maximize:
            raise ValueError("Invalid maximize value: True (MSASSHA only minimizes)")
        defaults = dict(lr=lr, betas=tuple(betas) if isinstance(betas, list) else betas,
                        weight_decay=weight_decay, rho=rho, eps=eps,
                        hessian_power=hessian_power, norm_factor=0.0)
        self._point = _Point(True)  # nf = 0 at the start: both points coincide
        super().__init__(params, defaults, bias_correction=MsasshaCorrection,
                         **shared_options(locals()))

    def _momentum_params(self, group: dict) -> List[Tensor]:
        return [p for p in group["params"] if "exp_avg" in self.state.get(p, {})]

    @torch.no_grad()
    def _move(self, to_perturbed: bool) -> None:
        if self._point.perturbed == to_perturbed:
            return
        for group in self.param_groups:
            alpha = -group["norm_factor"] if to_perturbed else group["norm_factor"]
            self._add_momentum(self._momentum_params(group), alpha)
        self._point.perturbed = to_perturbed

    def _add_momentum(self, params: List[Tensor], alpha) -> None:
        for (device, dtype), ps in buckets(params, lambda p: (p.device, p.dtype)).items():
            self.ops(device, dtype).add_scaled(ps, [self.state[p]["exp_avg"] for p in ps],
                                               kernel_scalar(alpha, device, dtype))

    def move_up_to_momentumAscent(self) -> None:
        """Move to the perturbed point w - nf * m (no-op when already there)."""
        self._move(to_perturbed=True)

    def move_back_from_momentumAscent(self) -> None:
        """Move to the clean point w (no-op when already there)."""
        self._move(to_perturbed=False)

    @property
    def at_perturbed_point(self) -> bool:
        return self._point.perturbed

    @contextlib.contextmanager
    def evaluation(self):
        """Parameters at the clean point inside the block, back where they were after it."""
        was_perturbed = self._point.perturbed
        self._move(to_perturbed=False)
        try:
            yield self
        finally:
            self._move(to_perturbed=was_perturbed)

    def _apply_update(self, plan: Plan, hessian_power: Optional[float],
                      found_inf: Optional[Tensor], written: UpdateFlags) -> None:
        self._place_norm_factors()
        leaving = [group["norm_factor"] if self._point.perturbed else 0.0
                   for group in self.param_groups]
        squares = []
        updated = []  # per group: (parameters, skip flag) of each op call
        stale = []  # parameters with momentum but no gradient now: they move with the norm
        for (group, entries), norm_factor in zip(plan.groups, leaving):
            beta1, beta2, power = group_scalars(group, hessian_power)
            calls = []
            for bucket in self._update_buckets(plan, entries, beta2, power, found_inf, written):
                bias_correction1, bias_correction2 = self._bias_correction.for_update(
                    bucket, beta1, power)
                squares.append(bucket.ops.msassha_update(
                    bucket.params, [p.grad for p in bucket.params], bucket.exp_avgs,
                    bucket.exp_hessians, norm_factor=bucket.scalar(norm_factor),
                    lr=group["lr"], weight_decay=group["weight_decay"], beta1=beta1,
                    bias_correction1=bias_correction1, bias_correction2=bias_correction2,
                    hessian_power=power, eps=group["eps"], **bucket.flags()))
                calls.append((bucket.params, bucket.found_inf))
            updated.append(calls)
            stepped = {id(e.param) for e in entries}
            stale.append([p for p in self._momentum_params(group) if id(p) not in stepped])
        stale_params = [p for ps in stale for p in ps]
        if stale_params:
            squares.append(self._global_norm(
                stale_params, [self.state[p]["exp_avg"] for p in stale_params], False).square())
        if not squares:
            return
        norm = sqrt_of_sum(squares)
        norm = self._path.momentum_norm(norm, self._home_device)
        for group, norm_factor, calls, stale_in_group in zip(self.param_groups, leaving,
                                                             updated, stale):
            new = group["rho"] / (norm + NORM_EPS)
            if found_inf is not None:  # a skipped step keeps the old factor
                new = torch.where(found_inf.bool(), group["norm_factor"], new)
            # Updated parameters are at their clean point and move up to w - nf * m; skipped
            # ones are still where the iteration found them (w - leaving * m).
            for params, skipped in calls:
                self._add_momentum(params, -new if skipped is None else skipped * norm_factor - new)
            self._add_momentum(stale_in_group, norm_factor - new)
            self._path.store_norm_factor(group, new)
        self._point.perturbed = True

    def _place_norm_factors(self) -> None:
        """Each group's norm factor as the optimizer's path keeps it (see
        ``step.counters``); converting a loaded value synchronises, at load time only."""
        for group in self.param_groups:
            group["norm_factor"] = self._path.norm_factor(group["norm_factor"],
                                                          self._home_device)

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Tensor]] = None,
             scaler=None) -> Optional[Tensor]:
        """One M-SASSHA step from the gradients present (computed at the perturbed point
        with ``create_graph=opt.hessian_due``), or, given ``closure`` (which returns the loss
        without calling backward), a whole iteration. Returns the loss, or None.
        ``scaler``: a ``torch.amp.GradScaler``, as in ``SASSHA.step``."""
        self._check_closure(closure)
        if closure is None:
            self._step_from_gradients(scaler)
            return None
        self.zero_grad(set_to_none=True)
        loss = self._gradient_pass(closure, scaler, self.hessian_due)
        self._step_from_gradients(scaler)
        return loss.detach() if isinstance(loss, Tensor) else loss

    def _extra_state(self) -> dict:
        return {**super()._extra_state(), "at_perturbed_point": self._point.perturbed}

    def _load_extra_state(self, extra: dict) -> None:
        super()._load_extra_state(extra)
        self._point.perturbed = extra.get("at_perturbed_point", True)
        self._place_norm_factors()

    def _authors_extra_state(self) -> dict:
        # The authors' training script saves after moving back to the clean point.
        return {"at_perturbed_point": False}
