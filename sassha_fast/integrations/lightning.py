"""SASSHA / M-SASSHA in a LightningModule: ``class Net(SasshaLightningMixin,
LightningModule)``. Lightning itself is not imported here, so the mixin serves
pytorch_lightning and lightning.pytorch alike.

Automatic optimization: Lightning hands the optimizer a closure that runs ``training_step``
and ``backward()``, which the optimizer calls once per pass (SASSHA: clean, perturbed, and
the finite-difference probes on Hessian steps). That needs
``hessian_estimator="finite_difference"``; the mixin logs only the first (clean) pass and
returns its loss to Lightning. Refused, with the reason: ``accumulate_grad_batches > 1`` (the
earlier micro-batches are back-propagated outside the step, and the closure cannot redo
them at the perturbed point) and ``gradient_clip_val`` (Lightning would clip every pass,
the probes too); in both modes, ``precision="16-mixed"`` (``check_precision``).

Manual optimization: ``self.optimizers()`` returns a handle whose methods are the raw
optimizer's (``perturb_weights``, ``unperturb``, ``hessian_probes``, ``hessian_due``...) and
whose ``step()`` steps from the gradients present through Lightning's wrapper, so that
Lightning counts the step and runs its hooks; either estimator.

``strategy="ddp"``: automatic optimization needs nothing more (every pass, the probes
included, is an ordinary backward that DDP averages). In manual optimization
``self.manual_backward(loss, create_graph=True)`` runs outside DDP's reducer (``no_sync()``:
the reducer fails on a create_graph backward) and the optimizer averages that pass's
gradients and the Hessian estimate; ``self.clip_gradients(opt, ...)`` has them averaged
first (``opt.average_gradients()``), so that it clips the global gradient."""
import contextlib
from typing import Any, Callable, Optional

from torch.nn.parallel import DistributedDataParallel

from . import raw_optimizer
from ..optim.base import HessianOptimizer
from ..step import errors


class SasshaLightningMixin:
    """Put it before ``LightningModule`` in the bases. Optimizers that are not SASSHA /
    M-SASSHA are left to Lightning."""

    _sassha_quiet = False  # True while a pass after the first runs training_step

    def log(self, *args: Any, **kwargs: Any) -> None:
        if not self._sassha_quiet:
            super().log(*args, **kwargs)

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any,
                       optimizer_closure: Optional[Callable[[], Any]] = None) -> None:
        raw = raw_optimizer(optimizer)
        if not isinstance(raw, HessianOptimizer):
            return super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        check_automatic_optimization(self.trainer, raw)
        check_precision(self.trainer)
        first_result = []

        def closure():
            self._sassha_quiet = bool(first_result)
            try:
                loss = optimizer_closure()
            finally:
                self._sassha_quiet = False
            if not first_result:
                # Lightning reports (progress bar, on_train_batch_end) the closure's last
                # result: keep the clean pass's.
                first_result.append(getattr(optimizer_closure, "_result", None))
            return loss

        with errors.advising(errors.LIGHTNING_AUTOMATIC):
            optimizer.step(closure=closure)
        if first_result and first_result[0] is not None:
            optimizer_closure._result = first_result[0]
        return None

    def manual_backward(self, loss: Any, *args: Any, **kwargs: Any) -> None:
        # Tensor.backward(gradient, retain_graph, create_graph, inputs)
        create_graph = kwargs.get("create_graph", args[2] if len(args) > 2 else False)
        model = self.trainer.strategy.model if create_graph else None
        with model.no_sync() if isinstance(model, DistributedDataParallel) \
                else contextlib.nullcontext():
            super().manual_backward(loss, *args, **kwargs)

    def clip_gradients(self, optimizer: Any, gradient_clip_val: Any = None,
                       gradient_clip_algorithm: Optional[str] = None) -> None:
        raw = raw_optimizer(optimizer)
        # Automatic optimization comes here after every closure call (refusing
        # gradient_clip_val); manual optimization, from the user's loop before opt.step().
        if not self.automatic_optimization and isinstance(raw, HessianOptimizer):
            raw.average_gradients()  # what DDP could not average (nothing in one process)
        super().clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def optimizers(self, use_pl_optimizer: bool = True) -> Any:
        optimizers = super().optimizers(use_pl_optimizer)
        if not use_pl_optimizer:
            return optimizers

        def handle(optimizer):
            if isinstance(raw_optimizer(optimizer), HessianOptimizer):
                check_precision(self.trainer)
                return ManualOptimizer(optimizer)
            return optimizer
        if isinstance(optimizers, list):
            return [handle(optimizer) for optimizer in optimizers]
        return handle(optimizers)


def check_automatic_optimization(trainer: Any, optimizer: HessianOptimizer) -> None:
    """Refuses what automatic optimization cannot run correctly with these optimizers."""
    if optimizer.hessian_estimator != "finite_difference":
        raise RuntimeError(
            "Lightning's automatic optimization runs backward() inside the closure it hands "
            "the optimizer, without the create_graph=True that the default "
            "hessian_estimator='autograd' needs: construct the optimizer with "
            "hessian_estimator='finite_difference', or set self.automatic_optimization = "
            "False and call self.manual_backward(loss, create_graph=opt.hessian_due) "
            "(docs/integrations.md)")
    if getattr(trainer, "accumulate_grad_batches", 1) > 1:
        raise RuntimeError(
            "accumulate_grad_batches > 1 under automatic optimization: Lightning "
            "back-propagates the earlier micro-batches outside the optimizer step, and the "
            "closure it hands the optimizer cannot redo them at the perturbed point or for "
            "the Hessian estimate, so their gradients would be mixed in inconsistently. Set "
            "accumulate_grad_batches=1 and raise the batch size, or use manual optimization "
            "and run both passes over every micro-batch (docs/integrations.md)")
    if getattr(trainer, "gradient_clip_val", None):
        raise RuntimeError(
            "gradient_clip_val under automatic optimization: Lightning clips after every "
            "closure call, so the finite-difference probes would be clipped too and the "
            "Hessian estimate would difference gradients scaled differently. Use manual "
            "optimization and clip the second pass's gradient before opt.step() "
            "(self.clip_gradients(opt, ...); docs/integrations.md)")


def check_precision(trainer: Any) -> None:
    """Refuses a GradScaler (precision="16-mixed" on a GPU), before the step."""
    if getattr(getattr(trainer, "precision_plugin", None), "scaler", None) is None:
        return
    raise RuntimeError(
        "precision='16-mixed' (a GradScaler): Lightning steps the optimizer through "
        "scaler.step(), which cannot unscale the Hessian estimate of SASSHA / M-SASSHA (and, "
        "in automatic optimization, runs the closure outside the optimizer). Use "
        "precision='bf16-mixed', which needs no scaler (with "
        "hessian_estimator='finite_difference', pass fd_eps=3e-2 and fd_scheme='central'; "
        "docs/integrations.md)")


class ManualOptimizer:
    """What ``self.optimizers()`` returns for SASSHA / M-SASSHA under the mixin: attributes
    and methods are the raw optimizer's (one object, one state), ``step()`` goes through
    Lightning's ``LightningOptimizer`` for its step count and hooks."""

    def __init__(self, lightning_optimizer: Any):
        self.lightning_optimizer = lightning_optimizer
        self.optimizer = raw_optimizer(lightning_optimizer)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.optimizer, name)

    def step(self, closure: Optional[Callable[[], Any]] = None, **kwargs: Any) -> Any:
        """Without ``closure``: the step from the gradients present (the authors' loop);
        with one: ``step(closure)`` of the raw optimizer (a closure that calls
        ``self.manual_backward`` needs ``hessian_estimator="finite_difference"``)."""
        if closure is not None:
            return self.lightning_optimizer.step(closure=closure, **kwargs)
        with _steps_from_gradients(self.optimizer):
            return self.lightning_optimizer.step(**kwargs)

    def toggle_model(self, *args: Any, **kwargs: Any) -> Any:
        return self.lightning_optimizer.toggle_model(*args, **kwargs)


@contextlib.contextmanager
def _steps_from_gradients(optimizer: HessianOptimizer):
    """Lightning's wrapper always passes the optimizer a closure (a no-op one in manual
    optimization, wrapped with its hooks): run it for the hooks, then step without it."""
    def step(closure: Optional[Callable[[], Any]] = None, **kwargs: Any) -> Any:
        if closure is not None:
            closure()
        return type(optimizer).step(optimizer, **kwargs)

    optimizer.step = step
    try:
        yield
    finally:
        del optimizer.step
