"""Quality suite: the paper's label-noise experiment in small. A small CNN with BatchNorm
learns scikit-learn's digits with 0-60% symmetric label noise (bench/workloads/digits.py);
each method's learning rate (and its knob, if it has one: rho, Sophia-H's gamma) is chosen
from a grid on a held-out slice of the noisy training set (seed 0), then that point is
trained with several seeds and scored by its accuracy on the clean test set. Every run also records its wall time per epoch and
its test accuracy after every epoch (accuracy against wall-clock time).

Seeds change the initialisation and the batch order; the split and the noise of a noise
level are the same for every method and seed. Runs of the methods alternate (seed by
seed), so that load from other processes falls on all of them alike."""
import statistics
import time
from typing import Callable, List, NamedTuple, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..harness import protocol
from ..harness.config import QualityProfile
from ..methods import QUALITY_METHODS, Method, clean_point, make_iteration
from ..workloads.digits import Split, make_split
from ..workloads.models import SmallCNN

BATCH = 64


class RunResult(NamedTuple):
    val_acc: float             # on the noisy held-out slice, after the last epoch
    test_acc: float            # on the clean test set, after the last epoch
    test_curve: List[float]    # clean test accuracy after each epoch
    epoch_s: List[float]       # training time of each epoch (evaluation excluded)
    finite: bool               # False: the parameters became inf/NaN


@torch.no_grad()
def accuracy(model: nn.Module, opt, x: Tensor, y: Tensor) -> float:
    """At the clean point (M-SASSHA trains at a perturbed one), BatchNorm in eval mode."""
    model.eval()
    with clean_point(opt):
        correct = (model(x).argmax(1) == y).sum().item()
    model.train()
    return correct / len(y)


def train(method: Method, point: protocol.Point, split: Split, epochs: int, seed: int,
          width: int = 16) -> RunResult:
    torch.manual_seed(seed)
    model = SmallCNN(width).train()
    opt = method.build(list(model.parameters()), point.lr, **point.settings())
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    iteration = make_iteration(method.kind, opt, lambda x, y: F.cross_entropy(model(x), y))
    order_generator = torch.Generator().manual_seed(seed)
    curve, epoch_s = [], []
    for _ in range(epochs):
        order = torch.randperm(len(split.fit_y), generator=order_generator)
        start = time.perf_counter()
        for i in range(0, len(order) - BATCH + 1, BATCH):  # full batches only (BatchNorm)
            batch = order[i:i + BATCH]
            iteration(split.fit_x[batch], split.fit_y[batch])
        scheduler.step()
        epoch_s.append(time.perf_counter() - start)
        curve.append(accuracy(model, opt, split.test_x, split.test_y))
    finite = all(bool(torch.isfinite(p).all()) for p in model.parameters())
    return RunResult(accuracy(model, opt, split.val_x, split.val_y), curve[-1], curve, epoch_s,
                     finite)


def _grid(method: Method, profile: QualityProfile) -> Sequence[protocol.Point]:
    return protocol.points(method, profile.grid)


def plan_size(profile: QualityProfile, methods: Sequence[Method] = QUALITY_METHODS) -> int:
    """Training runs the profile makes (for the progress bar)."""
    return protocol.plan_size(methods, lambda m: _grid(m, profile),
                              profile.seeds) * len(profile.noises)


def run(profile: QualityProfile, methods: Sequence[Method] = QUALITY_METHODS,
        progress: Callable[[str], None] = lambda label: None) -> Tuple[List[dict], List[dict]]:
    """(one row per noise level and method, one curve per noise level and method), on one
    thread: this model's ops are too small to gain from more, and on a shared machine
    extra threads wait on each other (measured here: 12 s an epoch on 2 threads under
    load, 0.2 s on one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(profile, methods, progress)
    finally:
        torch.set_num_threads(threads)


def _run(profile: QualityProfile, methods: Sequence[Method],
         progress: Callable[[str], None]) -> Tuple[List[dict], List[dict]]:
    rows, curves = [], []
    for noise in profile.noises:
        split = make_split(noise, limit=profile.limit)
        tuned = protocol.tune_then_repeat(
            methods, lambda m: _grid(m, profile),
            # ``train`` looked up at call time: the tests replace it
            lambda m, point, seed: train(m, point, split, profile.epochs, seed,
                                         profile.width),
            score=lambda r: r.val_acc, seeds=profile.seeds, progress=progress,
            prefix=f"noise {noise:.0%} ")
        for method in methods:
            rows.append(_row(method.name, split, tuned[method.name], profile))
            curves.append(_curve(method.name, noise, tuned[method.name].runs))
    return rows, curves


def _row(name: str, split: Split, tuned: protocol.Tuned, profile: QualityProfile) -> dict:
    runs = tuned.runs
    accs = [r.test_acc for r in runs]
    epochs = [s for r in runs for s in r.epoch_s]
    acc_mean, acc_std = protocol.mean_std(accs)
    return dict(noise=split.noise, method=name, lr=tuned.lr, knobs=tuned.point.settings(),
                chosen=tuned.point.label(),
                grid_val_acc={k.label(): v.val_acc for k, v in tuned.grid.items()},
                test_acc_mean=acc_mean, test_acc_std=acc_std, test_accs=accs,
                diverged=sum(not r.finite for r in runs),
                epoch_s_median=statistics.median(epochs), seeds=len(runs),
                epochs=profile.epochs, train_size=len(split.fit_y), val_size=len(split.val_y),
                test_size=len(split.test_y), flipped=split.flipped)


def _curve(name: str, noise: float, runs: List[RunResult]) -> dict:
    """Mean over seeds of the test accuracy after each epoch and of the time spent so far."""
    elapsed = [[sum(r.epoch_s[:e + 1]) for e in range(len(r.epoch_s))] for r in runs]
    return dict(noise=noise, method=name, elapsed_s=protocol.pointwise_mean(elapsed),
                test_acc=protocol.pointwise_mean([r.test_curve for r in runs]))
