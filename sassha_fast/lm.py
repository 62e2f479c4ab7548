"""The authors' language-model SASSHA (spec section 5): the variant their GPT-2 pretraining
script drives, with the same API, so that the script runs with only its import changed::

    from sassha_fast.lm import SASSHA

What differs from ``sassha_fast.SASSHA`` (spec section 1): no bias correction; the caller's
``step(iter_num)`` decides which iterations refresh the Hessian average
(``iter_num % lazy_hessian == 0``); the Hessian estimate is the sum of the ``set_hessian()``
calls since the last step (one per micro-batch, taken where the backward pass ran, i.e. at
the perturbed point before ``unperturb()``); rho comes from ``rho_scheduler``;
``grad_reduce`` defaults to 'sum' and the caller reduces the gradients with
``_sync_gradient()``. The fused ops are the package's: the update is ``sassha_update``
with both bias corrections 1.
"""
import numbers
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor

from . import backends
from ._base import Entry, Plan, buckets, group_scalars
from ._validation import _real
from .checkpoint import STATE_TENSOR_KEYS
from .sassha import SASSHA as _SASSHA


class LanguageModelSASSHA(_SASSHA):
    """The authors' language-model SASSHA. Their loop, per iteration ``iter_num``::

        if iter_num % lazy_hessian == 0:
            opt.zero_hessian()
            for xb, yb in micro_batches:                       # first pass
                (loss(xb, yb) / n).backward()
            opt._sync_gradient()
            opt.perturb_weights()                               # rho_t = rho_scheduler.step()
            opt.zero_grad(set_to_none=True)
            for xb, yb in micro_batches:                       # perturbed pass
                (loss(xb, yb) / n).backward(create_graph=True)
                opt.set_hessian()                               # adds this micro-batch's estimate
            opt.unperturb()
            opt._sync_gradient()
            opt.step(iter_num)                                  # D refreshed from the sum
            opt.zero_grad(set_to_none=True)

    (other iterations: the same without ``create_graph`` and ``set_hessian()``; before rho
    warm-up ends the script skips the perturbed pass and calls ``set_hessian()`` after the
    first pass's micro-batches). ``rho_scheduler`` and ``hessian_power_scheduler`` may be
    assigned after construction, as the script does; without a rho scheduler rho is 0,
    without a power scheduler the power is the constant ``hessian_power`` (the authors'
    code fails there). ``rho_t`` and ``hessian_power_t`` hold the last values used.

    A refresh iteration (``iter_num % lazy_hessian == 0``) needs an estimate for every
    parameter with a gradient: ``step()`` raises otherwise. Estimates are consumed by the
    step (the authors keep them on ``p.hess`` until ``zero_hessian()``, which their script
    calls before every Hessian iteration). The state holds ``step``, ``exp_avg`` and
    ``exp_hessian_diag``, the authors' keys; their ``hessian step`` counter (which nothing
    reads: the iteration number decides) and ``e_w`` are not kept, and are dropped when
    one of their checkpoints is loaded. ``backend``, ``process_group`` and ``nonfinite``
    work as in ``sassha_fast.SASSHA``; it always takes the host path (its step reads the
    skip flag on the host; ``capturable`` does not apply).
    """

    # Nothing in an authors' checkpoint needs rebuilding: there is no bias correction.
    _authors_bias_correction2 = None
    _AUTHORS_DROPPED_KEYS = ("e_w", "hessian step")

    def __init__(self, params, hessian_power_scheduler=None, lr: float = 0.15,
                 betas=(0.9, 0.999), weight_decay: float = 0.0, rho_scheduler=None,
                 lazy_hessian: int = 10, n_samples: int = 1, perturb_eps: float = 1e-12,
                 eps: float = 1e-4, adaptive: bool = False, grad_reduce: str = "sum",
                 seed: int = 0, *, hessian_power: float = 0.5, backend: str = "auto",
                 process_group=None, nonfinite: str = "skip", **kwargs):
        # Every group's rho is set to rho_t by each perturb_weights().
        super().__init__(params, hessian_power_scheduler=hessian_power_scheduler, lr=lr,
                         betas=betas, weight_decay=weight_decay, rho=0.0,
                         lazy_hessian=lazy_hessian, n_samples=n_samples,
                         perturb_eps=perturb_eps, eps=eps, adaptive=adaptive,
                         grad_reduce=grad_reduce, seed=seed, hessian_power=hessian_power,
                         backend=backend, process_group=process_group,
                         sync_gradients=False, nonfinite=nonfinite, **kwargs)
        if self.hessian_estimator != "autograd":
            raise ValueError("the language-model SASSHA sums the double backward's "
                             "set_hessian() estimates; hessian_estimator="
                             f"{self.hessian_estimator!r} does not apply to it")
        self.rho_scheduler = rho_scheduler
        self.rho_t = 0.0
        self._refresh = False  # whether the step in progress refreshes the Hessian average

    # -- the authors' API ---------------------------------------------------------------

    @torch.no_grad()
    def update_rho_t(self) -> float:
        """rho for this perturbation: ``rho_scheduler.step()``, or 0 without a scheduler."""
        rho = 0.0 if self.rho_scheduler is None else self.rho_scheduler.step()
        if not (_real(rho) and rho >= 0.0):
            raise ValueError(f"Invalid rho value from rho_scheduler: {rho}")
        self.rho_t = rho
        return rho

    @torch.no_grad()
    def perturb_weights(self, zero_grad: bool = True, scaler=None) -> None:
        """Climb to w + e with e = rho_t * g / (||g|| + perturb_eps), rho_t from
        ``update_rho_t()`` (see ``sassha_fast.SASSHA.perturb_weights``)."""
        rho = self.update_rho_t()
        for group in self.param_groups:
            group["rho"] = rho
        super().perturb_weights(zero_grad=zero_grad, scaler=scaler)

    @torch.no_grad()
    def _sync_gradient(self) -> None:
        """Reduce every gradient across ranks (``grad_reduce``: sum or mean), as the
        authors' script asks after each pass. Does nothing in a single process."""
        self._averager.average_([p.grad for p in self.get_params() if p.grad is not None])

    def _hessian_due_for(self, p: Tensor) -> bool:
        # set_hessian() estimates for every parameter with a gradient: the caller calls it
        # on the iterations it chooses.
        return True

    @torch.no_grad()
    def step(self, iter_num: int, closure: Optional[Callable[[], Tensor]] = None):
        """Update from the gradients present; the Hessian average D is refreshed from the
        summed ``set_hessian()`` estimates when ``iter_num % lazy_hessian == 0``.
        ``closure``, if given, is called first and its value returned (as the authors')."""
        if not isinstance(iter_num, numbers.Integral) or isinstance(iter_num, bool):
            raise TypeError("step(iter_num): the authors' language-model SASSHA takes the "
                            f"iteration number, got {type(iter_num).__name__}")
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._refresh = iter_num % self.lazy_hessian == 0
        self._step_from_gradients(None)
        return loss

    # -- the step -----------------------------------------------------------------------

    def _plan_step(self) -> Plan:
        summed = self._estimator.sum
        plan, self._estimator.sum = summed, None
        if plan is None:
            plan = Plan([(group, [Entry(p, None, True) for p in self._params_with_grad(group)])
                         for group in self.param_groups], {}, None)
        if not self._refresh:
            return plan._replace(hessians={}, graph_params=frozenset())
        missing = [p for p in plan.params() if p not in plan.hessians]
        if missing:
            self._estimator.sum = summed
            raise RuntimeError(
                "this step refreshes the Hessian average (iter_num % lazy_hessian == 0), but "
                f"{len(missing)} parameter(s) with a gradient have no Hessian estimate: call "
                "set_hessian() after each micro-batch's backward(create_graph=True) on "
                "iterations where iter_num % lazy_hessian == 0")
        # The caller reduces the gradients itself (_sync_gradient()).
        return plan._replace(graph_params=frozenset())

    def _state_of(self, p: Tensor) -> dict:
        state = self.state[p]
        if "step" not in state:
            state["step"] = 0
            for key in STATE_TENSOR_KEYS:
                state[key] = torch.zeros_like(p, dtype=backends.state_dtype(p.dtype),
                                              memory_format=torch.preserve_format)
        return state

    def _commit(self, plan: Plan) -> Plan:
        return plan._replace(groups=[
            (group, [Entry(e.param, self._state_of(e.param), e.param in plan.hessians)
                     for e in entries])
            for group, entries in plan.groups])

    @property
    def device_path(self) -> bool:
        # The authors' variant keeps its counters on the host: a skip is read there.
        return False

    def _bias_corrections(self, group: dict, state: dict,
                          hessian_power: float) -> Tuple[float, float]:
        return 1.0, 1.0  # none, as the authors' language-model optimizer

    def _apply_update(self, plan: Plan, hessian_power: Optional[float],
                      found_inf: Optional[Tensor]) -> None:
        for group, entries in plan.groups:
            beta1, beta2, power = group_scalars(group, hessian_power)
            for entry in entries:
                entry.state["step"] += 1
            key = lambda e: (e.param.device, e.param.dtype, e.hessian_now,  # noqa: E731
                             e.param in self._perturbation)
            for (device, dtype, refresh, perturbed), bucket in buckets(entries, key).items():
                ops = self.ops(device, dtype)
                params = [e.param for e in bucket]
                exp_hessians = [e.state["exp_hessian_diag"] for e in bucket]
                if refresh:
                    self._hessian_ema(ops, exp_hessians, [plan.hessians[p] for p in params],
                                      beta2)
                ops.sassha_update(
                    params, [p.grad for p in params], [e.state["exp_avg"] for e in bucket],
                    exp_hessians,
                    [self._perturbation.pop(p) for p in params] if perturbed else None,
                    lr=group["lr"], weight_decay=group["weight_decay"], beta1=beta1,
                    bias_correction1=1.0, bias_correction2=1.0, hessian_power=power,
                    eps=group["eps"])
        self.unperturb()


# The authors' class name, for ``from sassha_fast.lm import SASSHA``.
SASSHA = LanguageModelSASSHA
