"""The authors' language-model SASSHA: the variant their GPT-2 pretraining script drives,
with the same API, so that the script runs with only its import changed to
``from sassha_fast.lm import SASSHA``.

It is SASSHA configured three ways (docs/algorithm.md): no bias correction
(``bias_correction.NoCorrection``); the caller's ``step(iter_num)`` decides which iterations
refresh the Hessian average from the summed ``set_hessian()`` estimates
(``schedule.CallerSchedule``); rho comes from ``rho_scheduler``. ``grad_reduce`` defaults to
'sum' and the caller reduces the gradients with ``_sync_gradient()``. The update is
SASSHA's, with both bias corrections 1.
"""
import numbers
from typing import Callable, Optional

import torch
from torch import Tensor

from .bias_correction import NoCorrection
from .sassha import SASSHA
from .schedule import CallerSchedule


class LanguageModelSASSHA(SASSHA):
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

    def __init__(self, params, hessian_power_scheduler=None, lr: float = 0.15,
                 betas=(0.9, 0.999), weight_decay: float = 0.0, rho_scheduler=None,
                 lazy_hessian: int = 10, n_samples: int = 1, perturb_eps: float = 1e-12,
                 eps: float = 1e-4, adaptive: bool = False, grad_reduce: str = "sum",
                 seed: int = 0, *, hessian_power: float = 0.5, backend: str = "auto",
                 process_group=None, nonfinite: str = "skip", capturable: Optional[bool] = None,
                 **kwargs):
        if capturable:
            raise ValueError("the language-model SASSHA reads each step's skip flag on the "
                             "host (step(iter_num) decides on the host); capturable=True does "
                             "not apply to it: use sassha_fast.SASSHA for a capturable step")
        # Every group's rho is set to rho_t by each perturb_weights() with a scheduler; 0
        # without one.
        super().__init__(params, hessian_power_scheduler=hessian_power_scheduler, lr=lr,
                         betas=betas, weight_decay=weight_decay, rho=0.0,
                         lazy_hessian=lazy_hessian, n_samples=n_samples,
                         perturb_eps=perturb_eps, eps=eps, adaptive=adaptive,
                         grad_reduce=grad_reduce, seed=seed, hessian_power=hessian_power,
                         backend=backend, process_group=process_group,
                         sync_gradients=False, nonfinite=nonfinite, capturable=False,
                         rho_scheduler=rho_scheduler, _schedule=CallerSchedule(lazy_hessian),
                         _bias_correction=NoCorrection, **kwargs)
        if self.hessian_estimator != "autograd":
            raise ValueError("the language-model SASSHA sums the double backward's "
                             "set_hessian() estimates; hessian_estimator="
                             f"{self.hessian_estimator!r} does not apply to it")

    @torch.no_grad()
    def _sync_gradient(self) -> None:
        """Reduce every gradient across ranks (``grad_reduce``: sum or mean), as the
        authors' script asks after each pass. Does nothing in a single process."""
        self._averager.average_([p.grad for p in self.get_params() if p.grad is not None])

    def average_gradients(self) -> None:
        """Not for this variant: its step's plan depends on ``step(iter_num)``, and its caller
        reduces the gradients with ``_sync_gradient()``, as the authors' script does."""
        raise RuntimeError("the language-model SASSHA does not average ahead of step(iter_num): "
                           "reduce the gradients with _sync_gradient() after each pass, as the "
                           "authors' script does")

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
        self._schedule.start_step(iter_num)
        self._step_from_gradients(None)
        return loss
