"""One training-suite method in a fresh process, so that its peak memory is its own:
``python -m bench.suites.train_worker '<json spec>'`` builds it, then times it window by
window on the parent's command (see ``serve``), so that the parent can time methods in turns.

Iterations are timed one by one; SASSHA's Hessian is due once every ``lazy_hessian``
iterations, so a window of that many consecutive iterations holds exactly one Hessian
iteration and its mean is the time per iteration a training run pays."""
import json
import statistics
import sys
from typing import Dict, List

import torch

from ..harness.meta import proc_status_bytes
from ..harness.timing import timed_iterations
from ..methods import train_iteration
from ..workloads.models import build_model

RESULT_PREFIX = "BENCH_RESULT "
DONE = "BENCH_DONE"


class MemoryProbe:
    """Peak memory of what runs after ``start()``: torch's allocator on CUDA; on CPU the
    peak resident set of this fresh process (VmHWM, which starts anew at exec, unlike
    ru_maxrss, which keeps the parent's resident set at fork time)."""

    def __init__(self, device: torch.device):
        self.device = device

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline = torch.cuda.memory_allocated(self.device)
        else:
            self.baseline = proc_status_bytes("VmRSS")

    def result(self) -> Dict[str, object]:
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
            measure = "torch.cuda.max_memory_allocated"
        else:
            peak = proc_status_bytes("VmHWM")
            measure = "peak RSS (VmHWM) of a fresh process"
        return dict(peak_mem_mb=peak / 2**20, mem_delta_mb=(peak - self.baseline) / 2**20,
                    memory_measure=measure)


class Session:
    """One method on one model, built once; timed window by window (so that a parent can
    time several methods in turns), then summed up."""

    def __init__(self, spec: dict):
        self.spec = spec
        self.device = torch.device(spec["device"])
        generator = torch.Generator().manual_seed(spec.get("seed", 0))
        torch.manual_seed(spec.get("seed", 0))
        self.model, x, y, loss_fn = build_model(spec, self.device, generator)
        self.iteration, self.backend = train_iteration(spec["method"], self.model, x, y,
                                                       loss_fn, spec["lazy_hessian"],
                                                       spec.get("authors_code"))
        self.probe = MemoryProbe(self.device)
        self.probe.start()
        self.times: List[float] = []

    def warmup(self) -> None:
        timed_iterations(self.iteration, self.device, self.spec["warmup"])

    def window(self) -> None:
        self.times += timed_iterations(self.iteration, self.device, self.spec["lazy_hessian"])

    def finish(self) -> dict:
        if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            # NaN arithmetic can run at another speed: such a run measures nothing useful.
            raise RuntimeError(f"{self.spec['method']} diverged on {self.spec['model']} "
                               "(non-finite parameters): its timings would not be "
                               "representative")
        window = self.spec["lazy_hessian"]
        means = [statistics.fmean(self.times[i:i + window])
                 for i in range(0, len(self.times), window)]
        skipped = getattr(self.iteration, "skipped_steps", lambda: 0)()
        return dict(backend=self.backend(), window_means_s=means, iteration_s=self.times,
                    skipped_steps=skipped,
                    params=sum(p.numel() for p in self.model.parameters()),
                    tensors=sum(1 for _ in self.model.parameters()), **self.probe.result())


def run(spec: dict) -> dict:
    """All of one method's windows in a row (in this process)."""
    session = Session(spec)
    session.warmup()
    for _ in range(spec["windows"]):
        session.window()
    return session.finish()


def serve(spec: dict) -> None:
    """Answer the parent's commands, one a line on stdin: "warmup" and "window" print
    ``BENCH_DONE``; "finish" prints ``BENCH_RESULT <json>`` and ends."""
    session = Session(spec)
    print(DONE, flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "finish":
            print(RESULT_PREFIX + json.dumps(session.finish()), flush=True)
            return
        if command == "warmup":
            session.warmup()
        elif command == "window":
            session.window()
        else:
            raise ValueError(f"unknown command {command!r}")
        print(DONE, flush=True)


if __name__ == "__main__":
    serve(json.loads(sys.argv[1]))
