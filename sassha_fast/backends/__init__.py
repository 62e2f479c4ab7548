"""Backends: interchangeable implementations of the fused SASSHA ops.

The optimizer frontend knows the algorithm; a backend only knows how to run the ops in
``OPS`` over lists of tensors. ``reference.py`` states each op's contract. This module is the
registry: which backends exist, which can run here (``available_backends``) and, in
``op_table()``, every op's implementation in each of those; ``sassha_fast.functional`` turns a
``backend=`` name into the ops that serve a device and dtype.

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

OPS = ("global_norm", "perturb", "sassha_update", "hessian_ema", "msassha_update", "add_scaled")

BACKEND_MODULES: Dict[str, str] = {
    "cpu": "sassha_fast.backends.cpu",
    "cuda": "sassha_fast.backends.cuda",
    "triton": "sassha_fast.backends.triton",
    "foreach": "sassha_fast.backends.foreach",
    "reference": "sassha_fast.backends.reference",
}

# Backends for tests only, loaded by name: never listed by ``available_backends()``, offered
# in an error message or picked by "auto".
TEST_ONLY_MODULES: Dict[str, str] = {
    "cuda_emulated": "sassha_fast.backends.cuda_emulated",
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


def load_module(name: str) -> ModuleType:
    path = BACKEND_MODULES.get(name) or TEST_ONLY_MODULES.get(name)
    if path is None:
        raise ValueError(f"Invalid backend: {name!r} (choose from 'auto', "
                         + ", ".join(repr(b) for b in BACKEND_MODULES) + ")")
    return importlib.import_module(path)


def unavailable_reason(name: str) -> Optional[str]:
    try:
        module = load_module(name)
    except ImportError as exc:
        return f"cannot import backend {name!r}: {exc}"
    reason = getattr(module, "unavailable_reason", lambda: None)()
    if reason is None:
        missing = [attr for attr in OPS + ("supports", "supports_dtype")
                   if not callable(getattr(module, attr, None))]
        if missing:
            return "does not implement " + ", ".join(missing)
    return reason


def available_backends(test_only: bool = False) -> Dict[str, Availability]:
    """Every backend name, with whether it can run in this process and, if not, why (with
    ``test_only``, the test-only backends too)."""
    report = {}
    for name in list(BACKEND_MODULES) + (list(TEST_ONLY_MODULES) if test_only else []):
        reason = unavailable_reason(name)
        report[name] = Availability(reason is None, reason or "available")
    return report


def _build_op_table() -> Dict[str, Dict[str, Callable]]:
    table: Dict[str, Dict[str, Callable]] = {op: {} for op in OPS}
    for name in BACKEND_MODULES:
        if unavailable_reason(name) is None:
            module = load_module(name)
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


def ops_of(name: str) -> Ops:
    if name in TEST_ONLY_MODULES:
        module = load_module(name)
        return Ops(name, *(getattr(module, op) for op in OPS))
    table = op_table()
    return Ops(name, *(table[op][name] for op in OPS))


def runs(name: str, device: torch.device, dtype: torch.dtype) -> bool:
    module = load_module(name)
    return module.supports(device) and module.supports_dtype(dtype)
