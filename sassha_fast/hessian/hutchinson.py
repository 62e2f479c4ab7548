"""Hutchinson estimate of the Hessian diagonal: h = mean over draws of z * (H z)."""
from typing import Dict, List

import torch
from torch import Tensor

from ..distributed.dtensor import draw_like, is_dtensor
from ..step import errors


class RademacherSource:
    """Seeded generators, one per device, so that every rank draws the same z.

    Draws follow the authors' recipe (``randint(0, 2) * 2.0 - 1.0``, one tensor per
    parameter in parameter order) so that a seeded run reproduces theirs."""

    def __init__(self, seed: int):
        self.seed = seed
        self._generators: Dict[torch.device, torch.Generator] = {}

    def generator(self, device: torch.device) -> torch.Generator:
        if device not in self._generators:
            self._generators[device] = torch.Generator(device).manual_seed(self.seed)
        return self._generators[device]

    def _draw(self, shape: torch.Size, device: torch.device, dtype: torch.dtype) -> Tensor:
        z = torch.randint(0, 2, shape, generator=self.generator(device), device=device) * 2.0 - 1.0
        return z if z.dtype == dtype else z.to(dtype)

    def generators(self) -> List[torch.Generator]:
        """The generators created so far (a CUDA graph that draws from one must register it)."""
        return list(self._generators.values())

    def draw(self, params: List[Tensor]) -> List[Tensor]:
        return [draw_like(p, lambda shape, p=p: self._draw(shape, p.device, p.dtype))
                if is_dtensor(p) else self._draw(p.shape, p.device, p.dtype) for p in params]

    def state_dict(self) -> Dict[str, Tensor]:
        return {str(device): g.get_state() for device, g in self._generators.items()}

    def load_state_dict(self, states: Dict[str, Tensor]) -> None:
        self._generators = {}
        for device_name, state in states.items():
            device = torch.device(device_name)
            if device.type == "cuda" and not torch.cuda.is_available():
                raise RuntimeError("the checkpoint holds a CUDA Rademacher generator state; "
                                   "CUDA is not available here")
            self.generator(device).set_state(state)


def hutchinson(grads: List[Tensor], params: List[Tensor], source: RademacherSource,
               n_samples: int, signed: bool = False) -> List[Tensor]:
    """The Hessian-diagonal estimate for ``params`` from gradients that carry their graph.

    With one draw and ``signed=False`` the estimate is returned as H z itself: the ops only
    use |h|, and |z * Hz| == |Hz| exactly because z is +-1 (estimates that are summed need
    ``signed=True``). A parameter the gradients do not depend on
    gets a zero estimate."""
    with_graph = [i for i, g in enumerate(grads) if g.requires_grad]
    if not with_graph:
        raise RuntimeError(
            "the Hessian is due at this step, but no gradient carries a graph:"
            + (errors.framework_advice() or
               " call loss.backward(create_graph=True) on iterations where "
               "optimizer.hessian_due is True, or let the optimizer run the iteration with "
               "optimizer.step(closure)"))
    estimate: List[Tensor] = []
    for draw in range(n_samples):
        zs = source.draw(params)
        hzs = torch.autograd.grad([grads[i] for i in with_graph], [params[i] for i in with_graph],
                                  grad_outputs=[zs[i] for i in with_graph],
                                  retain_graph=draw < n_samples - 1, allow_unused=True)
        by_index = dict(zip(with_graph, hzs))
        full = [by_index.get(i) if by_index.get(i) is not None else torch.zeros_like(p)
                for i, p in enumerate(params)]
        if n_samples == 1:
            return torch._foreach_mul(full, zs) if signed else full
        terms = torch._foreach_div(torch._foreach_mul(full, zs), float(n_samples))
        if draw == 0:
            estimate = terms
        else:
            torch._foreach_add_(estimate, terms)
    return estimate
