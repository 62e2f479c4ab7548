"""``python -m bench.studies.backend_agreement``: how far each backend's numbers are from the
reference backend's, and where they differ.

One ``SASSHA.step(closure)`` (a Hessian step), then ten more, on a batch of scikit-learn's
digits, for the two CNNs of ``bench.studies.floor_choice`` (``relu-fc`` has weights with exactly
zero Hessian entries, ``tanh-fc`` none), from the same initial weights with every backend
usable here (``relu-fc`` also with ``curvature_floor=0.01``). Prints, per backend: the
relative difference of the first pass's gradient norm (the perturbation's scale), the
largest parameter difference after the first step, the largest after eleven relative to
the largest parameter entry, the share of parameter entries bit-identical to the
reference's, and the steps each run skipped for inf/NaN. ``TRITON_INTERPRET=1`` adds the
triton backend on a CPU (slowly). ``--smoke`` (the test suite's check that the command
runs): two steps on ``tanh-fc`` only.
"""
import argparse
import warnings
from typing import Dict, List, Optional

import torch
from torch import Tensor, nn

import sassha_fast
from sassha_fast import backends, functional
from sassha_fast import SkippedStepWarning

from ..methods import PAPER_SETTINGS
from ..workloads.digits import random_label_split
from ..workloads.models import digits_fc_net

BATCH = 32


def trajectory(net: str, backend: str, steps: int, device: torch.device,
               curvature_floor: float) -> Dict[str, object]:
    x_train, y_train, _, _ = random_label_split(0.4, seed=0)
    torch.manual_seed(0)
    model = digits_fc_net(net).to(device)
    opt = sassha_fast.SASSHA(model.parameters(), backend=backend, **PAPER_SETTINGS["SASSHA"],
                             curvature_floor=curvature_floor)
    loss_fn = nn.CrossEntropyLoss()
    x, y = x_train[:BATCH].to(device), y_train[:BATCH].to(device)
    loss_fn(model(x), y).backward()
    grads = [p.grad for p in model.parameters()]
    norm = float(opt.ops(device, grads[0].dtype).global_norm(grads))
    model.zero_grad(set_to_none=True)
    after: List[List[Tensor]] = []
    for step in range(steps):
        xb = x_train[step * BATCH:(step + 1) * BATCH].to(device)
        yb = y_train[step * BATCH:(step + 1) * BATCH].to(device)
        opt.step(lambda: loss_fn(model(xb), yb))
        after.append([p.detach().cpu().clone() for p in model.parameters()])
    return {"norm": norm, "after": after, "skipped": opt.skipped_steps}


def runs_on(backend: str, device: torch.device) -> bool:
    try:
        functional.resolve(backend, device)
    except RuntimeError:
        return False
    return True


def largest_difference(a: List[Tensor], b: List[Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


def relative_difference(a: List[Tensor], b: List[Tensor]) -> float:
    """The largest difference relative to the largest reference entry."""
    return largest_difference(a, b) / max(float(y.abs().max()) for y in b)


def identical_share(a: List[Tensor], b: List[Tensor]) -> float:
    same = sum(int((x == y).sum()) for x, y in zip(a, b))
    return same / sum(x.numel() for x in a)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.studies.backend_agreement",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--smoke", action="store_true",
                        help="two steps on tanh-fc only: checks that the command runs")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    usable = [name for name in backends.BACKEND_MODULES
              if name != "reference" and runs_on(name, device)]
    steps = 2 if args.smoke else 11
    cases = (("tanh-fc", 0.0),) if args.smoke else (
        ("relu-fc", 0.0), ("relu-fc", 0.01), ("tanh-fc", 0.0))
    print(f"device {device}; SASSHA defaults, batch {BATCH} of digits; differences from the "
          "reference backend")
    print("| net | curvature_floor | backend | norm rel. diff | max abs diff, 1 step | "
          f"max rel. diff, {steps} steps | bit-identical entries, 1 step | {steps} steps | "
          "steps skipped for inf/NaN (reference, backend) |")
    print("| :--- | ---: | :--- | ---: | ---: | ---: | ---: | ---: | ---: |")
    # The last column counts the skips; their warnings would only interleave with the table.
    warnings.simplefilter("ignore", SkippedStepWarning)
    for net, floor in cases:
        want = trajectory(net, "reference", steps, device, floor)
        for backend in usable:
            got = trajectory(net, backend, steps, device, floor)
            relative = abs(got["norm"] - want["norm"]) / want["norm"]
            print(f"| {net} | {floor} | {backend} | {relative:.1e} | "
                  f"{largest_difference(got['after'][0], want['after'][0]):.1e} | "
                  f"{relative_difference(got['after'][-1], want['after'][-1]):.1e} | "
                  f"{identical_share(got['after'][0], want['after'][0]):.1%} | "
                  f"{identical_share(got['after'][-1], want['after'][-1]):.1%} | "
                  f"{want['skipped']}, {got['skipped']} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
