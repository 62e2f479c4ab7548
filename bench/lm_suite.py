"""Learning rates (and knobs) of one's choice for the language-model suite's methods
(bench/suites/language_model.py), trained and scored as its grid's runs."""
import argparse
import time
from typing import List, Optional

import torch

from .harness.config import lm_profile
from .harness.protocol import Point, mean_std, select
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
    [--knobs rho=0.025] [--seeds 3]``: runs at learning rates of one's choice, trained and
    scored as the grid's runs (seed 0; to see whether a point chosen at the grid's edge, or
    carried from the quick profile's grid into the full one, hides a better one), and with
    ``--seeds`` as the chosen points' (seeds 0, 1, ...); prints each run's validation and
    test bits per byte, its seconds per training iteration and the run's wall time
    (evaluations included: what a grid point costs), then with several seeds each point's
    mean ± std of the test bits per byte over the seeds that stayed finite."""
    parser = argparse.ArgumentParser(description=main.__doc__.split(":")[0])
    parser.add_argument("--profile", default="quick", choices=("smoke", "quick", "full"))
    parser.add_argument("--methods", default=",".join(m.name for m in LM_METHODS))
    parser.add_argument("--lrs", required=True, help="comma-separated learning rates")
    parser.add_argument("--knobs", default="",
                        help="NAME=VALUE pairs for every method named (rho for SAM and the "
                             "SASSHAs, gamma for Sophia-H); a knob left out takes the "
                             "catalog's default")
    parser.add_argument("--seeds", type=int, default=1,
                        help="seeds 0 .. N-1 at every point (default 1: seed 0, as the grid)")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        raise SystemExit(f"--seeds takes a count of at least 1, not {args.seeds}")
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
    print("| method | point | seed | validation bits per byte | test bits per byte "
          "| skipped steps | s / iter | run s |")
    print("| :--- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    per_point = []
    for method in methods:
        for lr in (float(v) for v in args.lrs.split(",")):
            point = Point(lr, knobs)
            tests = []
            for seed in range(args.seeds):
                start = time.perf_counter()
                run = train(method, point, data, profile, seed, device)
                wall = time.perf_counter() - start
                if run.finite:
                    tests.append(bits(run.test_loss))
                scores = (f"{bits(run.val_loss):.3f} | {bits(run.test_loss):.3f}" if run.finite
                          else f"diverged ({run.stopped or 'non-finite weights'}) | -")
                per_iteration = run.train_s / max(1, run.iterations)
                print(f"| {method.name} | {point.label()} | {seed} | {scores} | "
                      f"{run.skipped_steps} | {per_iteration:.4f} | {wall:.1f} |", flush=True)
            per_point.append((method.name, point.label(), tests))
    if args.seeds > 1:
        print("\n| method | point | test bits per byte, mean ± std | finite seeds |")
        print("| :--- | ---: | ---: | ---: |")
        for name, label, tests in per_point:
            spread = "{:.3f} ± {:.3f}".format(*mean_std(tests)) if tests else "-"
            print(f"| {name} | {label} | {spread} | {len(tests)} of {args.seeds} |")


if __name__ == "__main__":
    main()
