"""Timing callables: warm-up calls, then repetitions until a time budget is spent; the
median is the figure reported, with the min and max beside it."""
import math
import statistics
import time
from typing import Callable, List, NamedTuple, Sequence

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


def measure_all(fns: Sequence[Callable[[], object]], device: torch.device,
                budget: Budget) -> List[Timing]:
    """Seconds per call of each of ``fns``, measured in turns (one repetition of each, then
    the next round), so that load from other processes, which comes and goes, falls on
    all of them alike and their ratios stay meaningful. The device is synchronised around
    every repetition, so asynchronous GPU work is counted where it runs."""
    last = [0.0] * len(fns)
    for _ in range(max(budget.warmup, 1)):
        last = [_timed(fn, device, 1) for fn in fns]
    # One repetition must last long enough for the clock and the synchronisation to be
    # negligible: fast calls are repeated inside it.
    calls = [max(1, min(1000, math.ceil(budget.min_rep_s / max(t, 1e-9)))) for t in last]
    times: List[List[float]] = [[] for _ in fns]

    def wanted(i: int) -> bool:
        done = times[i]
        return len(done) < budget.max_reps and (len(done) < budget.min_reps
                                                or sum(done) * calls[i] < budget.target_s)

    while any(wanted(i) for i in range(len(fns))):
        for i, fn in enumerate(fns):
            if wanted(i):
                times[i].append(_timed(fn, device, calls[i]))
    return [Timing(statistics.median(t), min(t), max(t), len(t), c) for t, c in zip(times, calls)]


def measure(fn: Callable[[], object], device: torch.device, budget: Budget) -> Timing:
    """Seconds per call of ``fn`` alone."""
    return measure_all([fn], device, budget)[0]


def timed_iterations(iteration: Callable[[], object], device: torch.device,
                     count: int) -> List[float]:
    """Seconds of each of ``count`` consecutive calls, one by one (a training suite's
    iterations, whose Hessian iterations must be told apart)."""
    times = []
    for _ in range(count):
        synchronize(device)
        start = time.perf_counter()
        iteration()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times
