"""Sophia-H (Liu et al. 2023, "Sophia: A Scalable Stochastic Second-order Optimizer for
Language Model Pre-training", Algorithm 3 with the Hutchinson estimator of its Algorithm 1),
written from the paper as a baseline of the benchmarks, not part of the package.

Per parameter, at step t (from 1), with k the Hessian interval::

    m = b1 m + (1 - b1) g
    if t % k == 1 (t = 1, k+1, 2k+1, ...):   h = b2 h + (1 - b2) u * (H u),  u ~ N(0, I)
    p = p - lr * wd * p                                   (decoupled weight decay)
    p = p - lr * clip(m / max(gamma * h, eps), -1, 1)     (per coordinate)

h starts at 0 and has no bias correction (the paper's h_{1-k} = 0), so the first steps
mostly clip: each coordinate then moves by lr * sign(m). A coordinate whose estimate is
negative or tiny is floored at eps and clips too. ``gamma`` is what the SASSHA paper's
search space calls Sophia-H's "clipping threshold": the paper's first version wrote the
update as clip(m / max(h, eps), rho), which is rho * clip(m / max(rho h, rho eps), 1), this
form with gamma = rho at learning rate lr / rho.

Iteration: ``opt.step(closure)``, the closure returning the loss without a backward; the
optimizer runs the backward (with create_graph on the iterations that estimate h)."""
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor

from .hutchinson import ProbeSource, each_parameter, gradients, trainable


class SophiaH(torch.optim.Optimizer):
    # The paper's GPT-2 settings (gamma 0.01 for Sophia-H); the suites tune lr and gamma.
    def __init__(self, params, lr: float = 1e-4, betas: Tuple[float, float] = (0.96, 0.99),
                 gamma: float = 0.01, eps: float = 1e-12, weight_decay: float = 0.1,
                 hessian_interval: int = 10, seed: int = 0, probe: str = "gaussian"):
        if lr < 0 or gamma <= 0 or eps <= 0 or weight_decay < 0:
            raise ValueError(f"invalid Sophia-H settings lr={lr} gamma={gamma} eps={eps} "
                             f"weight_decay={weight_decay}")
        if not all(0 <= b < 1 for b in betas) or hessian_interval < 1:
            raise ValueError(f"invalid betas {betas} or hessian_interval {hessian_interval}")
        super().__init__(params, dict(lr=lr, betas=betas, gamma=gamma, eps=eps,
                                      weight_decay=weight_decay))
        self.hessian_interval = hessian_interval
        self.probes = ProbeSource(probe, seed)
        self.steps = 0

    def hessian_due(self) -> bool:
        """The estimate is refreshed on steps 1, k+1, 2k+1, ... (the count before this step
        a multiple of k)."""
        return self.steps % self.hessian_interval == 0

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Tensor]] = None) -> Tensor:
        params = trainable(self.param_groups)
        due = self.hessian_due()
        loss, grads, estimates = gradients(closure, params, self.probes if due else None)
        self.steps += 1
        for group, p, grad, estimate, (m, h) in each_parameter(self, params, grads, estimates,
                                                                ("m", "h")):
            beta1, beta2 = group["betas"]
            m.lerp_(grad, 1 - beta1)
            if estimate is not None:
                h.lerp_(estimate, 1 - beta2)
            p.mul_(1 - group["lr"] * group["weight_decay"])
            ratio = m / (group["gamma"] * h).clamp(min=group["eps"])
            p.add_(ratio.clamp_(-1.0, 1.0), alpha=-group["lr"])
        return loss
