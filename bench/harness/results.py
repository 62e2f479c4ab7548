"""Result rows: the columns every suite fills, and the ratios computed once a suite is done.

A row is a dict of ``COLUMNS`` (absent keys are empty in the CSV):
  median_ms/min_ms/max_ms  per call (step, ops) or per training iteration (train; there the
                           figures are over windows of lazy_hessian iterations, each window's
                           mean, and iter_min_ms/iter_max_ms are single iterations)
  bytes, gbps              useful traffic of one call (bench/harness/traffic.py) and bytes / median
  baseline, vs_baseline    the method compared against and median / baseline's median
  copy_fraction            ops: gbps / gbps of a copy of the same bytes in this run
"""
from typing import Dict, List, Optional, Tuple

COLUMNS = ("suite", "workload", "params", "tensors", "dtype", "method", "backend", "median_ms",
           "min_ms", "max_ms", "reps", "bytes", "gbps", "baseline", "vs_baseline",
           "copy_fraction", "iter_min_ms", "iter_max_ms", "peak_mem_mb", "mem_delta_mb",
           "memory_measure")

# The backend column of the rows of the authors' code (bench/baselines/authors.py).
AUTHORS = "authors"
# What each suite's rows are compared against (same workload).
BASELINES = {"step": "adamw-fused", "train": "adamw"}


def find(rows: List[dict], **match) -> Optional[dict]:
    """The first row whose fields equal ``match``."""
    for row in rows:
        if all(row.get(k) == v for k, v in match.items()):
            return row
    return None


def add_ratios(rows: List[dict]) -> None:
    """Fill vs_baseline (step, train) and copy_fraction (ops) in place."""
    medians: Dict[Tuple[str, str, str], float] = {
        (r["suite"], r["workload"], r["method"]): r["median_ms"] for r in rows}
    copies = {(r["workload"], r["bytes"]): r["gbps"] for r in rows
              if r["suite"] == "ops" and r["backend"] == "torch copy_"}
    for row in rows:
        baseline = BASELINES.get(row["suite"])
        if baseline is not None:
            base = medians.get((row["suite"], row["workload"], baseline))
            if base:
                row["baseline"] = baseline
                row["vs_baseline"] = row["median_ms"] / base
        if row["suite"] == "ops" and row["backend"] != "torch copy_":
            copy = copies.get((row["workload"], row["bytes"]))
            if copy:
                row["copy_fraction"] = row["gbps"] / copy
