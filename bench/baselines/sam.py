"""SAM (Foret et al.'s sharpness-aware minimisation), written the way it is usually written
in PyTorch: one tensor at a time, the perturbation kept in the optimizer state, any torch
optimizer as the base. This is the baseline of the benchmarks, not part of the package.

Iteration::

    loss_fn(model(x), y).backward()
    sam.perturb()                         # p += e, e = rho * g1 / (||g1|| + 1e-12)
    loss_fn(model(x), y).backward()       # g2 at x + e
    sam.step()                            # p -= e, then the base optimizer's step with g2
    sam.zero_grad()
"""
from typing import Callable, Optional

import torch
from torch import Tensor

NORM_EPS = 1e-12


class SAM(torch.optim.Optimizer):
    def __init__(self, params, base_optimizer: Callable[..., torch.optim.Optimizer],
                 rho: float = 0.05, adaptive: bool = False, **base_kwargs):
        if rho < 0:
            raise ValueError(f"Invalid rho value: {rho}")
        super().__init__(params, dict(rho=rho, adaptive=adaptive))
        # The base optimizer shares the groups, so its hyper-parameters live there too.
        self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)

    def _params_with_grad(self):
        return [(group, p) for group in self.param_groups for p in group["params"]
                if p.grad is not None]

    def _grad_norm(self) -> Tensor:
        """||(|p| if adaptive else 1) * g|| over every parameter with a gradient."""
        norms = [((p.abs() * p.grad) if group["adaptive"] else p.grad).norm(p=2)
                 for group, p in self._params_with_grad()]
        return torch.stack(norms).norm(p=2)

    @torch.no_grad()
    def perturb(self, zero_grad: bool = True) -> None:
        norm = self._grad_norm()
        for group, p in self._params_with_grad():
            scale = group["rho"] / (norm + NORM_EPS)
            e = p.grad * scale
            if group["adaptive"]:
                e = e * p.pow(2)
            p.add_(e)
            self.state[p]["e"] = e
        if zero_grad:
            self.zero_grad(set_to_none=True)

    @torch.no_grad()
    def unperturb(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                e = self.state[p].pop("e", None)
                if e is not None:
                    p.sub_(e)

    def step(self, closure: Optional[Callable[[], Tensor]] = None) -> None:
        """Leave x + e and take the base optimizer's step with the gradients present."""
        if closure is not None:
            raise ValueError("SAM.step takes no closure: run the two passes around perturb()")
        self.unperturb()
        self.base_optimizer.step()
