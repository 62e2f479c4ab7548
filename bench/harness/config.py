"""What each profile (--smoke, --quick, --full) measures on a CPU and on a GPU, for every
suite: the throughput suites' sets, budgets and training models, the quality suite's noise
levels and epochs, the language-model suite's model and training sizes."""
from typing import NamedTuple, Tuple

import torch

from ..workloads.corpus import VOCAB
from ..workloads.models import GPTConfig
from ..workloads.shapes import ParamSet, named_sets, resnet50_shapes, scaled_shapes
from .timing import Budget
from .units import format_count

# Bytes per fp32 parameter element the step suite holds at once, all its methods' states
# living together while they are timed in turns: parameters and two gradients (12), three
# AdamWs (24), SAM-AdamW (12), SAM-SGD (8), per backend SASSHA's two moments and the
# Hessian-EMA case's buffer (12, four backends: 48), foreach temporaries (8).
SWEEP_BYTES_PER_ELEMENT = 112


class TrainModel(NamedTuple):
    model: str         # "cifar_resnet" (depth in model_kwargs) or "gpt"
    label: str
    model_kwargs: dict
    batch: int
    compile: bool = False  # torch.compile the whole model (once, in the worker)


class Profile(NamedTuple):
    name: str
    step_sets: Tuple[ParamSet, ...]
    ops_sets: Tuple[ParamSet, ...]
    step_budget: Budget
    ops_budget: Budget
    train_models: Tuple[TrainModel, ...]
    train_warmup: int   # untimed iterations
    train_windows: int  # timed windows of lazy_hessian iterations each
    lazy_hessian: int
    # torch.compile backend of the step suite's compiled rows (on the first step set only:
    # inductor takes 0.5-2 min per backend to compile a 161-tensor step on a 2-core CPU)
    step_compiler: str = "inductor"


def sweep_set(total: int) -> ParamSet:
    """ResNet-50's 161 tensors scaled to ``total`` parameters."""
    return ParamSet(f"sweep-{format_count(total)}",
                    tuple(scaled_shapes(resnet50_shapes(), total)))


def _resnet(depth: int, batch: int) -> TrainModel:
    return TrainModel("cifar_resnet", f"resnet{depth}", dict(depth=depth), batch)


def _gpt(layers: int, width: int, heads: int, vocab: int, context: int, batch: int,
         attention: str = "manual", compile: bool = False) -> TrainModel:
    kwargs = dict(layers=layers, width=width, heads=heads, vocab=vocab, context=context)
    label = f"gpt-{layers}L-{width}"
    if attention != "manual":  # the hand-written GPT keeps its kwargs and label
        kwargs["attention"] = attention
        label += f"-{attention}"
    return TrainModel("gpt", label + ("-compiled" if compile else ""), kwargs, batch, compile)


def _gpts(layers: int, width: int, heads: int, vocab: int, context: int,
          batch: int) -> Tuple[TrainModel, ...]:
    """The hand-written GPT, and the same GPT with SDPA attention, eager and compiled."""
    size = (layers, width, heads, vocab, context, batch)
    return (_gpt(*size), _gpt(*size, attention="sdpa"),
            _gpt(*size, attention="sdpa", compile=True))


def memory_budget_bytes(device: torch.device, cap_gib: float) -> int:
    """Half of what is free on the device now, at most ``cap_gib``."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
    else:
        with open("/proc/meminfo") as meminfo:
            fields = dict(line.split(":", 1) for line in meminfo)
        free = int(fields["MemAvailable"].split()[0]) * 1024
    return int(min(free / 2, cap_gib * 2**30))


def sweep_sizes(start: int, stop_bytes: int) -> Tuple[int, ...]:
    """start, 4*start, 16*start, ... while the heaviest method fits in ``stop_bytes``."""
    sizes, size = [], start
    while size * SWEEP_BYTES_PER_ELEMENT <= stop_bytes:
        sizes.append(size)
        size *= 4
    return tuple(sizes)


def profile(name: str, device: torch.device, memory_cap_gib: float) -> Profile:
    gpu = device.type == "cuda"
    if name == "smoke":
        sweep = tuple(sweep_set(n) for n in (10_000, 40_000))
        once = Budget(warmup=1, min_reps=2, max_reps=2, target_s=0.0, min_rep_s=0.0)
        return Profile(name, sweep, sweep[-1:], once, once,
                       (_resnet(8, 2), _gpt(1, 32, 2, 64, 16, 2),
                        _gpt(1, 32, 2, 64, 16, 2, attention="sdpa")),
                       train_warmup=1, train_windows=1, lazy_hessian=2,
                       step_compiler="eager")
    if name == "quick":
        named = tuple(named_sets(gpt2_layers=12 if gpu else 4))
        sweep = tuple(sweep_set(n) for n in ((10**6, 4 * 10**6, 16 * 10**6, 64 * 10**6,
                                               256 * 10**6) if gpu else (10**6, 4 * 10**6)))
        # On a shared CPU machine the load of other tenants comes and goes within seconds:
        # more rounds (timed in turns) keep the medians' ratios steady from run to run.
        budget = Budget(warmup=3 if gpu else 1, min_reps=5 if gpu else 3, max_reps=50 if gpu else 30,
                        target_s=0.5 if gpu else 2.0, min_rep_s=0.005)
        models = ((_resnet(32, 128),) + _gpts(4, 256, 4, 4096, 128, 16) if gpu else
                  (_resnet(32, 8),) + _gpts(4, 128, 4, 2048, 64, 4))
        return Profile(name, named + sweep, named[:1], budget, budget, models,
                       train_warmup=3 if gpu else 2, train_windows=3,
                       lazy_hessian=10)
    if name == "full":
        named = tuple(named_sets(gpt2_layers=12))
        sizes = sweep_sizes(10**6, memory_budget_bytes(device, memory_cap_gib))
        sweep = tuple(sweep_set(n) for n in sizes)
        budget = Budget(warmup=5 if gpu else 2, min_reps=10 if gpu else 5,
                        max_reps=100 if gpu else 20, target_s=1.0 if gpu else 3.0,
                        min_rep_s=0.01)
        models = ((_resnet(32, 128),) + _gpts(4, 512, 8, 8192, 256, 32) if gpu else
                  (_resnet(32, 32),) + _gpts(4, 256, 4, 4096, 128, 8))
        return Profile(name, named + sweep, named, budget, budget, models,
                       train_warmup=5 if gpu else 2, train_windows=5 if gpu else 3,
                       lazy_hessian=10)
    raise ValueError(f"unknown profile {name!r}")


class QualityProfile(NamedTuple):
    name: str
    noises: Tuple[float, ...]
    epochs: int
    seeds: int
    grid: bool          # False: each method's middle learning rate only (smoke)
    limit: int = 0      # images kept (0: all 1,797)
    width: int = 16


def quality_profile(name: str) -> QualityProfile:
    if name == "smoke":
        return QualityProfile(name, (0.0, 0.4), epochs=1, seeds=2, grid=False, limit=400,
                              width=4)
    if name == "quick":
        return QualityProfile(name, (0.0, 0.2, 0.4, 0.6), epochs=4, seeds=2, grid=True)
    if name == "full":
        return QualityProfile(name, (0.0, 0.2, 0.4, 0.6), epochs=10, seeds=3, grid=True)
    raise ValueError(f"unknown profile {name!r}")


# The language-model suite's method whose training time the equal-time view gives the others.
EQUAL_TIME_REFERENCE = "sassha"


class LMProfile(NamedTuple):
    name: str
    width: int
    heads: int
    context: int
    batch: int
    iterations: int
    seeds: int
    grid: bool           # False: each method's middle learning rate only (smoke)
    eval_windows: int    # validation and test windows of the final evaluation
    curve_windows: int   # validation windows behind each point of the curves
    curve_points: int    # evaluations along a run
    train_bytes: int     # the training split is capped to about this (0: whole)
    threads: int         # torch threads on a CPU
    layers: int = 4
    warmup: float = 0.05  # fraction of the iterations with a linear learning-rate warm-up
    # The profile whose grid (seed 0) chooses each method's learning rate and knobs, which
    # this one then trains with every seed: "" for its own grid. The full profile's grid
    # of eight methods, some with a knob, would take hours on a CPU.
    tune_on: str = ""

    def gpt(self, attention: str) -> GPTConfig:
        return GPTConfig(self.layers, self.width, self.heads, VOCAB, self.context, attention)

    def tokens(self, iterations: int) -> int:
        return iterations * self.batch * self.context


def lm_profile(name: str, device: torch.device) -> LMProfile:
    """CPU sizes for a 2-core machine (bench/README.md has the measured times); on a GPU the
    same names give a wider model, longer context and the whole training split. The full
    profile takes its learning rates and knobs from the quick profile's grid."""
    gpu = device.type == "cuda"
    if name == "smoke":
        return LMProfile(name, width=16, heads=2, context=16, batch=4, iterations=12, seeds=2,
                         grid=False, eval_windows=16, curve_windows=8, curve_points=3,
                         train_bytes=1 << 20, threads=1)
    if name == "quick":
        if gpu:
            return LMProfile(name, width=256, heads=4, context=256, batch=32, iterations=1500,
                             seeds=3, grid=True, eval_windows=1024, curve_windows=128,
                             curve_points=15, train_bytes=0, threads=1)
        return LMProfile(name, width=64, heads=4, context=64, batch=8, iterations=300,
                         seeds=3, grid=True, eval_windows=128, curve_windows=32,
                         curve_points=6, train_bytes=4 << 20, threads=1)
    if name == "full":
        if gpu:
            return LMProfile(name, width=384, heads=6, context=256, batch=64, iterations=5000,
                             seeds=3, grid=True, eval_windows=4096, curve_windows=256,
                             curve_points=25, train_bytes=0, threads=1, tune_on="quick")
        return LMProfile(name, width=128, heads=4, context=128, batch=8, iterations=450,
                         seeds=3, grid=True, eval_windows=256, curve_windows=48,
                         curve_points=10, train_bytes=16 << 20, threads=1, tune_on="quick")
    raise ValueError(f"unknown profile {name!r}")
