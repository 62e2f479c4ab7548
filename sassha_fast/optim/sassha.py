"""SASSHA: sharpness-aware adaptive second-order optimization with a lazily updated,
square-rooted diagonal Hessian (docs/algorithm.md)."""
from typing import Callable, Optional

import torch
from torch import Tensor

from ..step import amp
from ..step.batchnorm import frozen_batchnorm_stats
from ..step.nonfinite import UpdateFlags, nonfinite_message
from ..step.plan import Plan
from .base import HessianOptimizer
from .bias_correction import SasshaCorrection
from .buckets import buckets, flag_arguments, group_scalars, kernel_scalar
from .validation import is_real, shared_options, warn_on_unknown_keywords


class SASSHA(HessianOptimizer):
    """Drop-in replacement for the authors' ``SASSHA`` optimizer.

    Two ways to run an iteration:

    * the authors' loop, unchanged::

          loss_fn(model(x), y).backward()
          opt.perturb_weights(zero_grad=True)
          loss_fn(model(x), y).backward(create_graph=opt.hessian_due)
          opt.unperturb()
          opt.step()
          opt.zero_grad()

    * one call, ``loss = opt.step(closure)``, where ``closure()`` returns the loss without
      calling backward. The optimizer runs both passes, asks for ``create_graph`` only when
      the Hessian is due, freezes BatchNorm running statistics in the perturbed pass, fuses
      leaving the perturbed point into the update, and returns the first pass's loss.

    ``step()`` without a preceding ``perturb_weights()`` is SASSHA with ``rho = 0``.
    Production options (see the README): ``process_group`` / ``sync_gradients`` for data
    parallelism, ``scaler=`` on ``step`` / ``perturb_weights`` for a GradScaler, and
    ``nonfinite`` ("skip", "raise" or "ignore") for inf/NaN gradients or Hessian estimates,
    reported by a ``SkippedStepWarning`` and, after ``max_consecutive_skips`` skipped steps in
    a row (None: never), a ``FloatingPointError``. ``capturable`` (None: True for CUDA
    parameters) keeps the skip decision and the counters on the device: no host
    synchronisation, a step that a CUDA graph can capture (``sassha_fast.cuda_graphs``); the
    skip counts are then read every ``skip_check_interval`` steps. ``grad_reduce`` ("mean" or
    "sum", as the authors') is how the tensors the optimizer reduces across ranks are
    combined. Unknown keyword arguments are ignored with a warning, as the authors'
    constructor ignores them (silently).
    ``curvature_floor`` (default 0, off) raises each tensor's Hessian EMA to at least that
    fraction of its mean on Hessian steps, against the blow-up of weights with zero
    curvature; ``diagnostics()`` reports what to look at when training misbehaves.
    ``hessian_power`` is the constant power of the Hessian; a ``hessian_power_scheduler``
    (an object whose ``step()`` returns the power) overrides it and is stepped once per
    ``step()``. ``backend`` picks the implementation of the fused ops ("auto", "reference",
    "foreach", "cpu", "triton", "cuda"; see ``sassha_fast.available_backends()``).

    ``rho_scheduler`` (an object whose ``step()`` returns rho, called at each
    ``perturb_weights()``; ``rho_t`` holds its last value) overrides every group's ``rho``, as
    in the authors' language-model script. ``_schedule`` and ``_bias_correction`` configure
    the authors' language-model variant (``sassha_fast.lm``) and are not for other use.

    ``hessian_estimator="finite_difference"`` takes the Hessian-vector product from two
    first-order gradients instead of a double backward (``fd_scheme`` "one_sided" or
    "central", ``fd_eps`` the relative step; see ``sassha_fast.finite_difference``), at
    the perturbed point w + e, where the second pass's gradient is: ``step(closure)`` runs
    the extra pass itself on Hessian steps (and accepts a closure that calls
    ``backward()``); the method-level loop runs ``opt.hessian_probes()`` after the second
    backward, before ``unperturb()``.
    """

    def __init__(self, params, hessian_power_scheduler=None, lr: float = 0.15,
                 betas=(0.9, 0.999), weight_decay: float = 0.0, rho: float = 0.0,
                 lazy_hessian: int = 10, n_samples: int = 1, perturb_eps: float = 1e-12,
                 eps: float = 1e-4, adaptive: bool = False, grad_reduce: str = "mean",
                 seed: int = 0, hessian_power: float = 0.5, backend: str = "auto",
                 process_group=None, sync_gradients: bool = False, nonfinite: str = "skip",
                 capturable: Optional[bool] = None, skip_check_interval: int = 100,
                 max_consecutive_skips: Optional[int] = 100, curvature_floor: float = 0.0,
                 hessian_estimator: str = "autograd", fd_scheme: str = "one_sided",
                 fd_eps: Optional[float] = None, rho_scheduler=None,
                 _schedule=None, _bias_correction=SasshaCorrection, **kwargs):
        warn_on_unknown_keywords(type(self).__name__, kwargs)
        defaults = dict(lr=lr, betas=tuple(betas) if isinstance(betas, list) else betas,
                        weight_decay=weight_decay, rho=rho, perturb_eps=perturb_eps, eps=eps,
                        hessian_power=hessian_power)
        self.adaptive = bool(adaptive)
        # Perturbations e, each held in the buffer of the first pass's gradient.
        self._perturbation = {}
        self.rho_scheduler = rho_scheduler
        self.rho_t = 0.0  # the scheduler's last rho
        super().__init__(params, defaults, bias_correction=_bias_correction, schedule=_schedule,
                         **shared_options(locals()))

    @torch.no_grad()
    def perturb_weights(self, zero_grad: bool = True, scaler=None) -> None:
        """Climb to w + e with e = rho * g / (||g|| + perturb_eps) (adaptive: scaled by w^2).

        With ``zero_grad`` the gradients are cleared and e reuses their memory. The
        gradients are first averaged across ranks (with ``sync_gradients``) and unscaled
        (given the GradScaler that scaled the loss). When they hold inf or NaN nothing
        moves and the following ``step()`` is skipped (``nonfinite="raise"``: raises); on
        the device path the ops decide that on the device (e = 0, the weights stay)."""
        if self._perturbation:
            raise RuntimeError("perturb_weights() called twice: call unperturb() or step() "
                               "before perturbing again")
        if self.rho_scheduler is not None:
            rho = self.update_rho_t()
            for group in self.param_groups:
                group["rho"] = rho
        per_group = [(group, self._params_with_grad(group)) for group in self.param_groups]
        params = [p for _, ps in per_group for p in ps]
        self._averager.average_([p.grad for p in params
                                 if self.sync_gradients or p.grad.grad_fn is not None])
        amp.unscale_(scaler, [p.grad for p in params])
        norm = self._global_norm(params, [p.grad for p in params], self.adaptive)
        checks = self._checks
        found_inf = None
        if checks.checks(scaler) and self._path.reads_flags(checks.raises(scaler)):
            if not self._path.read(torch.isfinite(norm)):
                checks.first_pass_origin = nonfinite_message(
                    self.param_groups, [(p, "first pass's gradient", p.grad) for p in params])
                if checks.raises(scaler):
                    raise FloatingPointError(checks.first_pass_origin)
                checks.first_pass_nonfinite = True
                if zero_grad:
                    self._drop_gradients()
                return
        elif checks.checks(scaler):
            found_inf = checks.first_pass_found_inf = (~torch.isfinite(norm)).float()
        for group, group_params in per_group:
            scale = group["rho"] / (norm + group["perturb_eps"])
            for (device, dtype), ps in buckets(group_params,
                                               lambda p: (p.device, p.dtype)).items():
                es = [p.grad if zero_grad else p.grad.clone() for p in ps]
                self.ops(device, dtype).perturb(
                    ps, es, kernel_scalar(scale, device, dtype), self.adaptive,
                    **flag_arguments(None if found_inf is None else found_inf.to(device)))
                self._perturbation.update(zip(ps, es))
        if zero_grad:
            self._drop_gradients()

    def _drop_gradients(self) -> None:
        # zero_grad(set_to_none=True), written out: torch.compile does not trace
        # Optimizer.zero_grad (a graph break in a compiled perturb_weights()).
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    @torch.no_grad()
    def unperturb(self) -> None:
        """Return to w (through ``.data``, as the authors do: the second pass's graph then
        sees the restored weights when the Hessian-vector product runs)."""
        if self._backward_record.create_graph:
            self._unperturb_under_graph()
        else:
            self._leave_perturbed_point()

    @torch.compiler.disable
    def _unperturb_under_graph(self) -> None:
        # Eager even under torch.compile: a compiled in-place write to a graph input bumps
        # its version counter (AOTAutograd copies the result back), and autograd would then
        # refuse the Hessian-vector product through the weights the second pass saved.
        self._leave_perturbed_point()

    def _leave_perturbed_point(self) -> None:
        pending = list(self._perturbation.items())
        # Emptied in place: torch.compile drops attribute writes on an optimizer
        # (pytorch/pytorch#171590), so a new dict would not replace this one there.
        self._perturbation.clear()
        for (device, dtype), items in buckets(pending,
                                              lambda kv: (kv[0].device, kv[0].dtype)).items():
            self.ops(device, dtype).add_scaled([p.data for p, _ in items],
                                               [e for _, e in items], -1.0)

    def _before_hessian(self) -> None:
        self.unperturb()

    def _abandon_step(self) -> None:
        self.unperturb()

    # Eager: torch.compile drops attribute writes on an optimizer (pytorch/pytorch#171590),
    # rho_t's here.
    @torch.no_grad()
    @torch.compiler.disable
    def update_rho_t(self) -> float:
        """rho for this perturbation: ``rho_scheduler.step()`` (0 without a scheduler)."""
        rho = 0.0 if self.rho_scheduler is None else self.rho_scheduler.step()
        if not (is_real(rho) and rho >= 0.0):
            raise ValueError(f"Invalid rho value from rho_scheduler: {rho}")
        self.rho_t = rho
        return rho

    def _apply_update(self, plan: Plan, hessian_power: Optional[float],
                      found_inf: Optional[Tensor], written: UpdateFlags) -> None:
        for group, entries in plan.groups:
            beta1, beta2, power = group_scalars(group, hessian_power)
            for bucket in self._update_buckets(plan, entries, beta2, power, found_inf, written,
                                               extra=lambda p: p in self._perturbation):
                bias_correction1, bias_correction2 = self._bias_correction.for_update(
                    bucket, beta1, power)
                bucket.ops.sassha_update(
                    bucket.params, [p.grad for p in bucket.params], bucket.exp_avgs,
                    bucket.exp_hessians,
                    [self._perturbation.pop(p) for p in bucket.params] if bucket.extra else None,
                    lr=group["lr"], weight_decay=group["weight_decay"], beta1=beta1,
                    bias_correction1=bias_correction1, bias_correction2=bias_correction2,
                    hessian_power=power, eps=group["eps"], **bucket.flags())
        # Perturbed parameters that got no gradient in the second pass (no graph holds them
        # any more: the step released it).
        self._leave_perturbed_point()

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Tensor]] = None,
             scaler=None) -> Optional[Tensor]:
        """One SASSHA step from the gradients present, or, given ``closure``, a whole
        iteration (see the class docstring). Returns the first pass's loss, or None.

        ``scaler``: the ``torch.amp.GradScaler`` that scales the loss (with ``closure``
        the optimizer scales it). The gradients and the Hessian estimate are unscaled, an
        inf/NaN anywhere skips the iteration and is reported to the scaler, whose
        ``update()`` the caller then calls."""
        self._check_closure(closure)
        if closure is None:
            self._step_from_gradients(scaler)
            return None
        self.zero_grad(set_to_none=True)
        due = self.hessian_due
        if any(group["rho"] != 0 for group in self.param_groups):
            loss, _ = self._closure_pass(closure, scaler, create_graph=False)
            self.perturb_weights(zero_grad=True, scaler=scaler)
            if not self._checks.first_pass_nonfinite:  # else the step is skipped: save the pass
                try:
                    with frozen_batchnorm_stats():
                        self._gradient_pass(closure, scaler, due)
                except BaseException:
                    self.unperturb()
                    self.zero_grad(set_to_none=True)
                    raise
        else:
            loss = self._gradient_pass(closure, scaler, due)
        self._step_from_gradients(scaler)
        return loss.detach() if isinstance(loss, Tensor) else loss
