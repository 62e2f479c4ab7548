"""Ops suite: each fused op of each usable backend on one parameter set, with its bandwidth
as a fraction of a plain copy's that moves the same number of bytes (``torch copy_`` of one
flat buffer into another, on the same device, measured in the same run)."""
from typing import Callable, Dict, List, NamedTuple

import torch
from torch import Tensor

from sassha_fast import backends as sassha_backends

from . import traffic
from .shapes import ParamSet, format_bytes, random_tensors
from .timing import Budget, measure

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
         seconds, reps: int, extra: dict) -> dict:
    median_s, min_s, max_s = seconds
    return dict(suite="ops", workload=param_set.name, params=param_set.numel,
                tensors=param_set.tensors, dtype=str(dtype).replace("torch.", ""), method=method,
                backend=backend, median_ms=median_s * 1e3, min_ms=min_s * 1e3,
                max_ms=max_s * 1e3, reps=reps, bytes=moved, gbps=moved / median_s / 1e9,
                **extra)


def run_op(backend: str, op: str, param_set: ParamSet, t: OpTensors, device: torch.device,
           budget: Budget) -> dict:
    ops = sassha_backends.resolve(backend, device)
    timing = measure(op_calls(ops, t, device)[op], device, budget)
    dtype = t.params[0].dtype
    return _row(param_set, dtype, op, backend, traffic.traffic_bytes(op, param_set.numel, dtype),
                timing[:3], timing.reps, {})


def run_copy(moved: int, param_set: ParamSet, device: torch.device, dtype: torch.dtype,
             budget: Budget) -> dict:
    """A copy moving ``moved`` bytes: read ``moved / 2``, write as many."""
    numel = moved // 2 // torch.empty((), dtype=torch.float32).element_size()
    src = torch.rand(numel, device=device)
    dst = torch.empty_like(src)
    timing = measure(lambda: dst.copy_(src), device, budget)
    return _row(param_set, dtype, f"copy {format_bytes(moved)}", "torch copy_", moved,
                timing[:3], timing.reps, {})
