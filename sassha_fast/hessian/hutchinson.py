"""Hutchinson estimate of the Hessian diagonal: h = mean over draws of z * (H z).

The Rademacher vectors z come from a ``RademacherSource`` drawn with one of two recipes
(docs/algorithm.md section 4): ``authors_signs``, the authors' draw, which the double
backward keeps so that seeded runs reproduce theirs, and ``PackedSigns``, 64 signs per
generator word, which the finite difference uses (it has no authors' run to match)."""
import math
from typing import Callable, Dict, List, Tuple

import torch
from torch import Tensor

from ..distributed.dtensor import draw_like, is_dtensor
from ..step import errors

# (shape, generator, device, dtype) -> a tensor of +-1 in ``dtype``.
SignRecipe = Callable[[torch.Size, torch.Generator, torch.device, torch.dtype], Tensor]


def authors_signs(shape: torch.Size, generator: torch.Generator, device: torch.device,
                  dtype: torch.dtype) -> Tensor:
    """The authors' draw, ``randint(0, 2) * 2.0 - 1.0``: one generator call per sign (on a
    CPU a serial Mersenne Twister)."""
    z = torch.randint(0, 2, shape, generator=generator, device=device) * 2.0 - 1.0
    return z if z.dtype == dtype else z.to(dtype)


class PackedSigns:
    """Signs from the bits of 64-bit words of the generator: 32 times fewer generator
    outputs than ``authors_signs`` (a word is two 32-bit Mersenne Twister outputs on a CPU,
    where they are drawn serially), each byte turned into its 8 signs by a parallel lookup
    in a 256 x 8 table of +-1. Bit j of byte b (in memory order) gives sign 8 b + j, +1
    where it is set; the last word's spare bits are dropped."""

    def __init__(self):
        self._tables: Dict[Tuple[torch.device, torch.dtype], Tensor] = {}

    def _table(self, device: torch.device, dtype: torch.dtype) -> Tensor:
        # Kept: rebuilding it costs a few small ops per parameter and draw.
        if (device, dtype) not in self._tables:
            byte = torch.arange(256, device=device).unsqueeze(1)
            bits = (byte >> torch.arange(8, device=device)) & 1
            self._tables[(device, dtype)] = (bits * 2 - 1).to(dtype)
        return self._tables[(device, dtype)]

    def __call__(self, shape: torch.Size, generator: torch.Generator, device: torch.device,
                 dtype: torch.dtype) -> Tensor:
        numel = math.prod(shape)
        words = torch.empty(-(-numel // 64), dtype=torch.int64, device=device)
        # From the int64 minimum with no upper end: all 64 bits random (random_() alone
        # draws below 2**63, a sign bit always 0).
        words.random_(torch.iinfo(torch.int64).min, None, generator=generator)
        signs = self._table(device, dtype).index_select(0, words.view(torch.uint8).int())
        return signs.view(-1)[:numel].view(shape)


class RademacherSource:
    """Seeded generators, one per device, so that every rank draws the same z; ``signs``
    turns a generator's output into a tensor of signs (the authors' recipe unless told).

    One tensor per parameter, in parameter order, so that with ``authors_signs`` a seeded
    run reproduces the authors'. The saved states are the generators' whatever the recipe,
    so a checkpoint loads into an optimizer with either estimator."""

    def __init__(self, seed: int, signs: SignRecipe = authors_signs):
        self.seed = seed
        self.signs = signs
        self._generators: Dict[torch.device, torch.Generator] = {}

    def generator(self, device: torch.device) -> torch.Generator:
        if device not in self._generators:
            self._generators[device] = torch.Generator(device).manual_seed(self.seed)
        return self._generators[device]

    def _draw(self, shape: torch.Size, device: torch.device, dtype: torch.dtype) -> Tensor:
        return self.signs(shape, self.generator(device), device, dtype)

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
