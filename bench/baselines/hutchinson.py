"""What Sophia-H and AdaHessian share: Hutchinson's estimate of the Hessian's diagonal,
``u * (H u)`` for a random probe ``u`` with E[u u^T] = I (so its expectation is diag(H)),
the Hessian-vector product taken by differentiating the gradients a second time.

Sophia's paper draws Gaussian probes, AdaHessian's Rademacher ones (for which u * u = 1:
the estimate is exact on a diagonal Hessian). Probes come from a generator the optimizer
owns, one draw per parameter in group order, so a run repeats with its seed."""
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

PROBES = ("gaussian", "rademacher")


class ProbeSource:
    """Seeded probes; the generator is made on the parameters' device at the first draw
    (a CPU generator cannot draw CUDA tensors)."""

    def __init__(self, kind: str, seed: int):
        if kind not in PROBES:
            raise ValueError(f"probe must be one of {PROBES}, got {kind!r}")
        self.kind, self.seed = kind, seed
        self._generator: Optional[torch.Generator] = None

    def draw(self, like: Tensor) -> Tensor:
        if self._generator is None:
            self._generator = torch.Generator(like.device).manual_seed(self.seed)
        if self.kind == "gaussian":
            return torch.randn(like.shape, generator=self._generator, device=like.device,
                               dtype=like.dtype)
        bits = torch.randint(0, 2, like.shape, generator=self._generator, device=like.device)
        return bits.to(like.dtype).mul_(2).sub_(1)


def trainable(param_groups) -> List[Tensor]:
    return [p for group in param_groups for p in group["params"] if p.requires_grad]


def each_parameter(optimizer: torch.optim.Optimizer, params: Sequence[Tensor],
                   grads: List[Tensor], estimates: Optional[List[Tensor]],
                   state_keys: Sequence[str]
                   ) -> Iterator[Tuple[dict, Tensor, Tensor, Optional[Tensor], List[Tensor]]]:
    """(group, parameter, gradient, estimate, its state tensors) of every parameter of
    ``params`` (what ``gradients`` was given), group by group: ``estimate`` is None on a step
    without one, and the state tensors named ``state_keys`` start at zeros."""
    found = dict(zip(params, zip(grads, estimates or [None] * len(params))))
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p not in found:
                continue
            state = optimizer.state[p]
            if not state:
                for key in state_keys:
                    state[key] = torch.zeros_like(p)
            grad, estimate = found[p]
            yield group, p, grad, estimate, [state[key] for key in state_keys]


def gradients(closure: Callable[[], Tensor], params: Sequence[Tensor],
              probes: Optional[ProbeSource]) -> Tuple[Tensor, List[Tensor],
                                                      Optional[List[Tensor]]]:
    """(loss, gradients, Hutchinson estimates or None). With ``probes`` the gradients keep
    their graph (create_graph) for the Hessian-vector product; without, one plain backward.
    A parameter the loss does not reach gets zeros, not an error."""
    if closure is None:
        raise ValueError("this optimizer needs step(closure): the closure returns the loss "
                         "(no backward), which the optimizer differentiates itself")
    with torch.enable_grad():
        loss = closure()
        grads = torch.autograd.grad(loss, params, create_graph=probes is not None,
                                    allow_unused=True, materialize_grads=True)
        if probes is None:
            return loss.detach(), list(grads), None
        vectors = [probes.draw(p) for p in params]
        # A gradient that does not depend on the parameters (a loss linear in them) has no
        # graph: it adds nothing to H u, and autograd refuses it as an output.
        curved = [i for i, g in enumerate(grads) if g.requires_grad]
        products = [torch.zeros_like(p) for p in params]
        if curved:
            found = torch.autograd.grad([grads[i] for i in curved], params,
                                        grad_outputs=[vectors[i] for i in curved],
                                        allow_unused=True, materialize_grads=True)
            products = list(found)
    estimates = [u * hu for u, hu in zip(vectors, products)]
    return loss.detach(), [g.detach() for g in grads], estimates
