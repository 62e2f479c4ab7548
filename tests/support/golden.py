"""Replays of the loops in ../shared/golden/README.md, shared by the tests."""
import pathlib
from typing import Any, Callable, Dict, List

import torch
from torch import nn

from sassha_fast import MSASSHA, SASSHA, functional


class GoldenNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, kernel_size=3)
        self.fc1 = nn.Linear(48, 6)
        self.fc2 = nn.Linear(6, 4)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(torch.tanh(self.conv(x)).flatten(1))))


class ReplayedPower:
    """A scheduler that returns recorded powers, one per ``step()``."""

    def __init__(self, powers: List[float]):
        self.powers = list(powers)
        self.calls = 0

    def step(self) -> float:
        power = self.powers[self.calls]
        self.calls += 1
        return power


def load(path: pathlib.Path) -> Dict:
    return torch.load(path, weights_only=False)


def make(record: Dict, backend: str, dtype=torch.float32):
    model = GoldenNet()
    model.load_state_dict(record["init_state_dict"])
    model.to(dtype)
    kwargs = dict(record["kwargs"])
    if record["optimizer"] == "SASSHA":
        powers = [it["hessian_power"] for it in record["trajectory"]]
        opt = SASSHA(model.parameters(), hessian_power_scheduler=ReplayedPower(powers),
                     backend=backend, **kwargs)
    else:
        opt = MSASSHA(model.parameters(), backend=backend, **kwargs)
    return model, opt


def run_method_level(record: Dict, backend: str, iters: int = None):
    """The authors' loop verbatim; yields (loss, model, opt) after every iteration."""
    model, opt = make(record, backend)
    x, y = record["x"], record["y"]
    loss_fn = nn.CrossEntropyLoss()
    if record["optimizer"] == "MSASSHA":
        opt.move_up_to_momentumAscent()
    for _ in range(iters or record["iters"]):
        if record["optimizer"] == "SASSHA":
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.perturb_weights(zero_grad=True)
            loss_fn(model(x), y).backward(create_graph=True)
            opt.unperturb()
            opt.step()
            opt.zero_grad()
        else:
            loss = loss_fn(model(x), y)
            loss.backward(create_graph=True)
            opt.step()
            opt.zero_grad()
        yield loss.item(), model, opt


def run_one_call(record: Dict, backend: str, iters: int = None):
    model, opt = make(record, backend)
    x, y = record["x"], record["y"]
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(iters or record["iters"]):
        loss = opt.step(lambda: loss_fn(model(x), y))
        yield loss.item(), model, opt


def state_lists(record: Dict, opt) -> Dict[str, List[torch.Tensor]]:
    """The optimizer state under the golden file's names, in parameter order."""
    params = [p for g in opt.param_groups for p in g["params"]]
    names = (("exp_avg", "exp_hessian_diag") if record["optimizer"] == "SASSHA"
             else ("grad_momentum", "hess_momentum"))
    return {name: [opt.state[p][key] for p in params]
            for name, key in zip(names, ("exp_avg", "exp_hessian_diag"))}


def inject_wrong_update(monkeypatch, **changes: Callable[[Any], Any]) -> None:
    """Negative controls: every optimizer built afterwards calls its backend's update ops
    with the hyperparameters in ``changes`` replaced (``hessian_power=lambda v: v + 0.01``),
    a deliberate bug that the comparisons with the recorded files must catch."""
    resolve = functional.resolve

    def wrong(op: Callable) -> Callable:
        def call(*args, **kwargs):
            for name, change in changes.items():
                kwargs[name] = change(kwargs[name])
            return op(*args, **kwargs)
        return call

    def resolve_wrong(*args, **kwargs):
        ops = resolve(*args, **kwargs)
        return ops._replace(sassha_update=wrong(ops.sassha_update),
                            msassha_update=wrong(ops.msassha_update))

    monkeypatch.setattr(functional, "resolve", resolve_wrong)
