"""AdaHessian (Yao et al. 2021, "ADAHESSIAN: An Adaptive Second Order Optimizer for Machine
Learning", Algorithm 1 with the spatial averaging of its section 3), written from the paper
as a baseline of the benchmarks, not part of the package.

Per parameter, at every step t (from 1), z a Rademacher probe::

    D = z * (H z)                            Hutchinson's estimate of diag(H)
    D = spatial_average(D)                   a convolution kernel's estimate averaged over
                                             its spatial positions (per output and input
                                             channel); other tensors as they are
    m = b1 m + (1 - b1) g                    momentum of the gradient
    v = b2 v + (1 - b2) D * D                momentum of the squared diagonal
    p = p - lr * wd * p                      decoupled weight decay
    p = p - lr * (m / (1 - b1^t)) / ((sqrt(v / (1 - b2^t)))^k + eps)

k is the Hessian power (1 in the paper's main results; 0 < k <= 1). The spatial average is
of the signed estimate, as the paper's equation writes it, before it is squared.

Iteration: ``opt.step(closure)``, the closure returning the loss without a backward; the
optimizer runs the backward with create_graph (every step estimates D)."""
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor

from .hutchinson import ProbeSource, each_parameter, gradients, trainable

# Weights of at least this many dimensions are convolution kernels (out, in, *spatial):
# Conv2d's are 4-d. A Linear weight (2-d) or a bias (1-d) is not averaged.
KERNEL_DIMS = 3


def spatial_average(estimate: Tensor) -> Tensor:
    """A kernel's estimate averaged over its spatial dimensions, broadcast back."""
    if estimate.dim() < KERNEL_DIMS:
        return estimate
    spatial = tuple(range(2, estimate.dim()))
    return estimate.mean(dim=spatial, keepdim=True).expand_as(estimate)


class AdaHessian(torch.optim.Optimizer):
    # The authors' documented defaults (eps 1e-4, not Adam's 1e-8: a near-zero curvature
    # would otherwise take a step of lr / 1e-8).
    def __init__(self, params, lr: float = 0.15, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-4, weight_decay: float = 0.0, hessian_power: float = 1.0,
                 seed: int = 0):
        if lr < 0 or eps <= 0 or weight_decay < 0 or not 0 < hessian_power <= 1:
            raise ValueError(f"invalid AdaHessian settings lr={lr} eps={eps} weight_decay="
                             f"{weight_decay} hessian_power={hessian_power}")
        if not all(0 <= b < 1 for b in betas):
            raise ValueError(f"invalid betas {betas}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      hessian_power=hessian_power))
        self.probes = ProbeSource("rademacher", seed)
        self.steps = 0

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Tensor]] = None) -> Tensor:
        params = trainable(self.param_groups)
        loss, grads, estimates = gradients(closure, params, self.probes)
        self.steps += 1
        t = self.steps
        for group, p, grad, estimate, (m, v) in each_parameter(self, params, grads, estimates,
                                                                ("m", "v")):
            beta1, beta2 = group["betas"]
            diagonal = spatial_average(estimate)
            m.lerp_(grad, 1 - beta1)
            v.mul_(beta2).addcmul_(diagonal, diagonal, value=1 - beta2)
            root = (v / (1 - beta2 ** t)).sqrt_().pow_(group["hessian_power"])
            p.mul_(1 - group["lr"] * group["weight_decay"])
            p.addcdiv_(m, root.add_(group["eps"]), value=-group["lr"] / (1 - beta1 ** t))
        return loss
