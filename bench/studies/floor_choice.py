"""``python -m bench.studies.floor_choice``: the measurement behind ``curvature_floor``.

Trains small CNNs on scikit-learn's bundled digits (8x8 images, 1257 for training, 540 held
out; a fraction of the training labels replaced by random classes) with SASSHA's defaults
but the learning rate, and prints the held-out accuracy of each safeguard over several
seeds. ``relu-fc`` has a hidden fully-connected ReLU layer before the classifier: units
dead on the Hessian batch give exactly zero Hessian entries, and with the default (no
safeguard) it collapses to chance. ``tanh-fc`` is the same network with tanh (no dead
units), a healthy one that a safeguard must not hurt.

Safeguards compared:
  off        the authors' behaviour (the package's default);
  floor=F    ``SASSHA(curvature_floor=F)``: D >= F * mean(D) per tensor after each EMA;
  bound=T    a per-tensor bound on the step, ||w_new - w|| <= T * ||w|| (prototyped here
             after each step, from a copy of the parameters; not in the package).
"""
import argparse
import pprint
import statistics
import time
from typing import Callable, Dict, List, NamedTuple, Optional

import torch
from torch import Tensor, nn

import sassha_fast

from ..methods import PAPER_SETTINGS
from ..workloads.digits import RANDOM_LABEL_TRAIN, random_label_split
from ..workloads.models import digits_fc_net

BATCH = 32


class Case(NamedTuple):
    name: str
    net: str
    noise: float
    lr: float


CASES = {
    "relu-fc-noise": Case("relu-fc-noise", "relu-fc", 0.4, 0.15),
    "relu-fc-clean": Case("relu-fc-clean", "relu-fc", 0.0, 0.3),
    "tanh-fc-noise": Case("tanh-fc-noise", "tanh-fc", 0.4, 0.15),
    "tanh-fc-clean": Case("tanh-fc-clean", "tanh-fc", 0.0, 0.15),
}
SAFEGUARDS = ("off", "floor=0.01", "bound=0.1")


def bounded(params: List[Tensor], bound: float) -> Callable[[Callable], None]:
    """The ``bound=T`` candidate: runs a step, then shrinks each tensor's change to at most
    T * ||w|| (with ||w|| taken as at least 1e-3, so zero-initialised tensors can move)."""
    def run(step: Callable) -> None:
        before = [p.detach().clone() for p in params]
        step()
        with torch.no_grad():
            for p, old in zip(params, before):
                change = p - old
                limit = bound * max(old.norm().item(), 1e-3)
                size = change.norm().item()
                if size > limit:
                    p.copy_(old + change * (limit / size))
    return run


def train(case: Case, safeguard: str, seed: int, epochs: int,
          max_steps: Optional[int] = None) -> Dict[str, object]:
    x_train, y_train, x_test, y_test = random_label_split(case.noise, seed)
    torch.manual_seed(seed)
    model = digits_fc_net(case.net)
    kind, _, value = safeguard.partition("=")
    opt = sassha_fast.SASSHA(model.parameters(), lr=case.lr, **PAPER_SETTINGS["SASSHA"],
                             curvature_floor=float(value) if kind == "floor" else 0.0)
    run = bounded(list(model.parameters()), float(value)) if kind == "bound" else \
        (lambda step: step())
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(seed)
    batches = [order[start:start + BATCH] for order in
               (torch.randperm(RANDOM_LABEL_TRAIN, generator=generator)
                for _ in range(epochs))
               for start in range(0, RANDOM_LABEL_TRAIN, BATCH)]
    for index in batches[:max_steps]:
        x, y = x_train[index], y_train[index]
        run(lambda: opt.step(lambda: loss_fn(model(x), y)))
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
        largest = max(p.norm().item() for p in model.parameters())
    return {"accuracy": accuracy, "skipped": opt.skipped_steps, "largest_norm": largest,
            "diagnostics": opt.diagnostics()}


def summary(rows: List[Dict[str, float]]) -> str:
    accuracies = [100 * r["accuracy"] for r in rows]
    spread = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
    return f"{statistics.mean(accuracies):5.1f} ± {spread:4.1f}"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.studies.floor_choice",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CASES),
                        help="comma-separated, among " + ", ".join(CASES))
    parser.add_argument("--safeguards", default=",".join(SAFEGUARDS),
                        help="comma-separated, e.g. off,floor=0.01,bound=0.1")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--smoke", action="store_true",
                        help="the first case only, one seed, 5 steps: checks that the "
                             "command runs")
    parser.add_argument("--diagnostics", type=int, default=None, metavar="STEPS",
                        help="print opt.diagnostics() after STEPS steps of each case and "
                             "safeguard (seed 0) instead of the table")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cases = [CASES[name] for name in args.cases.split(",")]
    safeguards = args.safeguards.split(",")
    max_steps = None
    if args.smoke:
        cases, args.seeds, max_steps = cases[:1], 1, 5
    if args.diagnostics is not None:
        for case in cases:
            for safeguard in safeguards:
                print(f"{case.name}, {safeguard}, after {args.diagnostics} steps:")
                pprint.pprint(train(case, safeguard, 0, args.epochs,
                                    args.diagnostics)["diagnostics"], sort_dicts=False)
        return 0
    print(f"held-out accuracy (%), mean ± std over {args.seeds} seeds, {args.epochs} epochs "
          f"of batch {BATCH}; SASSHA defaults but lr; [skipped steps in total, largest "
          "parameter norm at the end, worst seed]")
    print("| case (net, label noise, lr) | " + " | ".join(safeguards) + " |")
    print("| :--- |" + " ---: |" * len(safeguards))
    started = time.time()
    for case in cases:
        cells = []
        for safeguard in safeguards:
            rows = [train(case, safeguard, seed, args.epochs, max_steps)
                    for seed in range(args.seeds)]
            skipped = sum(r["skipped"] for r in rows)
            largest = max(r["largest_norm"] for r in rows)
            cells.append(f"{summary(rows)} [{skipped}, {largest:.3g}]")
        print(f"| {case.net}, {case.noise:.0%}, {case.lr} | " + " | ".join(cells) + " |",
              flush=True)
    print(f"({time.time() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
