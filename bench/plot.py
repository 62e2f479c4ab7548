"""The step suite's plot: time per iteration and useful GB/s against parameter count."""
import pathlib
from typing import Dict, List, Tuple

import matplotlib

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402  (after choosing the backend)


def step_plot(rows: List[dict], path: pathlib.Path, title: str) -> bool:
    """Writes the PNG; False (nothing written) when there are no step rows."""
    series: Dict[Tuple[str, str], List[dict]] = {}
    for row in rows:
        if row["suite"] == "step":
            series.setdefault((row["method"], row["backend"]), []).append(row)
    if not series:
        return False
    figure, (time_axis, rate_axis) = plt.subplots(1, 2, figsize=(14, 5.5))
    for (method, backend), points in series.items():
        points = sorted(points, key=lambda r: r["params"])
        label = method if backend in ("torch", "per-tensor SAM") else f"{method} [{backend}]"
        params = [r["params"] for r in points]
        time_axis.plot(params, [r["median_ms"] for r in points], marker="o", label=label)
        rate_axis.plot(params, [r["gbps"] for r in points], marker="o", label=label)
    for axis, ylabel in ((time_axis, "ms per iteration (median)"),
                         (rate_axis, "useful GB/s (bench/traffic.py)")):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("parameters")
        axis.set_ylabel(ylabel)
        axis.grid(True, which="both", alpha=0.3)
    rate_axis.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True
