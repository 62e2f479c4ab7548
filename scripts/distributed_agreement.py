"""How far two gloo ranks on CPU are from one process fed the whole batch.

    python scripts/distributed_agreement.py

Runs the configurations of tests/distributed/test_distributed.py (DDP and bare models)
and tests/distributed/test_fsdp.py (FSDP2 shards) as those tests do, and prints, per
configuration and tensor kind, the worst of max |rank - single process| / max |single
process| over the tensors and ranks (for FSDP each rank's shard against its slice of the
whole tensor), the bound the tests apply, and for the finite-difference DDP runs how far
the single-process double backward's numbers and other Rademacher draws are (what the tests
must reject).
"""
import pathlib
import sys

import torch

TESTS = pathlib.Path(__file__).resolve().parent.parent / "tests"
sys.path[:0] = [str(TESTS / "distributed"), str(TESTS / "support")]

import test_distributed as ddp  # noqa: E402
import test_fsdp as fsdp  # noqa: E402
from gloo_ranks import rank_results  # noqa: E402
from tiny import whole_batch  # noqa: E402


def worst(pairs) -> float:
    return max(float((got - want).abs().max()) / float(scale) for got, want, scale in pairs)


def whole_pairs(got, want, key):
    return [(a, b, b.abs().max()) for a, b in zip(got[key], want[key])]


def row(name, values, bounds):
    cells = " | ".join(f"{values[key]:.1e} ({bounds[key]:.0e})" for key in ddp.KEYS)
    print(f"| {name} | {cells} |", flush=True)


def main() -> int:
    torch.set_num_threads(1)
    x, y = whole_batch()
    print("worst relative difference from one process (the tests' bound)")
    print("| configuration | " + " | ".join(ddp.KEYS) + " |")
    print("| :--- |" + " ---: |" * len(ddp.KEYS))
    ranks = rank_results(ddp.run_all)
    for name in ddp.CONFIGS:
        if "local" in name:
            continue
        single = ddp.train(name, x, y, distributed=False)
        row(name, {key: worst([p for rank in ranks for p in whole_pairs(rank[name], single, key)])
                   for key in ddp.KEYS},
            {key: ddp.relative_bound(name, key) for key in ddp.KEYS})
        if name in ddp.FINITE_DIFFERENCE:
            for label, kwargs in (("double backward", dict(estimator="autograd")),
                                  ("other draws", dict(seed=1))):
                wrong = ddp.train(name, x, y, distributed=False, **kwargs)
                row(f"{name}: {label}, single process",
                    {key: worst(whole_pairs(wrong, single, key)) for key in ddp.KEYS},
                    ddp.FD_RELATIVE)
    ranks = rank_results(fsdp.run_all)
    for name in fsdp.OPTIMIZERS:
        for backend in fsdp.BACKENDS:
            single = fsdp.train(name, backend, x, y, shard=False)
            row(f"fsdp {name} {backend}",
                {key: worst([p for rank in ranks
                             for p in fsdp.shards_against(rank[(name, backend)], single, key)])
                 for key in fsdp.KEYS}, fsdp.FD_RELATIVE)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
