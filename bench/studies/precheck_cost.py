"""What checking the state before the update would cost, against the flag the update sets as
it writes (docs/production.md, "Updates that write inf or NaN").

    python -m bench.studies.precheck_cost [--sizes 4000000,32000000] [--backend cpu]
                                          [--smoke]

Timed in turns (``bench.harness.timing``), fp32, one tensor per size:

* ``update``: ``sassha_update`` with its ``wrote_nonfinite`` flag (what ships);
* ``norm(m, D) + update``: a pre-check of the state, the global norm of the moments and
  D (the only inputs a check could read before the update and still catch a state that
  is not finite), then the same update;
* ``update twice``: what a check of the update itself would take, the update computed into
  copies first (the cost of being able to undo an overflowing step), measured as two
  updates.

The pre-check's ratio is what undoing a non-finite state would cost every step; the last
ratio bounds what undoing an overflowing step or learning rate would. Run on a quiet
machine (``uptime``)."""
import argparse
import os

import torch

from sassha_fast.functional import resolve

from ..harness.meta import collect
from ..harness.timing import Budget, measure_all

HYPER = dict(lr=1e-3, weight_decay=0.0, beta1=0.9, bias_correction1=0.1,
             bias_correction2=0.5, hessian_power=0.5, eps=1e-4)


def candidates(ops, size: int):
    p, g, m = (torch.randn(size) for _ in range(3))
    d = torch.rand(size)
    flag = torch.zeros(())

    def update():
        ops.sassha_update([p], [g], [m], [d], None, **HYPER, wrote_nonfinite=flag)

    def prechecked():
        torch.isfinite(ops.global_norm([m, d]))
        update()

    def twice():
        update()
        update()

    return {"update": update, "norm(m, D) + update": prechecked, "update twice": twice}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="4000000,32000000")
    parser.add_argument("--backend", default="cpu")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, two repetitions")
    args = parser.parse_args(argv)
    sizes = [1000] if args.smoke else [int(s) for s in args.sizes.split(",")]
    budget = (Budget(warmup=1, min_reps=2, max_reps=2, target_s=0.0, min_rep_s=0.0)
              if args.smoke else
              Budget(warmup=2, min_reps=10, max_reps=50, target_s=1.0, min_rep_s=0.005))
    device = torch.device("cpu")
    ops = resolve(args.backend, device, torch.float32)
    meta = collect(device)
    print(f"# pre-check of the state, ms per call ({meta['device_name']}, backend "
          f"{args.backend}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
          f"commit {meta['commit'][:7]}, load average before {meta['load_average_before'][0]:.2f})\n")
    names = list(candidates(ops, 1))
    print("| elements | " + " | ".join(names) + " | pre-check / update | twice / update |")
    print("|---" * (len(names) + 3) + "|")
    for size in sizes:
        fns = candidates(ops, size)
        timings = measure_all(list(fns.values()), device, budget)
        ms = [1e3 * t.median_s for t in timings]
        print(f"| {size:,} | " + " | ".join(f"{v:.2f}" for v in ms)
              + f" | {ms[1] / ms[0]:.2f}x | {ms[2] / ms[0]:.2f}x |", flush=True)
    print(f"\nload average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
