"""Timing a callable: warm-up calls, then repetitions until a time budget is spent; the
median is the figure reported, with the min and max beside it."""
import math
import statistics
import time
from typing import Callable, NamedTuple

import torch


class Budget(NamedTuple):
    """How long to measure one callable."""
    warmup: int       # untimed calls first (allocations, lazy init, caches)
    min_reps: int
    max_reps: int
    target_s: float   # keep adding repetitions (up to max_reps) until this much time is timed
    min_rep_s: float  # calls faster than this are batched into one repetition


class Timing(NamedTuple):
    median_s: float
    min_s: float
    max_s: float
    reps: int
    calls_per_rep: int


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device, calls: int) -> float:
    synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / calls


def measure(fn: Callable[[], object], device: torch.device, budget: Budget) -> Timing:
    """Seconds per call of ``fn``. The device is synchronised around every repetition, so
    asynchronous GPU work is counted where it runs."""
    first = None
    for _ in range(budget.warmup):
        first = _timed(fn, device, 1)
    if first is None:
        first = _timed(fn, device, 1)
    # One repetition must last long enough for the clock and the synchronisation to be
    # negligible: fast calls are repeated inside it.
    calls = max(1, min(1000, math.ceil(budget.min_rep_s / max(first, 1e-9))))
    times = []
    while len(times) < budget.max_reps and (len(times) < budget.min_reps
                                            or sum(times) * calls < budget.target_s):
        times.append(_timed(fn, device, calls))
    return Timing(statistics.median(times), min(times), max(times), len(times), calls)
