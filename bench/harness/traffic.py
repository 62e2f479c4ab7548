"""The useful memory traffic of each benchmarked method: the bytes it must move, whatever
its implementation does (so GB/s compares implementations of the same work).

A method is a sequence of passes over the parameters. Passes are separated by a true data
dependency (a global norm must be complete before anything is scaled by it; the forward and
backward passes of the model run between a perturbation and the step), so no
implementation can merge them. Within a pass each tensor is counted once when read and
once when written, however many times an implementation touches it.

Tensor roles, per parameter element:
  p   the parameter           g   its gradient (g1: first pass, g2: at the perturbed point)
  e   a stored perturbation   h   a Hessian-diagonal estimate
  m, v, d, buf   optimizer state (first moment, second moment / Hessian EMA, momentum)
p, g, g1, g2, e and h have the parameter's dtype; the state is fp32 for SASSHA and
M-SASSHA (the package keeps it fp32) and the parameter's dtype for torch's AdamW and SGD.
"""
from typing import Dict, NamedTuple, Tuple

import torch

STATE_ROLES = frozenset({"m", "v", "d", "buf"})


class Pass(NamedTuple):
    reads: Tuple[str, ...]
    writes: Tuple[str, ...]


def _pass(reads: str, writes: str = "") -> Pass:
    return Pass(tuple(reads.split()), tuple(writes.split()))


class Method(NamedTuple):
    passes: Tuple[Pass, ...]
    fp32_state: bool


# SAM's perturbation: the global norm of g1, then e = s * g1 stored and added to p.
_SAM_PERTURB = (_pass("g1"), _pass("p g1", "p e"))

METHODS: Dict[str, Method] = {
    # torch.optim.AdamW / SGD(momentum) on gradients already present: one pass.
    "adamw": Method((_pass("p g m v", "p m v"),), fp32_state=False),
    "sgd": Method((_pass("p g buf", "p buf"),), fp32_state=False),
    # SAM's optimizer work per iteration: perturb, then leave x + e and take the base step
    # (one pass at best: p - e is what the base step reads).
    "sam_adamw": Method(_SAM_PERTURB + (_pass("p e g2 m v", "p m v"),), fp32_state=False),
    "sam_sgd": Method(_SAM_PERTURB + (_pass("p e g2 buf", "p buf"),), fp32_state=False),
    # SASSHA, non-Hessian iteration: norm of g1; e = s * g1 (into g1's buffer), p += e; then
    # the update that also leaves x + e. A Hessian iteration adds "hessian_ema".
    "sassha": Method(_SAM_PERTURB + (_pass("p e g2 m d", "p m"),), fp32_state=True),
    # M-SASSHA, non-Hessian iteration: leave the perturbed point and update (the norm of
    # the new m reduced while it is written), then move to the new perturbed point.
    "msassha": Method((_pass("p g m d", "p m"), _pass("p m", "p")), fp32_state=True),
    # The backend ops one by one (ops suite).
    "global_norm": Method((_pass("g"),), fp32_state=True),
    "perturb": Method((_pass("p g", "p e"),), fp32_state=True),
    "sassha_update": Method((_pass("p e g m d", "p m"),), fp32_state=True),
    "hessian_ema": Method((_pass("d h", "d"),), fp32_state=True),
    # The squared norm of the new m is reduced while it is written: no extra pass.
    "msassha_update": Method((_pass("p g m d", "p m"),), fp32_state=True),
    "add_scaled": Method((_pass("p m", "p"),), fp32_state=True),
    # The yardstick: read one buffer, write another.
    "copy": Method((_pass("p", "e"),), fp32_state=False),
}


def bytes_per_element(method: str, param_dtype: torch.dtype = torch.float32) -> int:
    """Bytes ``method`` must move per parameter element."""
    if method not in METHODS:
        raise ValueError(f"no traffic model for {method!r} (known: {', '.join(METHODS)})")
    spec = METHODS[method]
    param_size = torch.empty((), dtype=param_dtype).element_size()
    total = 0
    for one_pass in spec.passes:
        for role in one_pass.reads + one_pass.writes:
            total += 4 if role in STATE_ROLES and spec.fp32_state else param_size
    return total


def traffic_bytes(method: str, numel: int, param_dtype: torch.dtype = torch.float32) -> int:
    """Bytes ``method`` must move for ``numel`` parameter elements."""
    return bytes_per_element(method, param_dtype) * numel


def describe() -> str:
    """The model as text: one line per method (for the results file)."""
    lines = []
    for name, spec in METHODS.items():
        passes = "; ".join(f"read {' '.join(s.reads)}" + (f", write {' '.join(s.writes)}"
                                                          if s.writes else "")
                           for s in spec.passes)
        lines.append(f"{name}: {passes} = {bytes_per_element(name)} B/element in fp32")
    return "\n".join(lines)
