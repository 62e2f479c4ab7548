"""What the suites' reports share: CSV files with their metadata as comment lines, and the
markdown lines saying how, where and under what load a run happened."""
import csv
import json
import pathlib
from typing import List, Sequence

from ..harness.results import COLUMNS

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


def provenance_lines(meta: dict, threads: int) -> List[str]:
    """The markdown lines of a training suite's report that say how, where and under what
    load it ran."""
    # A subset run (python -m bench.quality_suite) names its own command.
    command = meta.get("command") or " ".join(["python -m bench"] + meta["argv"])
    return [f"- command: `{command}`",
            f"- device: {meta['device_name']}, {threads} torch thread{'s' * (threads != 1)}; "
            f"torch {meta['torch']}, commit {meta['commit']}, {meta['date']}",
            f"- load average before/after: {load_average(meta['load_average_before'])}"
            f" / {load_average(meta['load_average_after'])}"]


def load_average(values) -> str:
    return "?" if values is None else " ".join(f"{v:.2f}" for v in values)
