"""The training protocol the quality and language-model suites share: each method's learning
rate chosen from a grid on held-out data with seed 0 and then trained with further seeds
(the methods in turns, seed by seed, so that load from other processes falls on all of them
alike), and mean ± std / mean curves over the seeds. How each method trains one iteration
and where it is evaluated is the method catalog's (bench/methods.py)."""
import statistics
from typing import Callable, Dict, List, NamedTuple, Sequence, Tuple, TypeVar

Run = TypeVar("Run")   # a suite's result of one training run; it has a ``finite`` field
Method = TypeVar("Method")   # a suite's method; it has ``name`` and ``lrs``


def grid(lrs: Sequence[float], full: bool) -> Sequence[float]:
    """The whole grid, or only its middle learning rate (smoke runs)."""
    return lrs if full else lrs[len(lrs) // 2:][:1]


def choose(results: Dict[float, Run], score: Callable[[Run], float]) -> float:
    """The learning rate with the highest held-out ``score``. A run that diverged is never
    chosen (unless every run did); ties go to the smaller learning rate."""
    return max(results, key=lambda lr: (results[lr].finite, score(results[lr]), -lr))


class Tuned(NamedTuple):
    lr: float                    # chosen on held-out data
    grid: Dict[float, object]    # every learning rate's seed-0 run
    runs: List                   # at ``lr``: seed 0 (the grid's run), then seeds 1, 2, ...


def tune_then_repeat(methods: Sequence[Method], lrs: Callable[[Method], Sequence[float]],
                     train: Callable[[Method, float, int], Run], score: Callable[[Run], float],
                     seeds: int, progress: Callable[[str], None], prefix: str = ""
                     ) -> Dict[str, Tuned]:
    """Per method: every learning rate of ``lrs(method)`` with seed 0, the best by
    ``score`` kept; then seeds 1 .. seeds-1 at that learning rate, the methods in turns."""
    chosen: Dict[str, Tuple[float, Dict[float, Run]]] = {}
    for method in methods:
        results = {}
        for lr in lrs(method):
            progress(f"{prefix}{method.name} lr {lr:g} (grid)")
            results[lr] = train(method, lr, 0)
        chosen[method.name] = (choose(results, score), results)
    runs = {name: [results[lr]] for name, (lr, results) in chosen.items()}
    for seed in range(1, seeds):
        for method in methods:
            lr = chosen[method.name][0]
            progress(f"{prefix}{method.name} lr {lr:g} seed {seed}")
            runs[method.name].append(train(method, lr, seed))
    return {name: Tuned(lr, results, runs[name]) for name, (lr, results) in chosen.items()}


def plan_size(methods: Sequence[Method], lrs: Callable[[Method], Sequence[float]],
              seeds: int) -> int:
    """Training runs ``tune_then_repeat`` makes."""
    return sum(len(lrs(m)) + seeds - 1 for m in methods)


def select(methods: Sequence[Method], names: str) -> List[Method]:
    """The methods a command line names (comma-separated), in that order; exits naming the
    choices when one is unknown."""
    by_name = {m.name: m for m in methods}
    unknown = [n for n in names.split(",") if n not in by_name]
    if unknown:
        raise SystemExit(f"unknown method(s) {', '.join(unknown)} (choose from "
                         f"{', '.join(by_name)})")
    return [by_name[n] for n in names.split(",")]


def mean_std(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return (statistics.fmean(values),
            statistics.stdev(values) if len(values) > 1 else 0.0)


def pointwise_mean(series: Sequence[Sequence[float]]) -> List[float]:
    """The mean over seeds of each point of equally long series."""
    return [statistics.fmean(points) for points in zip(*series)]
