"""Errors from autograd that the optimizer can explain better than autograd can."""
import contextlib
import contextvars
import sys
from typing import Optional

import torch.distributed as dist

# torch.compile's AOTAutograd backward cannot be differentiated again (torch 2.x): a
# create_graph backward through a region compiled without one fails on its donated buffers,
# and a Hessian-vector product through it fails outright.
COMPILED_DOUBLE_BACKWARD = ("does not currently support double backward", "donated buffers")
# autograd's message for an operation whose backward has no derivative of its own
# (F.scaled_dot_product_attention's fused CPU / flash / memory-efficient kernels).
MISSING_DERIVATIVE = ("derivative for ", "is not implemented")
# DDP's reducer writes into the gradients of a create_graph backward (torch 2.14).
LEAF_IN_PLACE = "a leaf Variable that requires grad is being used in an in-place operation"


def dtensor_double_backward_error() -> RuntimeError:
    """For DTensor parameters whose gradients carry no graph after a create_graph pass."""
    return RuntimeError(
        "the Hessian is due at this step, but the gradients of the DTensor parameters carry "
        "no graph: FSDP2's fully_shard (and other DTensor wrappers) reduce the gradients "
        "outside autograd, so the double backward of hessian_estimator='autograd' cannot run "
        "through them. Use hessian_estimator='finite_difference', which needs first-order "
        "gradients only.")


def double_backward_error(exc: RuntimeError) -> Optional[RuntimeError]:
    """A clearer error for a Hessian-vector product that autograd cannot run, or None."""
    compiled = compiled_double_backward_error(exc)
    if compiled is not None:
        return compiled
    message = str(exc)
    if not (message.startswith(MISSING_DERIVATIVE[0]) and MISSING_DERIVATIVE[1] in message):
        return None
    return RuntimeError(
        "the optimizer's Hessian-vector product (a double backward through the model, "
        "hessian_estimator='autograd') reached an operation that has no double backward "
        "(e.g. F.scaled_dot_product_attention, which nn.MultiheadAttention and "
        "nn.TransformerEncoderLayer use). Construct the optimizer with "
        "hessian_estimator='finite_difference', which needs first-order gradients only. "
        "Original error: " + message)


def compiled_double_backward_error(exc: RuntimeError) -> Optional[RuntimeError]:
    """A clearer error for a second backward through a compiled model, or None."""
    if not any(message in str(exc) for message in COMPILED_DOUBLE_BACKWARD):
        return None
    return RuntimeError(
        "the Hessian-vector product needs a second backward through the model, which a "
        "torch.compile'd model cannot run (its AOTAutograd backward is not differentiable). "
        "On iterations where optimizer.hessian_due is True, run the forward pass that feeds "
        "the create_graph backward through the uncompiled module (torch.compile(model) "
        "shares model's parameters, so alternate between the two), or compile with "
        "backend='eager'. Original error: " + str(exc))


def create_graph_backward_error(exc: RuntimeError) -> Optional[RuntimeError]:
    """A clearer error for a failed ``create_graph`` backward, or None to re-raise ``exc``."""
    compiled = compiled_double_backward_error(exc)
    distributed = dist.is_available() and dist.is_initialized()
    if compiled is not None or not (distributed and LEAF_IN_PLACE in str(exc)):
        return compiled
    return RuntimeError(
        "a backward pass with create_graph=True failed inside DistributedDataParallel, which "
        "cannot run one: run that pass under model.no_sync() (for optimizer.step(closure): "
        "the closure's forward), and the optimizer averages its gradients and the Hessian "
        "estimate itself. Original error: " + str(exc))


# Where a framework's frames come from, and the integration that runs the optimizer there.
_FRAMEWORKS = (
    (("pytorch_lightning.", "lightning.pytorch.", "lightning_fabric.", "lightning.fabric."),
     "Lightning"),
    # Not accelerate alone: a loop of one's own around it can follow the plain advice.
    (("transformers.",), "Trainer"),
)
_INTEGRATIONS = "sassha_fast.integrations."


def caller_framework() -> Optional[str]:
    """"Lightning" or "Trainer" when one of them (without this package's integration around
    it) called the optimizer, else None. Read from the call stack, on error paths only."""
    frame = sys._getframe(1)
    found = None
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module.startswith(_INTEGRATIONS):
            return None  # the integration is in use: its own advice applies
        for prefixes, name in _FRAMEWORKS:
            if found is None and module.startswith(prefixes):
                found = name
        frame = frame.f_back
    return found


LIGHTNING_ADVICE = (
    " Under Lightning: automatic optimization hands the optimizer a closure that runs "
    "training_step and backward() itself, which works with "
    "hessian_estimator='finite_difference' and the mixin "
    "sassha_fast.integrations.lightning.SasshaLightningMixin (it also logs the clean loss); "
    "for the default estimator use manual optimization with that mixin and "
    "self.manual_backward(loss, create_graph=opt.hessian_due) (docs/integrations.md).")
TRAINER_ADVICE = (
    " Under transformers.Trainer: the Trainer runs one backward per micro-batch and calls "
    "optimizer.step() without a closure, so SASSHA's passes never run; replace Trainer by "
    "sassha_fast.integrations.transformers.SasshaTrainer, which runs them "
    "(docs/integrations.md).")
_ADVICE = {"Lightning": LIGHTNING_ADVICE, "Trainer": TRAINER_ADVICE, None: ""}


def framework_advice() -> str:
    """The way out through the integration of the framework that called, or ""."""
    return _ADVICE[caller_framework()]


def closure_called_backward_error() -> ValueError:
    """A closure that ran backward() itself, under the default (double backward) estimator."""
    return ValueError(
        "the closure ran backward() itself: with the default hessian_estimator='autograd' "
        "the optimizer needs the loss back, to run the create_graph backward that the "
        "Hessian-vector product differentiates. Either return the loss without calling "
        "backward(), or construct the optimizer with hessian_estimator='finite_difference', "
        "which takes a closure that calls backward()." + framework_advice())


def accumulated_gradients_error(count: int) -> RuntimeError:
    """Gradients a backward pass left before step(closure), which the closure cannot redo."""
    framework = caller_framework()
    if framework == "Lightning":
        way_out = (" Under Lightning this is accumulate_grad_batches > 1 (or a backward of "
                   "your own before the step): set accumulate_grad_batches=1 and raise the "
                   "batch size, or use manual optimization with "
                   "sassha_fast.integrations.lightning.SasshaLightningMixin and run both passes "
                   "over every micro-batch (docs/integrations.md).")
    else:
        way_out = (" Call optimizer.zero_grad() before step(closure) if they are not wanted; "
                   "to accumulate micro-batches, run the method-level loop over all of them "
                   "(docs/production.md, gradient accumulation)." + _ADVICE[framework])
    return RuntimeError(
        f"step(closure) found gradients on {count} parameter(s) that a backward pass "
        "accumulated since the last step. It does not use them: the iteration needs every "
        "micro-batch's loss again (SASSHA at the perturbed point, both optimizers for the "
        "Hessian estimate), and the closure recomputes only its own batch, so the step "
        "would mix micro-batches at different points or silently drop them." + way_out)


# Where the optimizer is stepped without a create_graph backward to offer: advice that names
# the default estimator says how to get one there.
LIGHTNING_AUTOMATIC = (
    "hessian_estimator='autograd' in Lightning's manual optimization (automatic optimization "
    "runs backward() without create_graph=True; docs/integrations.md)")
_DOUBLE_BACKWARD_ONLY_THROUGH: contextvars.ContextVar = contextvars.ContextVar(
    "sassha_double_backward_only_through", default=None)


@contextlib.contextmanager
def advising(double_backward_only_through: str):
    """Within the block, advice to use the default estimator names
    ``double_backward_only_through`` instead (an integration that cannot run it)."""
    token = _DOUBLE_BACKWARD_ONLY_THROUGH.set(double_backward_only_through)
    try:
        yield
    finally:
        _DOUBLE_BACKWARD_ONLY_THROUGH.reset(token)


def double_backward_advice() -> str:
    """How to use the default estimator from where the optimizer was called."""
    return _DOUBLE_BACKWARD_ONLY_THROUGH.get() or "hessian_estimator='autograd'"
