"""The terminal / markdown tables: one per suite, columns chosen for what it measures."""
from typing import Callable, List, Sequence, Tuple

from ..harness.units import format_count

Column = Tuple[str, Callable[[dict], str]]


def _num(key: str, digits: int = 1) -> Callable[[dict], str]:
    def fmt(row: dict) -> str:
        value = row.get(key)
        return "" if value is None else f"{value:,.{digits}f}"
    return fmt


def _ms(row: dict) -> str:
    return f"{row['median_ms']:,.{1 if row['median_ms'] >= 10 else 3}f}"


def _spread(low: str, high: str) -> Callable[[dict], str]:
    def fmt(row: dict) -> str:
        return f"{row[low]:,.3g}-{row[high]:,.3g}" if low in row else ""
    return fmt


def _ratio(row: dict) -> str:
    return "" if row.get("vs_baseline") is None else f"{row['vs_baseline']:.2f}x"


def _percent(row: dict) -> str:
    return "" if row.get("copy_fraction") is None else f"{100 * row['copy_fraction']:.0f}%"


_WORKLOAD: List[Column] = [("workload", lambda r: r["workload"]),
                           ("params", lambda r: format_count(r["params"])),
                           ("tensors", lambda r: str(r["tensors"]))]

SUITE_COLUMNS = {
    "step": _WORKLOAD + [
        ("method", lambda r: r["method"]), ("backend", lambda r: r["backend"]),
        ("ms", _ms), ("min-max ms", _spread("min_ms", "max_ms")), ("reps", _num("reps", 0)),
        ("GB/s", _num("gbps", 2)), ("time / adamw-fused", _ratio)],
    "ops": _WORKLOAD + [
        ("backend", lambda r: r["backend"]), ("op", lambda r: r["method"]), ("ms", _ms),
        ("min-max ms", _spread("min_ms", "max_ms")), ("GB/s", _num("gbps", 2)),
        ("of copy GB/s", _percent)],
    "train": _WORKLOAD + [
        ("method", lambda r: r["method"]), ("backend", lambda r: r["backend"]),
        ("ms/iter", _ms), ("iter min-max ms", _spread("iter_min_ms", "iter_max_ms")),
        ("time / adamw", _ratio), ("peak MiB", _num("peak_mem_mb", 0)),
        ("+MiB in training", _num("mem_delta_mb", 0))],
}

SUITE_TITLES = {
    "step": "Optimizer step (optimizer work of one iteration, no model)",
    "ops": "Backend ops (one call over the whole parameter set)",
    "train": "Training iteration (forward, backward passes and optimizer; mean over a "
             "lazy-Hessian period)",
}

_NUMERIC = {"params", "tensors", "ms", "min-max ms", "reps", "GB/s", "time / adamw-fused",
            "of copy GB/s", "ms/iter", "iter min-max ms", "time / adamw", "peak MiB",
            "+MiB in training"}


def cells(suite: str, rows: Sequence[dict]) -> Tuple[List[str], List[List[str]]]:
    columns = SUITE_COLUMNS[suite]
    return [name for name, _ in columns], [[fmt(r) for _, fmt in columns] for r in rows]


def text(suite: str, rows: Sequence[dict]) -> str:
    """An aligned plain-text table (numbers right-aligned)."""
    headers, body = cells(suite, rows)
    widths = [max(len(h), *(len(line[i]) for line in body)) if body else len(h)
              for i, h in enumerate(headers)]

    def line(values):
        return "  ".join(v.rjust(w) if h in _NUMERIC else v.ljust(w)
                         for h, v, w in zip(headers, values, widths)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([SUITE_TITLES[suite], line(headers), rule] + [line(v) for v in body])


def markdown(suite: str, rows: Sequence[dict]) -> str:
    headers, body = cells(suite, rows)
    align = ["---:" if h in _NUMERIC else ":---" for h in headers]
    lines = [f"### {SUITE_TITLES[suite]}", "", "| " + " | ".join(headers) + " |",
             "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(values) + " |" for values in body]
    return "\n".join(lines)
