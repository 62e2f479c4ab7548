"""Ops suite: each fused op of each usable backend on one parameter set, with its bandwidth
as a fraction of a plain copy's that moves the same number of bytes (``torch copy_`` of one
flat buffer into another, on the same device, measured in the same run). All of a set's
measurements are timed in turns (bench/harness/timing.py)."""
from typing import Callable, Dict, List, NamedTuple

import torch
from torch import Tensor

from sassha_fast import backends as sassha_backends
from sassha_fast import functional

from ..harness import traffic
from ..harness.timing import Budget, Timing, measure_all
from ..harness.units import format_bytes
from ..workloads.shapes import ParamSet, random_tensors

# Hyper-parameters of a typical step; the values do not change the work.
UPDATE = dict(lr=1e-3, weight_decay=1e-2, beta1=0.9, bias_correction1=0.5,
              bias_correction2=0.03, hessian_power=0.5, eps=1e-4)


class OpTensors(NamedTuple):
    params: List[Tensor]
    grads: List[Tensor]
    perturbations: List[Tensor]
    hessians: List[Tensor]
    exp_avgs: List[Tensor]
    exp_hessians: List[Tensor]


def materialize(param_set: ParamSet, device: torch.device, dtype: torch.dtype,
                seed: int = 0) -> OpTensors:
    generator = torch.Generator().manual_seed(seed)

    def make(std, kind=dtype):
        return random_tensors(param_set.shapes, device, kind, std, generator)

    exp_hessians = [d.abs_().add_(0.1) for d in make(1.0, torch.float32)]
    return OpTensors(make(0.02), make(1e-3), make(1e-5), make(1.0), make(1e-3, torch.float32),
                     exp_hessians)


def op_calls(ops: sassha_backends.Ops, t: OpTensors,
             device: torch.device) -> Dict[str, Callable[[], object]]:
    """One call per op, repeatable without drifting into denormals: the perturbation scale
    is 1 (g is left as it is) and the state stays bounded."""
    one = torch.ones((), dtype=torch.float32, device=device)
    return {
        "global_norm": lambda: ops.global_norm(t.grads),
        "perturb": lambda: ops.perturb(t.params, t.grads, one, False),
        "sassha_update": lambda: ops.sassha_update(t.params, t.grads, t.exp_avgs, t.exp_hessians,
                                                   t.perturbations, **UPDATE),
        "hessian_ema": lambda: ops.hessian_ema(t.exp_hessians, t.hessians, 0.999),
        "msassha_update": lambda: ops.msassha_update(t.params, t.grads, t.exp_avgs,
                                                     t.exp_hessians, norm_factor=1e-3, **UPDATE),
        "add_scaled": lambda: ops.add_scaled(t.params, t.exp_avgs, -1e-3),
    }


OP_NAMES = ("global_norm", "perturb", "sassha_update", "hessian_ema", "msassha_update",
            "add_scaled")


def _row(param_set: ParamSet, dtype: torch.dtype, method: str, backend: str, moved: int,
         timing: Timing) -> dict:
    return dict(suite="ops", workload=param_set.name, params=param_set.numel,
                tensors=param_set.tensors, dtype=str(dtype).replace("torch.", ""), method=method,
                backend=backend, median_ms=timing.median_s * 1e3, min_ms=timing.min_s * 1e3,
                max_ms=timing.max_s * 1e3, reps=timing.reps, bytes=moved,
                gbps=moved / timing.median_s / 1e9)


def copy_calls(sizes: List[int], device: torch.device) -> List[Callable[[], object]]:
    """For each traffic size (bytes), a copy moving that many: read half, write half, as
    slices of one pair of fp32 buffers."""
    numels = [moved // 2 // 4 for moved in sizes]
    src = torch.rand(max(numels), device=device)
    dst = torch.empty_like(src)
    return [lambda n=n: dst[:n].copy_(src[:n]) for n in numels]


def run_set(param_set: ParamSet, t: OpTensors, backends: List[str], device: torch.device,
            budget: Budget) -> List[dict]:
    """Every op of every backend and the copies, timed in turns."""
    dtype = t.params[0].dtype
    labels, calls = [], []
    for backend in backends:
        for op, call in op_calls(functional.resolve(backend, device), t, device).items():
            labels.append((op, backend, traffic.traffic_bytes(op, param_set.numel, dtype)))
            calls.append(call)
    sizes = sorted({moved for _, _, moved in labels})
    labels += [(f"copy {format_bytes(moved)}", "torch copy_", moved) for moved in sizes]
    calls += copy_calls(sizes, device)
    timings = measure_all(calls, device, budget)
    rows = [_row(param_set, dtype, op, backend, moved, timing)
            for (op, backend, moved), timing in zip(labels, timings)]
    copies = rows[len(rows) - len(sizes):]
    return copies + rows[:len(rows) - len(sizes)]
