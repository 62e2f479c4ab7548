"""Changes to an optimizer that only negative controls make: what a test must tell apart
from the real thing."""


def without_hessian_averaging(opt) -> None:
    """The optimizer averages the gradients across ranks as usual, but each rank keeps its
    own Hessian estimate."""
    average = opt._averager.average_

    def gradients_only(tensors):
        grads = {id(p.grad) for p in opt.get_params() if p.grad is not None}
        average([t for t in tensors if id(t) in grads])
    opt._averager.average_ = gradients_only


def averaging_only_in_step(opt) -> None:
    """``average_gradients()`` does nothing: what DDP could not average waits for ``step()``,
    so whatever reads the gradients before it (clipping) sees each rank's own."""
    opt.average_gradients = lambda: None
