"""The fused ops as functions over lists of tensors, as ``torch.optim.adamw.adamw()`` is to
``AdamW``: what the optimizers run in each step, callable on their own.

Each function takes ``backend=`` ("auto", or a name of ``sassha_fast.available_backends()``)
and runs the op with that backend's implementation for the device and dtype of its first
tensor. ``resolve`` is the one place where a backend name becomes an implementation: the
optimizers call it once per (device, dtype) of their parameters and keep the result. The
contract of every op (dtypes, scalars, ``found_inf``, empty lists) is the reference
backend's (``sassha_fast.backends.reference``); the update rules are in docs/algorithm.md.
"""
from typing import List, Optional

import torch
from torch import Tensor

from . import backends
from .backends.reference import Scalar

# What "auto" picks: the first backend of the device type's list that can run here.
AUTO_ORDER = {"cpu": ("cpu", "foreach"), "cuda": ("cuda", "triton", "foreach")}
AUTO_FALLBACK = ("foreach",)


def check_name(name: str) -> None:
    """ValueError for an unknown backend name, RuntimeError for one that cannot run here."""
    if name == "auto":
        return
    if name not in backends.BACKEND_MODULES:
        backends.load_module(name)  # raises the ValueError that lists the valid names
    reason = backends.unavailable_reason(name)
    if reason is not None:
        raise RuntimeError(f"sassha_fast backend {name!r} is unavailable: {reason}")


def resolve(name: str, device: torch.device, dtype: torch.dtype = torch.float32) -> backends.Ops:
    """The ops of backend ``name`` for parameters of ``dtype`` on ``device`` (the best
    backend for both when ``name == "auto"``).

    Raises ValueError for an unknown name and RuntimeError for a backend that cannot run
    here, on ``device`` or with ``dtype``, saying why and what to use instead."""
    usable = backends.op_table()["perturb"]
    if name == "auto":
        for candidate in AUTO_ORDER.get(device.type, AUTO_FALLBACK):
            if candidate in usable and backends.runs(candidate, device, dtype):
                return backends.ops_of(candidate)
        return backends.ops_of("reference")
    check_name(name)
    if not backends.load_module(name).supports(device):
        raise RuntimeError(f"sassha_fast backend {name!r} does not run on {device.type} tensors")
    if not backends.load_module(name).supports_dtype(dtype):
        instead = [b for b in usable if backends.runs(b, device, dtype)]
        raise RuntimeError(f"sassha_fast backend {name!r} does not run with {dtype} "
                           f"parameters; use backend='auto' or one of "
                           + ", ".join(repr(b) for b in instead) + f" for them on {device.type}")
    return backends.ops_of(name)


def _ops(backend: str, tensors: List[Tensor]) -> backends.Ops:
    first = tensors[0] if tensors else torch.empty(0)
    return resolve(backend, first.device, first.dtype)


def global_norm(tensors: List[Tensor], weights: Optional[List[Tensor]] = None, *,
                backend: str = "auto") -> Tensor:
    """sqrt(sum_i ||w_i * t_i||^2), w_i = |weights_i| (or 1), as a 0-d tensor."""
    return _ops(backend, tensors).global_norm(tensors, weights)


def perturb(params: List[Tensor], grads: List[Tensor], scale: Scalar, adaptive: bool = False,
            *, found_inf: Optional[Tensor] = None, backend: str = "auto") -> None:
    """SASSHA's climb: e = scale * g (adaptive: * p^2) into ``grads``, p += e."""
    _ops(backend, params).perturb(params, grads, scale, adaptive, found_inf=found_inf)


def sassha_update(params: List[Tensor], grads: List[Tensor], exp_avgs: List[Tensor],
                  exp_hessians: List[Tensor], perturbations: Optional[List[Tensor]] = None, *,
                  lr: Scalar, weight_decay: float, beta1: float, bias_correction1: Scalar,
                  bias_correction2: Scalar, hessian_power: float, eps: float,
                  found_inf: Optional[Tensor] = None, wrote_nonfinite: Optional[Tensor] = None,
                  backend: str = "auto") -> None:
    """SASSHA's update (leaving the perturbed point first when ``perturbations`` is given)."""
    _ops(backend, params).sassha_update(
        params, grads, exp_avgs, exp_hessians, perturbations, lr=lr, weight_decay=weight_decay,
        beta1=beta1, bias_correction1=bias_correction1, bias_correction2=bias_correction2,
        hessian_power=hessian_power, eps=eps, found_inf=found_inf,
        wrote_nonfinite=wrote_nonfinite)


def hessian_ema(exp_hessians: List[Tensor], hessians: List[Tensor], beta2: float, *,
                found_inf: Optional[Tensor] = None, wrote_nonfinite: Optional[Tensor] = None,
                backend: str = "auto") -> None:
    """D = beta2 * D + (1 - beta2) * |h|."""
    _ops(backend, exp_hessians).hessian_ema(exp_hessians, hessians, beta2, found_inf=found_inf,
                                            wrote_nonfinite=wrote_nonfinite)


def msassha_update(params: List[Tensor], grads: List[Tensor], exp_avgs: List[Tensor],
                   exp_hessians: List[Tensor], *, norm_factor: Scalar, lr: Scalar,
                   weight_decay: float, beta1: float, bias_correction1: Scalar,
                   bias_correction2: Scalar, hessian_power: float, eps: float,
                   found_inf: Optional[Tensor] = None, wrote_nonfinite: Optional[Tensor] = None,
                   backend: str = "auto") -> Tensor:
    """M-SASSHA's update from the perturbed point; returns the new momenta's sum of
    squares (a 0-d tensor) for the next norm factor."""
    return _ops(backend, params).msassha_update(
        params, grads, exp_avgs, exp_hessians, norm_factor=norm_factor, lr=lr,
        weight_decay=weight_decay, beta1=beta1, bias_correction1=bias_correction1,
        bias_correction2=bias_correction2, hessian_power=hessian_power, eps=eps,
        found_inf=found_inf, wrote_nonfinite=wrote_nonfinite)


def add_scaled(params: List[Tensor], tensors: List[Tensor], alpha: Scalar, *,
               backend: str = "auto") -> None:
    """p += alpha * t."""
    _ops(backend, params).add_scaled(params, tensors, alpha)
