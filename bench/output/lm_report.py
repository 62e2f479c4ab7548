"""Writing a language-model-suite run: lm.csv, lm.json, lm.md and lm-curves.png (validation
bits per byte against iterations and against training wall-clock time)."""
import json
import pathlib
from typing import List, Optional

import matplotlib

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402  (after choosing the backend)

from ..harness.config import EQUAL_TIME_REFERENCE, LMProfile  # noqa: E402
from .files import META_KEYS, provenance_lines, write_csv  # noqa: E402
from .plots import draw_curves, save  # noqa: E402

CSV_COLUMNS = ("method", "attention", "estimator", "lr", "knobs", "chosen", "tuned_on",
               "test_bpb_mean", "test_bpb_std",
               "test_bpbs", "test_ppl_mean", "test_ppl_std", "val_bpb_mean", "diverged",
               "skipped_steps", "s_per_iter", "train_s_mean", "seeds", "iterations", "tokens",
               "equal_time_iterations", "equal_time_train_s", "equal_time_test_bpb",
               "equal_time_skipped_steps", "grid_val_bpb", "grid_skipped_steps", "stopped",
               "grid_stopped", "corpus_sha256")
# The load average is in lm.json and lm.md.
CSV_META_KEYS = META_KEYS + ("corpus_sha256", "corpus_bytes", "corpus_files")


def _pm(mean: Optional[float], std: Optional[float], digits: int) -> str:
    return "—" if mean is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _health(row: dict) -> str:
    """Diverged runs and skipped steps, the grid's included, said in the table rather than
    averaged away."""
    notes = []
    if row["diverged"]:
        notes.append(f"{row['diverged']} of {row['seeds']} seeds diverged")
    if any(row["skipped_steps"]):
        notes.append("skipped steps per seed: " + ", ".join(map(str, row["skipped_steps"])))
    # Tuned on this profile, the chosen point's grid run is the first seed above.
    chosen = row["chosen"] if row["tuned_on"] == row["profile"] else None
    for point, skipped in row["grid_skipped_steps"].items():
        if point != chosen and (skipped or point in row["grid_stopped"]):
            state = "diverged" if row["grid_val_bpb"][point] is None else "finished"
            where = "" if row["tuned_on"] == row["profile"] else f"{row['tuned_on']} "
            notes.append(f"{where}grid lr {point} {state}, {skipped} skipped steps")
    return "; ".join(notes) or "ok"


def _equal_time(row: dict) -> str:
    if row["equal_time_iterations"] is None:
        return "—"
    score = ("diverged" if row["equal_time_test_bpb"] is None
             else f"{row['equal_time_test_bpb']:.3f}")
    skipped = (f", {row['equal_time_skipped_steps']} skipped"
               if row["equal_time_skipped_steps"] else "")
    return f"{score} ({row['equal_time_iterations']} it{skipped})"


def table_markdown(rows: List[dict]) -> str:
    """Methods down: test bits per byte and perplexity per byte (mean ± std over the seeds
    that stayed finite), the chosen learning rate and knob, seconds per iteration and its
    ratio to AdamW's, the equal-time view, and what went wrong."""
    base = next((r["s_per_iter"] for r in rows if r["method"] == "adamw"), None)
    lines = ["| method | attention / Hessian | test bits per byte | test perplexity per byte "
             "| lr (and knob) chosen | s / iter | time / adamw | equal time: test bits per byte "
             f"(iterations in {EQUAL_TIME_REFERENCE}'s time) | runs |",
             "| :--- | :--- | ---: | ---: | ---: | ---: | ---: | ---: | :--- |"]
    for row in rows:
        ratio = f"{row['s_per_iter'] / base:.2f}x" if base else "—"
        lines.append(
            f"| {row['method']} | {row['attention']} / {row['estimator']} | "
            f"{_pm(row['test_bpb_mean'], row['test_bpb_std'], 3)} | "
            f"{_pm(row['test_ppl_mean'], row['test_ppl_std'], 3)} | {row['chosen']} | "
            f"{row['s_per_iter']:.3f} | {ratio} | {_equal_time(row)} | {_health(row)} |")
    return "\n".join(lines)


def _tuning(row: dict, profile: LMProfile) -> str:
    if row["tuned_on"] == profile.name:
        return "each method's grid (seed 0) in this profile; `lm.json` has every point's score"
    return (f"each method's grid ran on the {row['tuned_on']} profile (seed 0, its model and "
            f"training length); the chosen points train here with {profile.seeds} seeds. "
            "`lm.json` has every grid point's validation score")


def curves_plot(curves: List[dict], path: pathlib.Path, title: str) -> None:
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    methods = [c["method"] for c in curves]
    for axis, x, label in zip(axes, ("iterations", "elapsed_s"),
                              ("iterations (same tokens per iteration for every method)",
                               "training wall-clock time (s), mean over seeds")):
        draw_curves(axis, curves, x, "val_bpb", methods)
        axis.set_xlabel(label)
    axes[0].set_ylabel("validation bits per byte")
    axes[1].legend(fontsize=8)
    figure.suptitle(title, fontsize=9)
    save(figure, path, dpi=100)


def write_all(rows: List[dict], curves: List[dict], out: pathlib.Path, meta: dict,
              profile: LMProfile) -> List[str]:
    out.mkdir(parents=True, exist_ok=True)
    title = (f"byte-level GPT ({profile.layers} layers, width {profile.width}) on the Python "
             f"standard library, {profile.iterations} iterations, {profile.seeds} seeds; "
             f"{meta['device_name']}, torch {meta['torch']}, {meta['date']}")
    curves_plot(curves, out / "lm-curves.png", title)
    write_csv(rows, out / "lm.csv", meta, CSV_COLUMNS, CSV_META_KEYS)
    (out / "lm.json").write_text(json.dumps(
        dict(meta=meta, profile=profile._asdict(), results=rows, curves=curves), indent=1)
        + "\n")
    threads = profile.threads if meta["device"].startswith("cpu") else 1
    lines = ["# sassha_fast language-model suite: a byte-level GPT on the Python standard "
             "library", "", *provenance_lines(meta, threads=threads),
             f"- corpus: the `.py` files of {meta['corpus_root']} ({meta['corpus_files']:,} "
             f"files, {meta['corpus_bytes']:,} bytes, SHA-256 {meta['corpus_sha256']}); split "
             f"by file: {meta['train_files']:,} training files ({meta['train_bytes']:,} bytes "
             f"used), {meta['validation_files']} validation ({meta['validation_bytes']:,} "
             f"bytes), {meta['test_files']} test ({meta['test_bytes']:,} bytes)",
             f"- model: GPT, {profile.layers} layers, width {profile.width}, {profile.heads} "
             f"heads, context {profile.context}, 256 byte tokens; batch {profile.batch}, "
             f"{profile.iterations} iterations ({rows[0]['tokens']:,} tokens per run, every "
             f"method), warm-up then cosine learning rate; {profile.seeds} seeds",
             f"- evaluation: {profile.eval_windows} validation and test windows of "
             f"{profile.context} predicted bytes; the learning rate and knob (rho, Sophia-H's "
             "gamma) are chosen on validation, the table reports test",
             f"- tuning: {_tuning(rows[0], profile)}", "",
             "Test bits per byte and perplexity per byte (mean ± std over the seeds that "
             "stayed finite):", "", table_markdown(rows), "",
             "![validation loss against iterations and wall-clock time](lm-curves.png)", ""]
    (out / "lm.md").write_text("\n".join(lines))
    return [str(out / n) for n in ("lm.csv", "lm.json", "lm.md", "lm-curves.png")]
