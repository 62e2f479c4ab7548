"""One training-suite method in a fresh process, so that its peak memory is its own:
``python -m bench.train_worker '<json spec>'`` builds it, then times it window by window on
the parent's command (see ``serve``), so that the parent can time methods in turns.

Iterations are timed one by one; SASSHA's Hessian is due once every ``lazy_hessian``
iterations, so a window of that many consecutive iterations holds exactly one Hessian
iteration and its mean is the time per iteration a training run pays."""
import json
import statistics
import sys
import time
import warnings
from typing import Callable, Dict, List, Optional

import torch
from torch.nn import functional as F

from sassha_fast import MSASSHA, SASSHA, frozen_batchnorm_stats

from . import authors
from .config import PAPER_SETTINGS
from .meta import proc_status_bytes
from .models import GPT, CifarResNet, GPTConfig
from .sam import SAM
from .timing import synchronize

RESULT_PREFIX = "BENCH_RESULT "
DONE = "BENCH_DONE"
ADAMW = dict(lr=1e-3, weight_decay=1e-2)
SASSHA_HP = dict(lr=0.15, weight_decay=5e-4)
CREATE_GRAPH_WARNING = r"Using backward\(\) with create_graph=True"


def build_model(spec: dict, device: torch.device, generator: torch.Generator):
    """The model, one synthetic batch and the loss function."""
    batch = spec["batch"]
    if spec["model"] == "cifar_resnet":
        model = CifarResNet(**spec["model_kwargs"])
        x = torch.randn(batch, 3, 32, 32, generator=generator)
        y = torch.randint(0, 10, (batch,), generator=generator)
        loss_fn = F.cross_entropy
    elif spec["model"] == "gpt":
        config = GPTConfig(**spec["model_kwargs"])
        model = GPT(config)
        x = torch.randint(0, config.vocab, (batch, config.context), generator=generator)
        y = torch.randint(0, config.vocab, (batch, config.context), generator=generator)

        def loss_fn(logits, targets):
            return F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    else:
        raise ValueError(f"unknown model {spec['model']!r}")
    model = model.to(device).train()
    if spec.get("compile"):
        # Compiled on the first (warm-up) iterations, so compile time is never timed.
        model = torch.compile(model)
    return model, x.to(device), y.to(device), loss_fn


def make_iteration(method: str, model, x, y, loss_fn, lazy_hessian: int,
                   authors_code: Optional[str] = None):
    """(one training iteration, a callable naming the implementation once it has run).
    ``authors_code``: the checkout the "-authors" methods load (bench/authors.py)."""
    params = list(model.parameters())

    def loss():
        return loss_fn(model(x), y)

    if method == "adamw":
        opt = torch.optim.AdamW(params, fused=True, **ADAMW)

        def iteration():
            opt.zero_grad(set_to_none=True)
            loss().backward()
            opt.step()
        return iteration, lambda: "torch fused"
    if method == "sam-adamw":
        sam = SAM(params, torch.optim.AdamW, rho=0.05, **ADAMW)

        def iteration():
            sam.zero_grad(set_to_none=True)
            loss().backward()
            sam.perturb(zero_grad=True)
            with frozen_batchnorm_stats():
                loss().backward()
            sam.step()
        return iteration, lambda: "per-tensor SAM"
    if method == "sassha-authors-loop":
        opt = SASSHA(params, lazy_hessian=lazy_hessian, backend="reference", **SASSHA_HP,
                     **PAPER_SETTINGS["SASSHA"])
        return _authors_sassha_loop(opt, loss), lambda: "reference"
    if method.endswith("-authors"):
        return _authors_iteration(method, params, loss, lazy_hessian, authors_code)
    if method in ("sassha", "msassha", "sassha-fd", "msassha-fd"):
        cls = MSASSHA if method.startswith("msassha") else SASSHA
        estimator = "finite_difference" if method.endswith("-fd") else "autograd"
        opt = cls(params, lazy_hessian=lazy_hessian, hessian_estimator=estimator, **SASSHA_HP,
                  **PAPER_SETTINGS[cls.__name__])
        def iteration():
            return opt.step(loss)
        # A skipped (inf/NaN) step does less work: the summary must not read its time.
        iteration.skipped_steps = lambda: opt.skipped_steps
        return iteration, lambda: ",".join(opt.backends_in_use.values())
    raise ValueError(f"unknown training method {method!r}")


def _authors_sassha_loop(opt, loss):
    """The authors' SASSHA training loop (theirs or ours in it): create_graph on every
    iteration."""
    def iteration():
        opt.zero_grad(set_to_none=True)
        loss().backward()
        opt.perturb_weights(zero_grad=True)
        with frozen_batchnorm_stats(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=CREATE_GRAPH_WARNING)
            loss().backward(create_graph=True)
        opt.unperturb()
        opt.step()
    return iteration


def _authors_iteration(method: str, params, loss, lazy_hessian: int, authors_code):
    """Their optimizers in their scripts' loops: create_graph on every iteration."""
    if not authors_code:
        raise ValueError(f"training method {method!r} needs the authors' code (--authors-code)")
    code = authors.load(authors_code)
    if method == "sassha-authors":
        opt = code.sassha(params, lazy_hessian=lazy_hessian, rho=0.05, **SASSHA_HP)
        iteration = _authors_sassha_loop(opt, loss)
    elif method == "msassha-authors":
        opt = code.msassha(params, lazy_hessian=lazy_hessian, **SASSHA_HP)

        def iteration():
            opt.zero_grad(set_to_none=True)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=CREATE_GRAPH_WARNING)
                loss().backward(create_graph=True)
            opt.step()
    else:
        raise ValueError(f"unknown training method {method!r}")
    return iteration, lambda: authors.AUTHORS


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


def timed_iterations(iteration: Callable[[], object], device: torch.device, count: int):
    times = []
    for _ in range(count):
        synchronize(device)
        start = time.perf_counter()
        iteration()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


class Session:
    """One method on one model, built once; timed window by window (so that a parent can
    time several methods in turns), then summed up."""

    def __init__(self, spec: dict):
        self.spec = spec
        self.device = torch.device(spec["device"])
        generator = torch.Generator().manual_seed(spec.get("seed", 0))
        torch.manual_seed(spec.get("seed", 0))
        self.model, x, y, loss_fn = build_model(spec, self.device, generator)
        self.iteration, self.backend = make_iteration(spec["method"], self.model, x, y,
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
