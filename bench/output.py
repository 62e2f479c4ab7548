"""Writing a run: results.csv, results.json, results.md and step.png in one folder."""
import csv
import json
import pathlib
from typing import Dict, List, Sequence

from . import table, traffic
from .plot import step_plot
from .results import COLUMNS

SUITES = ("step", "ops", "train")


META_KEYS = ("date", "device_name", "torch", "commit")


def write_csv(rows: List[dict], path: pathlib.Path, meta: dict,
              columns: Sequence[str] = COLUMNS, meta_keys: Sequence[str] = META_KEYS) -> None:
    with open(path, "w", newline="") as handle:
        # Where and when, as comment lines a CSV reader can skip (pandas: comment="#").
        for key in meta_keys:
            handle.write(f"# {key}: {meta[key]}\n")
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(row.get(k)) for k in columns})


def _csv_value(value):
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, dict)):  # the quality suite's per-seed figures
        return json.dumps(value)
    return "" if value is None else value


def write_json(rows: List[dict], path: pathlib.Path, meta: dict, summary: List[str]) -> None:
    payload = dict(meta=meta, summary=summary, traffic_model=traffic.describe().splitlines(),
                   columns=list(COLUMNS), results=rows)
    path.write_text(json.dumps(payload, indent=1) + "\n")


def tables(rows: List[dict], render) -> Dict[str, str]:
    return {suite: render(suite, [r for r in rows if r["suite"] == suite])
            for suite in SUITES if any(r["suite"] == suite for r in rows)}


def write_markdown(rows: List[dict], path: pathlib.Path, meta: dict, summary: List[str],
                   plot_name: str) -> None:
    lines = ["# sassha_fast benchmark results", "",
             f"- device: {meta['device_name']} ({meta['device']}, {meta['cpu_count']} CPUs, "
             f"{meta['torch_threads']} torch threads)",
             f"- torch {meta['torch']}, sassha_fast {meta['sassha_fast']}, commit {meta['commit']}",
             f"- date: {meta['date']}, load average before/after: "
             f"{_load(meta['load_average_before'])} / {_load(meta.get('load_average_after'))}",
             f"- command: `{' '.join(['python -m bench'] + meta['argv'])}`",
             f"- peak memory of the step / ops process: "
             f"{meta.get('peak_memory_mb_this_process', 0):,.0f} MiB",
             f"- backends: " + "; ".join(f"{k}: {v}" for k, v in meta["backends"].items()), ""]
    if summary:
        lines += ["## Summary", "", "```"] + summary + ["```", ""]
    lines += [text + "\n" for text in tables(rows, table.markdown).values()]
    if plot_name:
        lines += [f"![step suite]({plot_name})", ""]
    lines += ["## Traffic model (useful bytes per parameter element)", "", "```",
              traffic.describe(), "```", ""]
    path.write_text("\n".join(lines))


def provenance_lines(meta: dict, threads: int) -> List[str]:
    """The markdown lines of a training suite's report that say how, where and under what
    load it ran."""
    # A subset run (python -m bench.quality_suite) names its own command.
    command = meta.get("command") or " ".join(["python -m bench"] + meta["argv"])
    return [f"- command: `{command}`",
            f"- device: {meta['device_name']}, {threads} torch thread{'s' * (threads != 1)}; "
            f"torch {meta['torch']}, commit {meta['commit']}, {meta['date']}",
            f"- load average before/after: {_load(meta['load_average_before'])}"
            f" / {_load(meta['load_average_after'])}"]


def _load(values) -> str:
    return "?" if values is None else " ".join(f"{v:.2f}" for v in values)


def write_all(rows: List[dict], out: pathlib.Path, meta: dict, summary: List[str]) -> List[str]:
    out.mkdir(parents=True, exist_ok=True)
    plot = out / "step.png"
    title = (f"sassha_fast optimizer step, {meta['device_name']}, torch {meta['torch']}, "
             f"{meta['date']}")
    wrote_plot = step_plot(rows, plot, title)
    write_csv(rows, out / "results.csv", meta)
    write_json(rows, out / "results.json", meta, summary)
    write_markdown(rows, out / "results.md", meta, summary, plot.name if wrote_plot else "")
    names = ["results.csv", "results.json", "results.md"] + (["step.png"] if wrote_plot else [])
    return [str(out / name) for name in names]
