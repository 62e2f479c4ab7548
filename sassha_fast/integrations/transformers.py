"""``SasshaTrainer``: a ``transformers.Trainer`` that runs SASSHA's / M-SASSHA's passes.
Change ``Trainer`` to ``SasshaTrainer`` and pass the optimizer as usual
(``optimizers=(SASSHA(model.parameters(), ...), scheduler_or_None)``); with another
optimizer it is the plain Trainer.

The Trainer calls ``training_step`` once per micro-batch and then, on the last one of each
accumulation window, clips (``max_grad_norm``) and calls ``optimizer.step()``. Here each
micro-batch's ``training_step`` runs its first pass (SASSHA: the clean point; M-SASSHA: its
one pass, ``create_graph`` when the default estimator's Hessian is due) and keeps the inputs;
the window's last one then runs, over every micro-batch of the window, what the step still
needs: SASSHA perturbs once from the accumulated gradient and runs the second pass (then the
finite-difference probes), M-SASSHA the probes. Every pass scales the loss as the Trainer
does, through its own ``training_step``. So the Trainer's clipping applies to the gradient
the update uses (SASSHA's second pass, M-SASSHA's pass), after the Hessian estimate was
taken: it bounds the momentum's input, not the perturbation (a direction of norm rho) nor the
curvature. The logged loss is the first pass's. Evaluation and prediction of M-SASSHA run at
the clean point (``opt.evaluation()``).

Several processes (DDP, from torchrun or ``accelerate launch``): DDP's reducer cannot run a
``create_graph`` backward, so those passes run under ``no_sync()`` and, before the Trainer
clips, ``opt.average_gradients()`` averages their gradients and the Hessian estimate across
ranks (clipping then sees the global gradient, as in one process over the whole batch).
Every other pass is an ordinary backward that DDP averages, once per pass over the window
(the micro-batches before its last run under ``no_sync()``). FSDP is refused
(``check_no_fsdp``).

``torch_compile=True``: the compiled backward cannot be differentiated again, so the
``create_graph`` passes run through the module the Trainer compiled (same parameters); every
other pass runs compiled."""
import contextlib
import functools
import os
from typing import Any, Optional

import transformers
from accelerate.utils import is_compiled_module

from . import raw_optimizer
from ..hessian.finite_difference import capture_rng_state
from ..optim.base import HessianOptimizer
from ..optim.sassha import SASSHA
from ..step.batchnorm import frozen_batchnorm_stats
from ..step.errors import compiled_double_backward_error


class SasshaTrainer(transformers.Trainer):
    """``transformers.Trainer`` for SASSHA / M-SASSHA (either Hessian estimator), with
    gradient accumulation, ``max_grad_norm``, bf16 mixed precision, checkpoint resume,
    ``torch_compile`` and several processes (DDP). fp16 (a GradScaler) is refused: its
    ``scaler.step()`` would skip the optimizer's own unscaling of the Hessian estimate; so is
    FSDP (``check_no_fsdp``)."""

    def __init__(self, *args: Any, **kwargs: Any):
        # Before the Trainer's own checks, which under FSDP would send the user to
        # create_optimizer_and_scheduler instead.
        check_no_fsdp(kwargs["args"] if "args" in kwargs else (args[1] if len(args) > 1 else None))
        super().__init__(*args, **kwargs)
        check_no_fsdp(self.args, getattr(self, "is_fsdp_enabled", False))
        self._sassha_window: list = []  # (inputs, num_items_in_batch) of this window
        self._sassha_rng = None  # RNG states before the window's first forward

    def training_step(self, model, inputs, num_items_in_batch=None):
        opt = raw_optimizer(self.optimizer)
        if not isinstance(opt, HessianOptimizer):
            return super().training_step(model, inputs, num_items_in_batch)
        if self.accelerator.scaler is not None:
            raise RuntimeError(
                "SasshaTrainer with fp16=True: accelerate steps the optimizer through the "
                "GradScaler's step(), which cannot unscale SASSHA's Hessian estimate; use "
                "bf16=True (no scaler)")
        two_passes = isinstance(opt, SASSHA)
        autograd = opt.hessian_estimator == "autograd"
        due = opt.hessian_due
        if not self._sassha_window:
            self._sassha_rng = capture_rng_state()
        self._sassha_window.append((inputs, num_items_in_batch))
        loss = self._pass(model, inputs, num_items_in_batch,
                          create_graph=due and autograd and not two_passes)
        if not self.accelerator.sync_gradients:
            return loss
        window, self._sassha_window = self._sassha_window, []
        rng = self._sassha_rng
        if two_passes:
            opt.perturb_weights(zero_grad=True)
            try:
                with frozen_batchnorm_stats():
                    rng = capture_rng_state()
                    self._passes(model, window, create_graph=due and autograd)
                    if due and not autograd:
                        self._probes(opt, model, window, rng)
            finally:
                opt.unperturb()
        elif due and not autograd:
            self._probes(opt, model, window, rng)
        if due and autograd:
            # Before the Trainer clips: the create_graph passes ran outside DDP's reducer
            # (no-op in one process).
            opt.average_gradients()
        return loss

    def _probes(self, opt, model, window: list, rng) -> None:
        """The finite-difference probes, each a pass over the whole window."""
        for _ in opt.hessian_probes(rng):
            self._passes(model, window, create_graph=False)

    def _passes(self, model, window: list, create_graph: bool) -> None:
        """One pass over the window; DDP all-reduces the accumulated gradient once, at its
        last micro-batch, as the Trainer does for the first pass."""
        last = len(window) - 1
        for i, (inputs, num_items_in_batch) in enumerate(window):
            with self._no_sync(model, i < last):
                self._pass(model, inputs, num_items_in_batch, create_graph)

    def _pass(self, model, inputs, num_items_in_batch, create_graph: bool):
        """The Trainer's own forward, loss scaling and backward, ``create_graph`` added
        (outside DDP's reducer, which fails on it: the optimizer averages that pass)."""
        if not create_graph:
            return super().training_step(model, inputs, num_items_in_batch)
        # torch.compile's backward cannot be differentiated again: this pass runs the module
        # that torch_compile=True wrapped, which shares its parameters.
        if is_compiled_module(model):
            model = model._orig_mod
        with self._no_sync(model, True), _backward_kwargs(self.accelerator, create_graph=True):
            try:
                return super().training_step(model, inputs, num_items_in_batch)
            except RuntimeError as exc:
                if compiled_double_backward_error(exc) is None:
                    raise
                raise compiled_regions_error(exc) from exc

    def _no_sync(self, model, condition: bool):
        # accelerate's no_sync does nothing in one process.
        return self.accelerator.no_sync(model) if condition else contextlib.nullcontext()

    def evaluate(self, *args: Any, **kwargs: Any):
        with _clean_point(self.optimizer):
            return super().evaluate(*args, **kwargs)

    def predict(self, *args: Any, **kwargs: Any):
        with _clean_point(self.optimizer):
            return super().predict(*args, **kwargs)


def check_no_fsdp(args: Optional[Any], fsdp_enabled: bool = False) -> None:
    """Refuses FSDP, asked for through ``TrainingArguments.fsdp`` or ``accelerate launch
    --use_fsdp``, before anything is sharded."""
    asked = fsdp_enabled or (args is not None and bool(getattr(args, "fsdp", None))) or \
        os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if not asked:
        return
    raise RuntimeError(
        "SasshaTrainer does not run under FSDP (TrainingArguments.fsdp, accelerate launch "
        "--use_fsdp): FSDP reduces the gradients outside autograd, so the default "
        "hessian_estimator='autograd' cannot take its double backward through them, and the "
        "Trainer's FSDP path is untested with this integration (accelerate enables FSDP on "
        "accelerators only; on CPU it trains with DDP instead). What works: several "
        "processes without fsdp (torchrun or accelerate launch, DDP), either estimator and "
        "optimizer; or FSDP2's fully_shard in a loop of your own with "
        "hessian_estimator='finite_difference' (docs/production.md, FSDP2)")


def compiled_regions_error(exc: RuntimeError) -> RuntimeError:
    """A create_graph pass that reached a region compiled inside the model."""
    return RuntimeError(
        "SasshaTrainer's create_graph pass (hessian_estimator='autograd', on Hessian-due "
        "steps) reached a part of the model compiled on its own (accelerate's regional "
        "compilation, or torch.compile applied inside the model), whose backward cannot be "
        "differentiated again. SasshaTrainer runs that pass through the uncompiled model only "
        "when the whole model is compiled (TrainingArguments(torch_compile=True)). Either "
        "compile the whole model that way, or construct the optimizer with "
        "hessian_estimator='finite_difference', which needs first-order gradients only and "
        "trains compiled throughout. Original error: " + str(exc))


@contextlib.contextmanager
def _backward_kwargs(accelerator: Any, **kwargs: Any):
    """``accelerator.backward`` with ``kwargs`` added, for the block."""
    accelerator.backward = functools.partial(type(accelerator).backward, accelerator, **kwargs)
    try:
        yield
    finally:
        del accelerator.backward


def _clean_point(optimizer: Optional[Any]):
    """M-SASSHA keeps the weights at the perturbed point between steps: evaluate at w."""
    opt = raw_optimizer(optimizer)
    evaluation = getattr(opt, "evaluation", None)
    return evaluation() if callable(evaluation) else contextlib.nullcontext()
