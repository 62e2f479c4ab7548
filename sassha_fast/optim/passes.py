"""The forward and backward passes that ``step(closure)`` runs for the caller, and the
gradients they leave made ready for the update."""
import warnings
from typing import Callable, Iterable, List, Optional, Tuple

import torch
from torch import Tensor

from ..hessian import finite_difference
from ..step import amp, errors
from ..step.backward_record import BackwardRecord
from ..step.plan import Plan

_CREATE_GRAPH_WARNING = r"Using backward\(\) with create_graph=True"


def backward(loss: Tensor, create_graph: bool) -> None:
    with torch.enable_grad(), warnings.catch_warnings():
        # The reference cycle PyTorch warns about is broken by the step, which detaches the
        # gradients once the Hessian-vector product is done.
        warnings.filterwarnings("ignore", message=_CREATE_GRAPH_WARNING)
        try:
            loss.backward(create_graph=create_graph)
        except RuntimeError as exc:
            clearer = errors.create_graph_backward_error(exc) if create_graph else None
            if clearer is None:
                raise
            raise clearer from exc


def check_closure(closure, record: BackwardRecord, params: Iterable[Tensor]) -> None:
    """A callable, and no gradient a backward pass accumulated since the last step."""
    if closure is not None and not callable(closure):
        raise TypeError(f"step(closure) takes a callable, got {type(closure).__name__} (the "
                        "authors' language-model SASSHA's step(iter_num) is "
                        "sassha_fast.lm.SASSHA)")
    if closure is None or not record.accumulated:
        return
    # Gradients left by a backward since the last step: torch optimizers add the closure's
    # to them, which SASSHA's passes cannot do consistently (errors.py says why); all-zero
    # ones (zero_grad(set_to_none=False)) carry nothing to drop.
    left = [p for p in params if p.grad is not None]
    if left and any(bool(p.grad.detach().ne(0).any()) for p in left):
        raise errors.accumulated_gradients_error(len(left))


def closure_pass(closure: Callable[[], Tensor], scaler, create_graph: bool, needs_graph: bool,
                 params: Iterable[Tensor], capture_rng: bool = False
                 ) -> Tuple[Tensor, Optional[finite_difference.RNGState]]:
    """The closure's loss, back-propagated, and (with ``capture_rng``) the RNG states its
    forward started from. When the estimator does not need the graph (``needs_graph``
    False) a closure may run ``backward()`` itself (the torch / Lightning convention, found
    by the gradients it leaves; with a scaler it back-propagates ``scaler.scale(loss)``)."""
    rng = finite_difference.capture_rng_state() if capture_rng else None
    with torch.enable_grad():
        loss = closure()
    if any(p.grad is not None for p in params):
        if not needs_graph:
            return loss, rng
        raise errors.closure_called_backward_error()
    if not isinstance(loss, Tensor) or not loss.requires_grad:
        raise ValueError("the closure must return the loss as a tensor that requires grad "
                         "(compute it; do not call backward: the optimizer does)"
                         + errors.framework_advice())
    backward(amp.scale_loss(scaler, loss), create_graph)
    return loss, rng


def release_graphs(plan: Plan, params: Iterable[Tensor]) -> List[Tensor]:
    """Detach every gradient in ``params`` from the double-backward graph a create_graph
    pass leaves on it (it holds that whole graph); returns the plan's parameters whose
    gradients carried one (DDP cannot have averaged those: it fails on such a pass)."""
    carrying_graph = [p for p in plan.params()
                      if p.grad.grad_fn is not None or p in plan.graph_params]
    for p in params:
        if p.grad is not None and p.grad.grad_fn is not None:
            p.grad = p.grad.detach()
    return carrying_graph


def average_for_update(plan: Plan, carrying_graph: List[Tensor], averager,
                       sync_gradients: bool, needs_graph: bool) -> None:
    """Average across ranks, in place, what the update takes and DDP could not average: the
    gradients that carried a graph (all of them with ``sync_gradients``) and the Hessian
    estimates."""
    to_average = [p.grad for p in plan.params()] if sync_gradients \
        else [p.grad for p in carrying_graph]
    # An estimate without a graph differences gradients that DDP has averaged (or, with
    # sync_gradients, local ones: then it is averaged here as they are).
    if needs_graph or sync_gradients:
        to_average = to_average + list(plan.hessians.values())
    averager.average_(to_average)


def gradients_for_update(plan: Plan, carrying_graph: List[Tensor], averager,
                         sync_gradients: bool, needs_graph: bool, scaler,
                         averaged: bool = False
                         ) -> Tuple[List[Tensor], List[Tensor], Optional[Tensor]]:
    """The plan's gradients and Hessian estimates as the update takes them: averaged across
    ranks where DDP could not average them (unless ``averaged``: ``average_gradients()``
    did it ahead of the step), unscaled; and, with a GradScaler, whether the unscaling pass
    found inf/NaN in them (a 0-d flag, None without a scaler)."""
    grads = [p.grad for p in plan.params()]
    hessians = list(plan.hessians.values())
    if not averaged:
        average_for_update(plan, carrying_graph, averager, sync_gradients, needs_graph)
    return grads, hessians, amp.unscale_(scaler, grads + hessians)


class AveragedAhead:
    """The plan of the next step, held from ``average_gradients()`` to ``step()``, whose
    gradients and estimates were averaged then. An object the optimizer holds, not an
    attribute of it: torch.compile drops attribute writes on an optimizer
    (pytorch/pytorch#171590), and a compiled step clears this."""

    def __init__(self):
        self.plan: Optional[Tuple[Plan, List[Tensor]]] = None  # (plan, carrying_graph)

    def take(self, accumulated_since: bool) -> Optional[Tuple[Plan, List[Tensor]]]:
        """The held plan, now released; refused (and dropped) when a backward pass
        accumulated gradients since it was averaged."""
        held, self.plan = self.plan, None
        if held is not None and accumulated_since:
            raise RuntimeError(
                "a backward pass accumulated gradients after average_gradients(), before "
                "step(): they were not averaged across ranks. Average (or, under "
                "SasshaLightningMixin, clip with self.clip_gradients()) after the iteration's "
                "last backward pass and hessian_probes(), just before step()")
        return held
