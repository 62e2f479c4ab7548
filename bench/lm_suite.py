"""Learning rates (and knobs) of one's choice for the language-model suite's methods
(bench/suites/language_model.py), trained and scored as its grid's runs."""
import argparse
import time
from typing import List, Optional

import torch

from .harness.config import lm_profile
from .harness.protocol import Point, select
from .methods import LM_METHODS
from .suites.language_model import bits, prepare, train
from .workloads.corpus import load


def parse_knobs(text: str) -> tuple:
    """"rho=0.025,gamma=0.01" -> (("gamma", 0.01), ("rho", 0.025))."""
    pairs = [item.split("=", 1) for item in text.split(",") if item]
    if any(len(pair) != 2 for pair in pairs):
        raise SystemExit(f"--knobs takes NAME=VALUE pairs, comma-separated, not {text!r}")
    return tuple(sorted((name, float(value)) for name, value in pairs))


def main(argv: Optional[List[str]] = None) -> None:
    """``python -m bench.lm_suite --profile full --methods adamw,sam-adamw --lrs 1e-4,3e-4
    [--knobs rho=0.025]``: seed-0 runs at learning rates of one's choice, trained and scored
    as the grid's runs (to see whether a point chosen at the grid's edge, or carried from
    the quick profile's grid into the full one, hides a better one); prints each run's
    validation and test bits per byte, its seconds per training iteration and the run's
    wall time (evaluations included: what a grid point costs)."""
    parser = argparse.ArgumentParser(description=main.__doc__.split(":")[0])
    parser.add_argument("--profile", default="quick", choices=("smoke", "quick", "full"))
    parser.add_argument("--methods", default=",".join(m.name for m in LM_METHODS))
    parser.add_argument("--lrs", required=True, help="comma-separated learning rates")
    parser.add_argument("--knobs", default="",
                        help="NAME=VALUE pairs for every method named (rho for SAM and the "
                             "SASSHAs, gamma for Sophia-H); a knob left out takes the "
                             "catalog's default")
    args = parser.parse_args(argv)
    methods = select(LM_METHODS, args.methods)
    knobs = parse_knobs(args.knobs)
    for method in methods:
        unknown = {name for name, _ in knobs} - {name for name, _ in method.knobs}
        if unknown:
            raise SystemExit(f"{method.name} has no knob {', '.join(sorted(unknown))}")
    device = torch.device("cpu")
    profile = lm_profile(args.profile, device)
    torch.set_num_threads(profile.threads)
    data = prepare(load(train_bytes=profile.train_bytes), profile, device)
    print("| method | point | validation bits per byte | test bits per byte | skipped steps "
          "| s / iter | run s |")
    print("| :--- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for method in methods:
        for lr in (float(v) for v in args.lrs.split(",")):
            point = Point(lr, knobs)
            start = time.perf_counter()
            run = train(method, point, data, profile, 0, device)
            wall = time.perf_counter() - start
            scores = (f"{bits(run.val_loss):.3f} | {bits(run.test_loss):.3f}" if run.finite
                      else f"diverged ({run.stopped or 'non-finite weights'}) | -")
            per_iteration = run.train_s / max(1, run.iterations)
            print(f"| {method.name} | {point.label()} | {scores} | {run.skipped_steps} | "
                  f"{per_iteration:.4f} | {wall:.1f} |", flush=True)


if __name__ == "__main__":
    main()
