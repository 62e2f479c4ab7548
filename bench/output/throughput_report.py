"""Writing a run of the throughput suites (step, ops, train): results.csv, results.json,
results.md and step.png in one folder."""
import json
import pathlib
from typing import Dict, List

from ..harness import traffic
from ..harness.results import COLUMNS
from . import tables
from .files import load_average, write_csv
from .plots import step_plot

SUITES = ("step", "ops", "train")


def write_json(rows: List[dict], path: pathlib.Path, meta: dict, summary: List[str]) -> None:
    payload = dict(meta=meta, summary=summary, traffic_model=traffic.describe().splitlines(),
                   columns=list(COLUMNS), results=rows)
    path.write_text(json.dumps(payload, indent=1) + "\n")


def _per_suite(rows: List[dict], render) -> Dict[str, str]:
    return {suite: render(suite, [r for r in rows if r["suite"] == suite])
            for suite in SUITES if any(r["suite"] == suite for r in rows)}


def write_markdown(rows: List[dict], path: pathlib.Path, meta: dict, summary: List[str],
                   plot_name: str) -> None:
    lines = ["# sassha_fast benchmark results", "",
             f"- device: {meta['device_name']} ({meta['device']}, {meta['cpu_count']} CPUs, "
             f"{meta['torch_threads']} torch threads)",
             f"- torch {meta['torch']}, sassha_fast {meta['sassha_fast']}, commit {meta['commit']}",
             f"- date: {meta['date']}, load average before/after: "
             f"{load_average(meta['load_average_before'])} / "
             f"{load_average(meta.get('load_average_after'))}",
             f"- command: `{' '.join(['python -m bench'] + meta['argv'])}`",
             f"- peak memory of the step / ops process: "
             f"{meta.get('peak_memory_mb_this_process', 0):,.0f} MiB",
             f"- backends: " + "; ".join(f"{k}: {v}" for k, v in meta["backends"].items()), ""]
    if summary:
        lines += ["## Summary", "", "```"] + summary + ["```", ""]
    lines += [text + "\n" for text in _per_suite(rows, tables.markdown).values()]
    if plot_name:
        lines += [f"![step suite]({plot_name})", ""]
    lines += ["## Traffic model (useful bytes per parameter element)", "", "```",
              traffic.describe(), "```", ""]
    path.write_text("\n".join(lines))


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
