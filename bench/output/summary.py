"""The ratios the project's issues ask for, read off one run's rows:
issue 2: foreach vs reference SASSHA on a set of >= 150 tensors and >= 20M parameters;
issue 3: reference / foreach / cpu SASSHA vs fused AdamW on >= 160 tensors and >= 50M
         (targets: cpu >= 90% of fused AdamW's GB/s and >= 5x faster than reference);
issues 4 and 5: each op's GB/s as a fraction of a copy's on a GPU (target >= 85%);
with --authors-code: each sassha_fast row's speed-up over the authors' implementation of
the same method, beside its time over the baseline (fused AdamW);
issue 11: per training model with finite-difference rows, SASSHA-fd's time and peak memory
          over SAM-AdamW's (targets <= 1.1x, <= 1.15x) and M-SASSHA-fd's time over AdamW's
          (target <= 1.15x);
issue 28: each backend's compiled SASSHA step over its eager one (step suite, first set);
          on the eager SDPA GPT, M-SASSHA-fd's time over AdamW's (target <= 1.25x at batch 4,
          <= 1.15x at batch 16; at other batches not checked) and SASSHA-fd's over
          SAM-AdamW's (target <= 1.05x)."""
import re
from typing import List, Optional

from ..harness.results import AUTHORS, find
from ..harness.units import format_count

CPU_BANDWIDTH_TARGET = 0.90
CPU_SPEEDUP_TARGET = 5.0
COPY_FRACTION_TARGET = 0.85
# issue 11: (numerator method, denominator method, column, what, target)
FD_TARGETS = (("sassha-fd", "sam-adamw", "median_ms", "time", 1.10),
              ("sassha-fd", "sam-adamw", "peak_mem_mb", "peak memory", 1.15),
              ("msassha-fd", "adamw", "median_ms", "time", 1.15))
# issue 28, on the eager SDPA GPT: {batch: M-SASSHA-fd / AdamW target}, SASSHA-fd / SAM-AdamW
MSASSHA_FD_TARGET_AT_BATCH = {4: 1.25, 16: 1.15}
SASSHA_FD_TARGET = 1.05


def _set_with(rows: List[dict], min_tensors: int, min_params: int) -> Optional[dict]:
    """The smallest step-suite set that is at least this large (a SASSHA row of it)."""
    fitting = [r for r in rows if r["suite"] == "step" and r["method"] == "sassha"
               and r["tensors"] >= min_tensors and r["params"] >= min_params]
    return min(fitting, key=lambda r: r["params"], default=None)


def _describe(row: dict) -> str:
    return f"{row['workload']} ({format_count(row['params'])} params, {row['tensors']} tensors)"


def _verdict(ok: bool) -> str:
    return "meets target" if ok else "MISSES target"


def issue2(rows: List[dict]) -> List[str]:
    any_row = _set_with(rows, 150, 20_000_000)
    if any_row is None:
        return ["issue 2: no step-suite set with >= 150 tensors and >= 20M params in this run"]
    set_name = any_row["workload"]
    ref = find(rows, suite="step", workload=set_name, method="sassha", backend="reference")
    fe = find(rows, suite="step", workload=set_name, method="sassha", backend="foreach")
    if ref is None or fe is None:
        return [f"issue 2: reference or foreach SASSHA not measured on {set_name}"]
    return [f"issue 2: SASSHA iteration on {_describe(any_row)}: reference "
            f"{ref['median_ms']:.1f} ms, foreach {fe['median_ms']:.1f} ms: foreach is "
            f"{ref['median_ms'] / fe['median_ms']:.2f}x the reference's speed"]


def issue3(rows: List[dict], backend_report: dict) -> List[str]:
    any_row = _set_with(rows, 160, 50_000_000)
    if any_row is None:
        return ["issue 3: no step-suite set with >= 160 tensors and >= 50M params in this run"]
    set_name = any_row["workload"]
    adamw = find(rows, suite="step", workload=set_name, method="adamw-fused")
    lines = [f"issue 3: on {_describe(any_row)}, AdamW(fused=True) "
             + (f"{adamw['median_ms']:.1f} ms, {adamw['gbps']:.2f} GB/s" if adamw
                else "not measured")]
    for backend in ("reference", "foreach", "cpu"):
        row = find(rows, suite="step", workload=set_name, method="sassha", backend=backend)
        if row is None:
            why = backend_report.get(backend, "")
            lines.append(f"  SASSHA {backend}: not measured in this run"
                         + ("" if why.startswith("runs on") else f" ({why})"))
            continue
        line = f"  SASSHA {backend}: {row['median_ms']:.1f} ms, {row['gbps']:.2f} GB/s"
        if adamw:
            line += (f" = {100 * row['gbps'] / adamw['gbps']:.0f}% of fused AdamW's GB/s, "
                     f"{row['median_ms'] / adamw['median_ms']:.2f}x its time")
        lines.append(line)
    cpu = find(rows, suite="step", workload=set_name, method="sassha", backend="cpu")
    ref = find(rows, suite="step", workload=set_name, method="sassha", backend="reference")
    if cpu and ref and adamw:
        fraction = cpu["gbps"] / adamw["gbps"]
        speedup = ref["median_ms"] / cpu["median_ms"]
        lines.append(f"  cpu backend: {100 * fraction:.0f}% of fused AdamW's GB/s "
                     f"(target >= {100 * CPU_BANDWIDTH_TARGET:.0f}%: "
                     f"{_verdict(fraction >= CPU_BANDWIDTH_TARGET)}), {speedup:.1f}x faster "
                     f"than reference (target >= {CPU_SPEEDUP_TARGET:.0f}x: "
                     f"{_verdict(speedup >= CPU_SPEEDUP_TARGET)})")
    return lines


def issues4_5(rows: List[dict], device_type: str) -> List[str]:
    ops = [r for r in rows if r["suite"] == "ops" and r.get("copy_fraction") is not None
           and r["backend"] != "reference"]
    if not ops:
        return []
    lines = [f"issues 4/5: op GB/s as a fraction of a same-size copy's"
             + ("" if device_type == "cuda" else " (the >= 85% target is for a GPU; "
                "shown here for reference)")]
    for backend in dict.fromkeys(r["backend"] for r in ops):
        mine = [r for r in ops if r["backend"] == backend]
        worst = min(mine, key=lambda r: r["copy_fraction"])
        parts = ", ".join(f"{r['method']} {100 * r['copy_fraction']:.0f}%" for r in mine)
        verdict = (f": lowest {worst['method']} {_verdict(worst['copy_fraction'] >= COPY_FRACTION_TARGET)}"
                   if device_type == "cuda" else "")
        lines.append(f"  {backend} on {worst['workload']}: {parts}{verdict}")
    return lines


# The sassha_fast methods each authors' row is compared with, per suite.
AUTHORS_PARTNERS = {("step", "sassha"): "sassha", ("step", "msassha"): "msassha",
                    ("train", "sassha-authors"): "sassha",
                    ("train", "msassha-authors"): "msassha"}


def versus_authors(rows: List[dict]) -> List[str]:
    """Per workload and authors' row: each sassha_fast row of that method as "N x faster
    than the authors'" and "M x fused AdamW's time" (the train suite's AdamW is fused)."""
    theirs = [r for r in rows if r["backend"] == AUTHORS]
    if not theirs:
        return []
    lines = ["versus the authors' code (speed-up over it, and time over fused AdamW's):"]
    for their in theirs:
        method = AUTHORS_PARTNERS[their["suite"], their["method"]]
        ours = [r for r in rows if r["suite"] == their["suite"] and r["method"] == method
                and r["workload"] == their["workload"] and r["backend"] != AUTHORS]
        base = f" ({their['vs_baseline']:.2f}x AdamW's time)" if their.get("vs_baseline") else ""
        parts = [f"{r['backend']} {r['median_ms']:.1f} ms: "
                 f"{their['median_ms'] / r['median_ms']:.2f}x the authors' speed"
                 + (f" ({r['vs_baseline']:.2f}x AdamW's time)" if r.get("vs_baseline") else "")
                 for r in ours]
        lines.append(f"  {their['suite']} {their['workload']} {method}: authors "
                     f"{their['median_ms']:.1f} ms{base}; " + ("; ".join(parts) or
                                                               "no sassha_fast row"))
    return lines


def finite_difference(rows: List[dict]) -> List[str]:
    """Issue 11's targets, per training workload that has finite-difference rows. The
    "+MiB in training" ratio (peak minus the memory in use once everything was built) is
    shown beside the peak's, for information: on a CPU the peak includes torch itself."""
    workloads = dict.fromkeys(r["workload"] for r in rows if r["suite"] == "train"
                              and r["method"] in ("sassha-fd", "msassha-fd"))
    if not workloads:
        return []
    lines = ["issue 11: finite-difference estimator (SASSHA-fd, M-SASSHA-fd) on the training suite"]
    for workload in workloads:
        parts = []
        for mine, theirs, column, what, target in FD_TARGETS:
            num = find(rows, suite="train", workload=workload, method=mine)
            den = find(rows, suite="train", workload=workload, method=theirs)
            if num is None or den is None:
                parts.append(f"{mine} / {theirs} {what}: not measured")
                continue
            ratio = num[column] / den[column]
            skipped = {m: r.get("skipped_steps", 0) for m, r in ((mine, num), (theirs, den))
                       if r.get("skipped_steps", 0)}
            if skipped:
                parts.append(f"{mine} / {theirs} {what} {ratio:.2f}x: NOT VALID ("
                             + ", ".join(f"{m} skipped {n} steps: inf/NaN, diverged"
                                         for m, n in skipped.items()) + ")")
                continue
            part = (f"{mine} / {theirs} {what} {ratio:.2f}x (target <= {target:.2f}x: "
                    f"{_verdict(ratio <= target)})")
            if column == "peak_mem_mb" and den["mem_delta_mb"] > 0:
                part += (f" [+MiB in training: {num['mem_delta_mb']:.0f} / "
                         f"{den['mem_delta_mb']:.0f} = "
                         f"{num['mem_delta_mb'] / den['mem_delta_mb']:.2f}x]")
            parts.append(part)
        lines.append(f"  {workload}: " + "; ".join(parts))
    return lines


def _time_ratio(rows: List[dict], workload: str, mine: str, theirs: str) -> Optional[float]:
    num = find(rows, suite="train", workload=workload, method=mine)
    den = find(rows, suite="train", workload=workload, method=theirs)
    if num is None or den is None or num.get("skipped_steps") or den.get("skipped_steps"):
        return None
    return num["median_ms"] / den["median_ms"]


def issue28(rows: List[dict]) -> List[str]:
    """Issue 28's targets on each eager SDPA GPT workload of the training suite."""
    lines = []
    for workload in dict.fromkeys(r["workload"] for r in rows if r["suite"] == "train"):
        match = re.fullmatch(r"gpt-.*-sdpa batch (\d+)", workload)
        if match is None:
            continue
        batch, parts = int(match.group(1)), []
        for mine, theirs, target in (("msassha-fd", "adamw",
                                      MSASSHA_FD_TARGET_AT_BATCH.get(batch)),
                                     ("sassha-fd", "sam-adamw", SASSHA_FD_TARGET)):
            ratio = _time_ratio(rows, workload, mine, theirs)
            if ratio is None:
                parts.append(f"{mine} / {theirs}: not measured (or steps skipped)")
            elif target is None:
                parts.append(f"{mine} / {theirs} {ratio:.2f}x (targets at batch "
                             + " and ".join(map(str, MSASSHA_FD_TARGET_AT_BATCH))
                             + " only: not checked)")
            else:
                parts.append(f"{mine} / {theirs} {ratio:.2f}x (target <= {target:.2f}x at "
                             f"batch {batch}: {_verdict(ratio <= target)})")
        lines.append(f"issue 28: {workload}: " + "; ".join(parts))
    return lines


def compiled_step(rows: List[dict]) -> List[str]:
    """Issue 28: each backend's compiled SASSHA step over its eager one, same set, same run."""
    parts, workload = [], None
    for row in rows:
        if row["suite"] == "step" and row["method"] == "sassha-compiled":
            eager = find(rows, suite="step", workload=row["workload"], method="sassha",
                         backend=row["backend"])
            if eager is not None:
                workload = _describe(row)
                parts.append(f"{row['backend']} {row['median_ms'] / eager['median_ms']:.2f}x")
    if not parts:
        return []
    return [f"issue 28: compiled / eager SASSHA step (capturable=True) on {workload}: "
            + ", ".join(parts)]


def summarize(rows: List[dict], backend_report: dict, device_type: str) -> List[str]:
    lines = []
    if any(r["suite"] == "step" for r in rows):
        lines += issue2(rows) + issue3(rows, backend_report) + compiled_step(rows)
    return (lines + issues4_5(rows, device_type) + versus_authors(rows)
            + finite_difference(rows) + issue28(rows))
