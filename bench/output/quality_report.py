"""Writing a quality-suite run: quality.csv, quality.json, quality.md, quality-noise.png
(clean test accuracy against label noise) and quality-time.png (test accuracy against
wall-clock time, one panel per noise level)."""
import json
import pathlib
import statistics
from typing import Dict, List

import matplotlib

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402  (after choosing the backend)

from ..harness.config import QualityProfile  # noqa: E402
from .files import provenance_lines, write_csv  # noqa: E402
from .plots import draw_curves, save  # noqa: E402

CSV_COLUMNS = ("noise", "method", "lr", "knobs", "chosen", "test_acc_mean", "test_acc_std", "test_accs",
               "diverged", "epoch_s_median", "seeds", "epochs", "train_size", "val_size",
               "test_size", "flipped", "grid_val_acc")


def seconds_per_epoch(rows: List[dict]) -> Dict[str, float]:
    """Each method's median epoch time over the noise levels (same work at every level)."""
    out: Dict[str, List[float]] = {}
    for row in rows:
        out.setdefault(row["method"], []).append(row["epoch_s_median"])
    return {name: statistics.median(values) for name, values in out.items()}


def mean_std(row: dict) -> str:
    return f"{100 * row['test_acc_mean']:.1f} ± {100 * row['test_acc_std']:.1f}"


def table_markdown(rows: List[dict]) -> str:
    """Methods down, noise levels across: clean test accuracy (%) mean ± std over seeds,
    the learning rate (and knob) the held-out slice chose, and the median seconds per
    epoch."""
    noises = sorted({r["noise"] for r in rows})
    methods = list(dict.fromkeys(r["method"] for r in rows))
    cell = {(r["method"], r["noise"]): r for r in rows}
    per_epoch = seconds_per_epoch(rows)
    head = (["method"] + [f"{100 * n:.0f}% noise" for n in noises]
            + ["lr (and knob) chosen, per noise level", "s / epoch"])
    lines = ["| " + " | ".join(head) + " |",
             "| :--- | " + " | ".join("---:" for _ in noises) + " | :--- | ---: |"]
    for method in methods:
        accs = [mean_std(cell[method, n]) + ("" if not cell[method, n]["diverged"] else
                                             f" ({cell[method, n]['diverged']} diverged)")
                for n in noises]
        lrs = "; ".join(cell[method, n]["chosen"] for n in noises)
        lines.append(f"| {method} | " + " | ".join(accs)
                     + f" | {lrs} | {per_epoch[method]:.2f} |")
    return "\n".join(lines)


def noise_plot(rows: List[dict], path: pathlib.Path, title: str) -> None:
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for index, method in enumerate(dict.fromkeys(r["method"] for r in rows)):
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["noise"])
        axis.errorbar([100 * r["noise"] for r in mine], [100 * r["test_acc_mean"] for r in mine],
                      yerr=[100 * r["test_acc_std"] for r in mine], label=method, marker="o",
                      capsize=3, color=f"C{index}")
    axis.set_xlabel("symmetric label noise on the training set (%)")
    axis.set_ylabel("clean test accuracy (%), mean ± std over seeds")
    axis.grid(True, alpha=0.3)
    axis.legend()
    axis.set_title(title, fontsize=9)
    save(figure, path, dpi=110)


def time_plot(curves: List[dict], path: pathlib.Path, title: str) -> None:
    noises = sorted({c["noise"] for c in curves})
    figure, axes = plt.subplots(1, len(noises), figsize=(4 * len(noises), 4), squeeze=False)
    methods = list(dict.fromkeys(c["method"] for c in curves))
    for axis, noise in zip(axes[0], noises):
        draw_curves(axis, [c for c in curves if c["noise"] == noise], "elapsed_s", "test_acc",
                    methods, scale=100)
        axis.set_title(f"{100 * noise:.0f}% label noise")
        axis.set_xlabel("training wall-clock time (s), mean over seeds")
    axes[0][0].set_ylabel("clean test accuracy (%) after each epoch")
    axes[0][-1].legend(fontsize=8)
    figure.suptitle(title, fontsize=9)
    save(figure, path, dpi=100)


def write_all(rows: List[dict], curves: List[dict], out: pathlib.Path, meta: dict,
              profile: QualityProfile) -> List[str]:
    out.mkdir(parents=True, exist_ok=True)
    title = (f"label noise on digits, small CNN, {profile.epochs} epochs, {profile.seeds} "
             f"seeds; {meta['device_name']}, torch {meta['torch']}, {meta['date']}")
    noise_plot(rows, out / "quality-noise.png", title)
    time_plot(curves, out / "quality-time.png", title)
    write_csv(rows, out / "quality.csv", meta, CSV_COLUMNS)
    (out / "quality.json").write_text(json.dumps(
        dict(meta=meta, profile=profile._asdict(), results=rows, curves=curves), indent=1) + "\n")
    first = rows[0]
    lines = ["# sassha_fast quality suite: label noise on scikit-learn's digits", "",
             *provenance_lines(meta, threads=1),
             f"- data: {first['train_size']} training images (noisy labels), "
             f"{first['val_size']} held out from them (noisy) to choose the learning rate and "
             "the knob (rho, Sophia-H's gamma) from each method's grid, "
             f"{first['test_size']} clean test images; {profile.epochs} epochs, batch 64, "
             f"cosine learning rate; {profile.seeds} seeds per method and noise level",
             "", "Clean test accuracy (%), mean ± std over seeds:", "", table_markdown(rows), "",
             "![accuracy against noise](quality-noise.png)", "",
             "![accuracy against wall-clock time](quality-time.png)", ""]
    (out / "quality.md").write_text("\n".join(lines))
    return [str(out / n) for n in ("quality.csv", "quality.json", "quality.md",
                                   "quality-noise.png", "quality-time.png")]
