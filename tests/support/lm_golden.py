"""The loop of the authors' GPT-2 script (language_tasks/modeling/train_sassha.py), reduced
to the optimizer calls, on the golden network: shared by the recorder
(tests/support/record_lm_golden.py, run against their optimizer) and the golden test (run
against sassha_fast.lm). Micro-batches, rho warm-up, step(iter_num), the perturbed pass in
reverse micro-batch order and set_hessian() per micro-batch, as theirs."""
from typing import Callable, Dict, List

import torch
from torch import nn

# What the recorded run used (stored in the golden file as well).
SETTINGS = dict(iters=12, micro_batches=4, rho_warmup_iters=2, rho=0.05,
                kwargs=dict(lr=0.05, betas=(0.9, 0.99), weight_decay=1e-2, lazy_hessian=3,
                            eps=1e-4, seed=7))


class WarmupRho:
    """0 for the first ``warmup`` calls, then ``rho`` (the shape of their
    Rho_ConstantScheduler)."""

    def __init__(self, rho: float, warmup: int):
        self.rho, self.warmup, self.calls = rho, warmup, 0

    def step(self) -> float:
        self.calls += 1
        return 0.0 if self.calls <= self.warmup else self.rho


class PowerSchedule:
    """Powers from a list, one per step() (1 falling to 0.8, as their config's range)."""

    def __init__(self, powers: List[float]):
        self.powers, self.calls = list(powers), 0

    def step(self) -> float:
        self.calls += 1
        return self.powers[self.calls - 1]


def powers(iters: int) -> List[float]:
    return [1.0 - 0.2 * i / (iters - 1) for i in range(iters)]


def train(model: nn.Module, opt, x: torch.Tensor, y: torch.Tensor, settings: Dict,
          start: int = 0, after_iteration: Callable = None) -> List[float]:
    """Iterations ``start`` .. ``iters - 1`` of their loop; returns the losses of the last
    micro-batch of each first pass (what their script logs)."""
    loss_fn = nn.CrossEntropyLoss()
    n = settings["micro_batches"]
    xs, ys = x.chunk(n), y.chunk(n)
    lazy = settings["kwargs"]["lazy_hessian"]
    warmup = settings["rho_warmup_iters"]
    losses = []
    for iter_num in range(start, settings["iters"]):
        hessian = iter_num % lazy == 0
        if hessian:
            opt.zero_hessian()
        stored = []
        for xb, yb in zip(xs, ys):
            loss = loss_fn(model(xb), yb)
            stored.append((xb, yb))
            if iter_num > warmup or not hessian:
                (loss / n).backward()
            else:
                (loss / n).backward(create_graph=True)
                opt.set_hessian()
        opt._sync_gradient()
        if iter_num > warmup:
            opt.perturb_weights()
            opt.zero_grad(set_to_none=True)
            while stored:
                xb, yb = stored.pop()
                (loss_fn(model(xb), yb) / n).backward(create_graph=hessian)
                if hessian:
                    opt.set_hessian()
            opt.unperturb()
            opt._sync_gradient()
        opt.step(iter_num)
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if after_iteration is not None:
            after_iteration(iter_num, model, opt)
    return losses
