"""Backends: interchangeable implementations of the fused SASSHA ops.

The optimizer frontend knows the algorithm; a backend only knows how to run the ops in
``OPS`` over lists of tensors. ``reference.py`` states each op's contract. ``OP_TABLE`` maps
every op to its implementation in every backend that can run here.

A backend module defines every name in ``OPS`` plus:
  ``unavailable_reason() -> Optional[str]``: None when usable in this process, else why not;
  ``supports(device: torch.device) -> bool``: whether it runs on tensors of that device;
  ``supports_dtype(dtype: torch.dtype) -> bool``: whether it runs with parameters of that
  dtype (every backend runs float32, bfloat16 and float16; some also float64).
"""
import importlib
from types import ModuleType
from typing import Callable, Dict, NamedTuple, Optional, Tuple

import torch

from .reference import compute_dtype as state_dtype  # noqa: F401 (the frontend's state dtype)

OPS = ("global_norm", "perturb", "sassha_update", "hessian_ema", "msassha_update", "add_scaled")

BACKEND_MODULES: Dict[str, str] = {
    "cpu": "sassha_fast.backends.cpu",
    "cuda": "sassha_fast.backends.cuda",
    "triton": "sassha_fast.backends.triton",
    "foreach": "sassha_fast.backends.foreach",
    "reference": "sassha_fast.backends.reference",
}


# What "auto" picks: the first backend of the device type's list that can run here.
AUTO_ORDER: Dict[str, Tuple[str, ...]] = {
    "cpu": ("cpu", "foreach"),
    "cuda": ("cuda", "triton", "foreach"),
}
AUTO_FALLBACK = ("foreach",)


class Availability(NamedTuple):
    available: bool
    reason: str  # "available", or why the backend cannot be used here

    def __repr__(self) -> str:
        return self.reason


def _load(name: str) -> ModuleType:
    if name not in BACKEND_MODULES:
        raise ValueError(f"Invalid backend: {name!r} (choose from 'auto', "
                         + ", ".join(repr(b) for b in BACKEND_MODULES) + ")")
    return importlib.import_module(BACKEND_MODULES[name])


def _unavailable_reason(name: str) -> Optional[str]:
    try:
        module = _load(name)
    except ImportError as exc:
        return f"cannot import {BACKEND_MODULES[name]}: {exc}"
    reason = getattr(module, "unavailable_reason", lambda: None)()
    if reason is None:
        missing = [attr for attr in OPS + ("supports", "supports_dtype")
                   if not callable(getattr(module, attr, None))]
        if missing:
            return "does not implement " + ", ".join(missing)
    return reason


def available_backends() -> Dict[str, Availability]:
    """Every backend name, with whether it can run in this process and, if not, why."""
    report = {}
    for name in BACKEND_MODULES:
        reason = _unavailable_reason(name)
        report[name] = Availability(reason is None, reason or "available")
    return report


def _build_op_table() -> Dict[str, Dict[str, Callable]]:
    table: Dict[str, Dict[str, Callable]] = {op: {} for op in OPS}
    for name in BACKEND_MODULES:
        if _unavailable_reason(name) is None:
            module = _load(name)
            for op in OPS:
                table[op][name] = getattr(module, op)
    return table


_op_table: Optional[Dict[str, Dict[str, Callable]]] = None


def op_table() -> Dict[str, Dict[str, Callable]]:
    """``{op: {backend: implementation}}`` for every backend usable here (built once)."""
    global _op_table
    if _op_table is None:
        _op_table = _build_op_table()
    return _op_table


class Ops(NamedTuple):
    """The ops of one backend, bound for a frontend to call."""
    name: str
    global_norm: Callable
    perturb: Callable
    sassha_update: Callable
    hessian_ema: Callable
    msassha_update: Callable
    add_scaled: Callable


def _ops(name: str) -> Ops:
    table = op_table()
    return Ops(name, *(table[op][name] for op in OPS))


def _runs(name: str, device: torch.device, dtype: torch.dtype) -> bool:
    module = _load(name)
    return module.supports(device) and module.supports_dtype(dtype)


def resolve(name: str, device: torch.device, dtype: torch.dtype = torch.float32) -> Ops:
    """The ops of backend ``name`` for parameters of ``dtype`` on ``device`` (the best
    backend for both when ``name == "auto"``).

    Raises ValueError for an unknown name and RuntimeError for a backend that cannot run
    here, on ``device`` or with ``dtype``, saying why and what to use instead."""
    if name == "auto":
        for candidate in AUTO_ORDER.get(device.type, AUTO_FALLBACK):
            if candidate in op_table()["perturb"] and _runs(candidate, device, dtype):
                return _ops(candidate)
        return _ops("reference")
    reason = _unavailable_reason(name)
    if reason is not None:
        raise RuntimeError(f"sassha_fast backend {name!r} is unavailable: {reason}")
    if not _load(name).supports(device):
        raise RuntimeError(f"sassha_fast backend {name!r} does not run on {device.type} tensors")
    if not _load(name).supports_dtype(dtype):
        instead = [b for b in op_table()["perturb"] if _runs(b, device, dtype)]
        raise RuntimeError(f"sassha_fast backend {name!r} does not run with {dtype} "
                           f"parameters; use backend='auto' or one of "
                           + ", ".join(repr(b) for b in instead) + f" for them on {device.type}")
    return _ops(name)


def check_name(name: str) -> None:
    """ValueError for an unknown backend name, RuntimeError for one that cannot run here."""
    if name == "auto":
        return
    if name not in BACKEND_MODULES:
        _load(name)  # raises the ValueError that lists the valid names
    reason = _unavailable_reason(name)
    if reason is not None:
        raise RuntimeError(f"sassha_fast backend {name!r} is unavailable: {reason}")
