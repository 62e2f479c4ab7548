"""Weights without a curvature estimate, over seeds: does SASSHA's default (the authors':
an entry whose Hessian average is exactly 0 steps by lr * m / eps) diverge where the opt-in
``curvature_floor`` or the finite-difference estimator does not?

A byte-level GPT (the language-model suite's quick CPU size) trained on fresh random windows
of the standard library at SASSHA's usual settings (bench/methods.py's ``SASSHA_TRAIN`` and
the paper's rho), for each seed and each configuration. With an output layer of its own
(``--head untied``, the default) an embedding row gets a gradient only from batches holding
its byte: rows of bytes absent from every Hessian step's batch get gradients later but no
curvature, the mechanism this measures; with the suite's tied head every row gets curvature
from the softmax.
Prints one row per run (final training loss, skipped steps, how the run ended, the most
zero-curvature entries seen at a Hessian step) and a summary per configuration.

    python -m bench.studies.zero_curvature                 # 8 seeds, 150 iterations, untied
    python -m bench.studies.zero_curvature --head tied     # the language-model suite's GPT
    python -m bench.studies.zero_curvature --smoke         # the plumbing, in seconds
"""
import argparse
import math
import time
import warnings
from typing import Dict, List, NamedTuple

import torch
import torch.nn.functional as F

from sassha_fast import SASSHA, SkippedStepWarning
from sassha_fast.step.diagnostics import zero_curvature_entries

from ..harness.config import lm_profile
from ..methods import PAPER_SETTINGS, SASSHA_TRAIN
from ..workloads.corpus import load, random_batch
from ..workloads.models import GPT

CONFIGURATIONS: Dict[str, dict] = {
    "default": dict(hessian_estimator="autograd"),
    "curvature_floor=0.01": dict(hessian_estimator="autograd", curvature_floor=0.01),
    "finite_difference": dict(hessian_estimator="finite_difference"),
}


class Run(NamedTuple):
    configuration: str
    seed: int
    final_loss: float
    skipped: int
    ended: str             # "trained", or why it stopped
    zero_curvature: int    # the most entries with D == 0 and m != 0 after any step


def zero_curvature(opt) -> int:
    return sum(int(zero_curvature_entries(s)) for s in opt.state.values()
               if "exp_hessian_diag" in s)


def train(configuration: str, seed: int, stream: torch.Tensor, iterations: int, profile,
          tied: bool) -> Run:
    torch.manual_seed(seed)
    attention = "sdpa" if CONFIGURATIONS[configuration]["hessian_estimator"] != "autograd" \
        else "manual"
    model = GPT(profile.gpt(attention)._replace(tied=tied)).train()
    opt = SASSHA(model.parameters(), **SASSHA_TRAIN, **PAPER_SETTINGS["SASSHA"],
                 **CONFIGURATIONS[configuration])
    batches = torch.Generator().manual_seed(seed)
    loss, ended, most = math.nan, "trained", 0
    for step in range(iterations):
        x, y = random_batch(stream, profile.batch, profile.context, batches)
        try:
            loss = float(opt.step(lambda: F.cross_entropy(model(x).flatten(0, 1),
                                                          y.flatten())))
        except FloatingPointError as exc:
            ended = f"stopped at iteration {step + 1}: " + str(exc).split(".")[0]
            break
        most = max(most, zero_curvature(opt))
    if ended == "trained" and not all(bool(torch.isfinite(p).all())
                                      for p in model.parameters()):
        ended = "non-finite weights"
    return Run(configuration, seed, loss, opt.skipped_steps, ended, most)


def diverged(run: Run) -> bool:
    return run.ended != "trained" or not math.isfinite(run.final_loss) or run.final_loss > 10


def report(runs: List[Run]) -> str:
    lines = ["| configuration | seed | final training loss | skipped steps | ended | "
             "most zero-curvature entries |", "|---|---|---|---|---|---|"]
    lines += [f"| {r.configuration} | {r.seed} | {r.final_loss:.3f} | {r.skipped} | {r.ended} "
              f"| {r.zero_curvature:,} |" for r in runs]
    lines.append("")
    for name in CONFIGURATIONS:
        mine = [r for r in runs if r.configuration == name]
        bad = [r.seed for r in mine if diverged(r)]
        good = [r.final_loss for r in mine if not diverged(r)]
        mean = sum(good) / len(good) if good else math.nan
        lines.append(f"- {name}: {len(bad)} of {len(mine)} seeds diverged"
                     + (f" (seeds {bad})" if bad else "")
                     + f"; mean final loss of the others {mean:.3f}")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="2 seeds, 6 iterations, tiny GPT")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=150)
    parser.add_argument("--head", choices=("untied", "tied"), default="untied")
    parser.add_argument("--out", help="also write the table to this Markdown file")
    args = parser.parse_args(argv)
    profile = lm_profile("smoke" if args.smoke else "quick", torch.device("cpu"))
    seeds, iterations = (2, 6) if args.smoke else (args.seeds, args.iterations)
    torch.set_num_threads(profile.threads)
    stream = load(train_bytes=profile.train_bytes).streams["train"]
    runs, start = [], time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedStepWarning)
        for seed in range(seeds):
            for name in CONFIGURATIONS:
                runs.append(train(name, seed, stream, iterations, profile,
                                  tied=args.head == "tied"))
                print(f"{name} seed {seed}: {runs[-1].ended}, loss {runs[-1].final_loss:.3f}",
                      flush=True)
    table = report(runs)
    print(table)
    print(f"({len(runs)} runs, {iterations} iterations each, "
          f"{time.perf_counter() - start:.0f} s)")
    if args.out:
        with open(args.out, "w") as f:
            f.write(f"`python -m bench.studies.zero_curvature --seeds {seeds} --iterations "
                    f"{iterations} --head {args.head}`, torch {torch.__version__}\n\n"
                    f"{table}\n")


if __name__ == "__main__":
    main()
