"""The plots: the step suite's (time per iteration and useful GB/s against parameter count)
and the training curves of the quality and language-model suites.

Sets with the same number of tensors (the ResNet-50-shaped family: the sweep, ResNet-50,
Wide-ResNet-50-2) are joined by a line; a set of another structure (GPT-2) is a lone marker
of the same colour, since joining it would mix two tensor-count regimes."""
import pathlib
from typing import Dict, List, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402  (after choosing the backend)

# Optimizer iterations only: the Hessian EMA rows time one op, not an iteration.
PLOTTED = ("adamw-forloop", "adamw-foreach", "adamw-fused", "sam-adamw", "sam-sgd", "sassha")
STYLE = {"adamw": "--", "sam": ":", "sassha": "-"}


def _series(rows: List[dict]) -> Dict[Tuple[str, str], List[dict]]:
    series: Dict[Tuple[str, str], List[dict]] = {}
    for row in rows:
        if row["suite"] == "step" and row["method"] in PLOTTED:
            series.setdefault((row["method"], row["backend"]), []).append(row)
    return series


def step_plot(rows: List[dict], path: pathlib.Path, title: str) -> bool:
    """Writes the PNG; False (nothing written) when there are no step rows."""
    series = _series(rows)
    if not series:
        return False
    figure, axes = plt.subplots(1, 2, figsize=(14, 5.5))
    for index, ((method, backend), points) in enumerate(series.items()):
        label = method if method != "sassha" else f"sassha [{backend}]"
        style = dict(color=f"C{index % 10}", linestyle=STYLE[method.split("-")[0]], marker="o")
        by_structure: Dict[int, List[dict]] = {}
        for row in points:
            by_structure.setdefault(row["tensors"], []).append(row)
        for number, group in enumerate(by_structure.values()):
            group.sort(key=lambda r: r["params"])
            for axis, key in zip(axes, ("median_ms", "gbps")):
                axis.plot([r["params"] for r in group], [r[key] for r in group],
                          label=label if number == 0 and axis is axes[1] else None, **style)
    for axis, ylabel in zip(axes, ("ms per iteration (median)",
                                   "useful GB/s (bench/harness/traffic.py)")):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("parameters (a line joins the sets with one tensor count)")
        axis.set_ylabel(ylabel)
        axis.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    figure.suptitle(title, fontsize=10)
    save(figure, path, dpi=110)
    return True


def save(figure, path: pathlib.Path, dpi: int) -> None:
    """Lay the figure out, write it and free it (pyplot holds every figure it opened)."""
    figure.tight_layout()
    figure.savefig(path, dpi=dpi)
    plt.close(figure)


def draw_curves(axis, curves: List[dict], x: str, y: str, methods: Sequence[str],
                scale: float = 1.0) -> None:
    """One line per curve (a dict with "method" and the lists ``x`` and ``y``), each
    method in the same colour in every panel."""
    for curve in curves:
        axis.plot(curve[x], [scale * v for v in curve[y]], label=curve["method"],
                  color=f"C{list(methods).index(curve['method'])}", marker=".")
    axis.grid(True, alpha=0.3)
