"""The training protocol the quality and language-model suites share: each method's
hyper-parameters (its learning rate, and for some a second knob such as SAM's and SASSHA's
rho) chosen from a grid on held-out data with seed 0 and then trained with further seeds
(the methods in turns, seed by seed, so that load from other processes falls on all of them
alike), and mean ± std / mean curves over the seeds. How each method trains one iteration
and where it is evaluated is the method catalog's (bench/methods.py)."""
import itertools
import statistics
from typing import Callable, Dict, List, NamedTuple, Sequence, Tuple, TypeVar

Run = TypeVar("Run")   # a suite's result of one training run; it has a ``finite`` field
Method = TypeVar("Method")   # a suite's method; it has ``name``, ``lrs`` and ``knobs``


class Point(NamedTuple):
    """One point of a method's grid: a learning rate and the values of its other knobs."""
    lr: float
    knobs: Tuple[Tuple[str, float], ...] = ()

    def label(self) -> str:
        """"0.001" for a learning rate alone (the key the results have always used), else
        "0.015 rho 0.025"."""
        return " ".join([f"{self.lr:g}"] + [f"{name} {value:g}" for name, value in self.knobs])

    def settings(self) -> Dict[str, float]:
        return dict(self.knobs)


def grid(values: Sequence[float], full: bool) -> Sequence[float]:
    """The whole grid, or only its middle value (smoke runs)."""
    return values if full else values[len(values) // 2:][:1]


def points(method: Method, full: bool) -> List[Point]:
    """Every learning rate with every combination of the method's knobs' values."""
    knobs = [[(name, value) for value in grid(values, full)] for name, values in method.knobs]
    return [Point(lr, tuple(combo)) for lr in grid(method.lrs, full)
            for combo in itertools.product(*knobs)]


def choose(results: Dict[Point, Run], score: Callable[[Run], float]) -> Point:
    """The point with the highest held-out ``score``. A run that diverged is never chosen
    (unless every run did); ties go to the smaller learning rate, then the smaller knobs
    (the milder setting)."""
    return max(results, key=lambda p: (results[p].finite, score(results[p]), -p.lr,
                                       tuple(-value for _, value in p.knobs)))


class Tuned(NamedTuple):
    point: Point                 # chosen on held-out data
    grid: Dict[Point, object]    # every point's seed-0 run
    runs: List                   # at ``point``: seed 0 (the grid's run), then seeds 1, 2, ...

    @property
    def lr(self) -> float:
        return self.point.lr


def tune_then_repeat(methods: Sequence[Method], grids: Callable[[Method], Sequence[Point]],
                     train: Callable[[Method, Point, int], Run], score: Callable[[Run], float],
                     seeds: int, progress: Callable[[str], None], prefix: str = ""
                     ) -> Dict[str, Tuned]:
    """Per method: every point of ``grids(method)`` with seed 0, the best by ``score``
    kept; then seeds 1 .. seeds-1 at that point, the methods in turns."""
    chosen: Dict[str, Tuple[Point, Dict[Point, Run]]] = {}
    for method in methods:
        results = {}
        grid_points = grids(method)
        for point in grid_points:
            what = "(grid)" if len(grid_points) > 1 else "seed 0"
            progress(f"{prefix}{method.name} lr {point.label()} {what}")
            results[point] = train(method, point, 0)
        chosen[method.name] = (choose(results, score), results)
    runs = {name: [results[point]] for name, (point, results) in chosen.items()}
    for seed in range(1, seeds):
        for method in methods:
            point = chosen[method.name][0]
            progress(f"{prefix}{method.name} lr {point.label()} seed {seed}")
            runs[method.name].append(train(method, point, seed))
    return {name: Tuned(point, results, runs[name])
            for name, (point, results) in chosen.items()}


def plan_size(methods: Sequence[Method], grids: Callable[[Method], Sequence[Point]],
              seeds: int) -> int:
    """Training runs ``tune_then_repeat`` makes."""
    return sum(len(grids(m)) + seeds - 1 for m in methods)


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
