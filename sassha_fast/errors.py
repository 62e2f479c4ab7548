"""Errors from autograd that the optimizer can explain better than autograd can."""
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
