"""Quality suite: the paper's label-noise experiment in small. A small CNN with BatchNorm
learns scikit-learn's digits with 0-60% symmetric label noise (bench/quality_data.py);
each method's learning rate is chosen from a grid on a held-out slice of the noisy
training set (seed 0), then that learning rate is trained with several seeds and scored
by its accuracy on the clean test set. Every run also records its wall time per epoch and
its test accuracy after every epoch (accuracy against wall-clock time).

Seeds change the initialisation and the batch order; the split and the noise of a noise
level are the same for every method and seed. Runs of the methods alternate (seed by
seed), so that load from other processes falls on all of them alike."""
import statistics
import time
from typing import Callable, Dict, List, NamedTuple, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from sassha_fast import MSASSHA, SASSHA

from . import protocol
from .quality_data import CLASSES, Split, make_split
from .sam import SAM

# Decoupled weight decay is passed as decay / lr, as the authors' scripts do, so that every
# method shrinks its weights by the same factor per step at its chosen learning rate.
DECAY = 5e-4
BATCH = 64


class Method(NamedTuple):
    name: str
    lrs: Tuple[float, ...]   # the grid the held-out slice chooses from (half a decade apart)
    build: Callable[[List[Tensor], float], torch.optim.Optimizer]
    kind: str                # bench/protocol.py's KINDS


METHODS = (
    Method("sgd", (0.03, 0.1, 0.3, 1.0),
           lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9, weight_decay=DECAY), "plain"),
    Method("adamw", (1e-3, 3e-3, 1e-2, 3e-2),
           lambda p, lr: torch.optim.AdamW(p, lr=lr, weight_decay=DECAY / lr), "plain"),
    Method("sam-sgd", (0.03, 0.1, 0.3, 1.0),
           lambda p, lr: SAM(p, torch.optim.SGD, rho=0.1, lr=lr, momentum=0.9,
                             weight_decay=DECAY), "sam"),
)


def _sassha_methods(suffix: str, **estimator) -> Tuple[Method, ...]:
    """SASSHA and M-SASSHA with the given Hessian estimator (the same settings otherwise)."""
    return (Method("sassha" + suffix, (0.03, 0.1, 0.3, 1.0),
                   lambda p, lr: SASSHA(p, lr=lr, rho=0.1, weight_decay=DECAY / lr,
                                        **estimator), "closure"),
            Method("msassha" + suffix, (0.03, 0.1, 0.3, 1.0),
                   lambda p, lr: MSASSHA(p, lr=lr, rho=0.3, hessian_power=0.5,
                                         weight_decay=DECAY / lr, **estimator), "closure"))


# The finite-difference rows (issue 20): the same settings, hessian_estimator changed.
METHODS = METHODS + _sassha_methods("") + _sassha_methods(
    "-fd", hessian_estimator="finite_difference")


class SmallCNN(nn.Module):
    """Three 3x3 convolutions with BatchNorm for 8x8 digits (~15k parameters)."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width),
            nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width), nn.ReLU())
        self.head = nn.Linear(2 * width, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


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
    with protocol.clean_point(opt):
        correct = (model(x).argmax(1) == y).sum().item()
    model.train()
    return correct / len(y)


def train(method: Method, lr: float, split: Split, epochs: int, seed: int,
          width: int = 16) -> RunResult:
    torch.manual_seed(seed)
    model = SmallCNN(width).train()
    opt = method.build(list(model.parameters()), lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    iteration = protocol.make_iteration(method.kind, opt,
                                        lambda x, y: F.cross_entropy(model(x), y))
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


class QualityProfile(NamedTuple):
    name: str
    noises: Tuple[float, ...]
    epochs: int
    seeds: int
    grid: bool          # False: each method's middle learning rate only (smoke)
    limit: int = 0      # images kept (0: all 1,797)
    width: int = 16


def quality_profile(name: str) -> QualityProfile:
    if name == "smoke":
        return QualityProfile(name, (0.0, 0.4), epochs=1, seeds=2, grid=False, limit=400,
                              width=4)
    if name == "quick":
        return QualityProfile(name, (0.0, 0.2, 0.4, 0.6), epochs=4, seeds=2, grid=True)
    if name == "full":
        return QualityProfile(name, (0.0, 0.2, 0.4, 0.6), epochs=10, seeds=3, grid=True)
    raise ValueError(f"unknown profile {name!r}")


def _grid(method: Method, profile: QualityProfile) -> Sequence[float]:
    return protocol.grid(method.lrs, profile.grid)


def plan_size(profile: QualityProfile, methods: Sequence[Method] = METHODS) -> int:
    """Training runs the profile makes (for the progress bar)."""
    return protocol.plan_size(methods, lambda m: _grid(m, profile),
                              profile.seeds) * len(profile.noises)


def run(profile: QualityProfile, methods: Sequence[Method] = METHODS,
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
            lambda m, lr, seed: train(m, lr, split, profile.epochs, seed, profile.width),
            score=lambda r: r.val_acc, seeds=profile.seeds, progress=progress,
            prefix=f"noise {noise:.0%} ")
        for method in methods:
            best, grid, runs = tuned[method.name]
            rows.append(_row(method.name, split, best, grid, runs, profile))
            curves.append(_curve(method.name, noise, runs))
    return rows, curves


def _row(name: str, split: Split, lr: float, grid: Dict[float, RunResult],
         runs: List[RunResult], profile: QualityProfile) -> dict:
    accs = [r.test_acc for r in runs]
    epochs = [s for r in runs for s in r.epoch_s]
    acc_mean, acc_std = protocol.mean_std(accs)
    return dict(noise=split.noise, method=name, lr=lr,
                grid_val_acc={f"{k:g}": v.val_acc for k, v in grid.items()},
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


def seconds_per_epoch(rows: List[dict]) -> Dict[str, float]:
    """Each method's median epoch time over the noise levels (same work at every level)."""
    out: Dict[str, List[float]] = {}
    for row in rows:
        out.setdefault(row["method"], []).append(row["epoch_s_median"])
    return {name: statistics.median(values) for name, values in out.items()}


def mean_std(row: dict) -> str:
    return f"{100 * row['test_acc_mean']:.1f} ± {100 * row['test_acc_std']:.1f}"


def main(argv=None) -> None:
    """``python -m bench.quality_suite --methods sassha,sassha-fd --profile quick --seeds 3
    --out DIR``: some of the methods only (``python -m bench --suite quality`` runs all),
    written as that command writes them."""
    import argparse
    import os
    import pathlib
    import sys

    from . import meta, quality_output
    parser = argparse.ArgumentParser(description=main.__doc__.split(":")[0])
    parser.add_argument("--methods", default=",".join(m.name for m in METHODS))
    parser.add_argument("--profile", default="quick", choices=("smoke", "quick", "full"))
    parser.add_argument("--seeds", type=int, help="override the profile's seed count")
    parser.add_argument("--out", type=pathlib.Path, required=True)
    args = parser.parse_args(argv)
    methods = protocol.select(METHODS, args.methods)
    profile = quality_profile(args.profile)
    if args.seeds:
        profile = profile._replace(seeds=args.seeds)
    info = meta.collect(torch.device("cpu"))
    rows, curves = run(profile, methods,
                       progress=lambda label: print(label, flush=True))
    info.update(profile=profile.name, seeds=profile.seeds, methods=args.methods,
                load_average_after=os.getloadavg(),
                command=" ".join(["python -m bench.quality_suite"]
                                 + (sys.argv[1:] if argv is None else list(argv))))
    written = quality_output.write_all(rows, curves, args.out, info, profile)
    print(quality_output.table_markdown(rows))
    print("wrote " + ", ".join(written))


if __name__ == "__main__":
    main()
