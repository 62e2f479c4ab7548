"""Per-parameter step counts and second bias corrections, on the host or on a device.

Host path: ``state["step"]`` is an int and ``state["bias_correction2"]`` a float; the
optimizer knows on the host whether a step is applied and advances them only then.

Device path (``capturable``): both are 0-d float64 tensors on the parameter's device, advanced
by ``1 - skip`` where ``skip`` is the device-resident skip flag, so that no step has to read
the flag on the host. float64 because ``1 - beta2 ** t`` with beta2 = 0.999 loses five
digits to cancellation in float32. Parameters whose counters have always moved together share
the same two tensors (a host fact: they were created by the same step and stepped in the same
iterations since), so the update ops are bucketed by tensor identity, never by a device value;
when only some of the sharing parameters take part in a step, those get a copy first.
"""
from typing import Callable, Dict, Hashable, List, Optional, Tuple

import torch
from torch import Tensor

Counters = Tuple[Tensor, Tensor]


def new_counters(device: torch.device) -> Counters:
    """(step, bias_correction2) of a state the device path creates: 0 and 0."""
    return (torch.zeros((), dtype=torch.float64, device=device),
            torch.zeros((), dtype=torch.float64, device=device))


def key(state: dict) -> Hashable:
    """Equal for states whose counters are equal (host values, or the shared tensors)."""
    step = state["step"]
    if isinstance(step, Tensor):
        return id(step)
    return step, state["bias_correction2"]


def unshare(states: List[dict], all_states: List[dict]) -> None:
    """Give the ``states`` taking part in this step their own counters where they share them
    with ``all_states`` that do not."""
    taking_part = {id(s) for s in states}
    outside = {id(s["step"]) for s in all_states
               if "step" in s and id(s) not in taking_part and isinstance(s["step"], Tensor)}
    copies: Dict[int, Counters] = {}
    for state in states:
        step = state["step"]
        if id(step) in outside:
            if id(step) not in copies:
                copies[id(step)] = (step.clone(), state["bias_correction2"].clone())
            state["step"], state["bias_correction2"] = copies[id(step)]


def advance(states: List[Tuple[dict, bool]], found_inf: Optional[Tensor],
            bias_correction2: Callable) -> Dict[Hashable, Optional[Tensor]]:
    """Advance the counters of the (state, hessian_now) pairs of one parameter group.

    ``bias_correction2(step)`` gives the value a Hessian step stores (a float or a float64
    tensor). Returns, for each counter ``key``, the flag the update ops get: None on the host
    path (the step is known to be applied); on the device path ``found_inf``, or, on a step
    without a Hessian estimate, also set while no estimate was ever applied (bias_correction2
    still 0: the first Hessian step was skipped, and dividing by it would blow the update up).
    """
    flags: Dict[Hashable, Optional[Tensor]] = {}
    for state, hessian_now in states:
        step = state["step"]
        if not isinstance(step, Tensor):
            state["step"] = step + 1
            if hessian_now:
                state["bias_correction2"] = bias_correction2(state["step"])
            continue
        if id(step) in flags:
            continue  # shared counters advance once
        current = state["bias_correction2"]
        skip = None if found_inf is None else found_inf.to(step.device)
        if not hessian_now:
            never_estimated = (current == 0).to(torch.float32)
            skip = never_estimated if skip is None else torch.maximum(skip, never_estimated)
        step.add_(1 if skip is None else 1 - skip)
        if hessian_now:
            fresh = bias_correction2(step)
            current.copy_(fresh if skip is None else torch.where(skip.bool(), current, fresh))
        flags[id(step)] = skip
    return flags


def bias_correction1(step, beta1: float):
    """1 - beta1 ** step; on the device path from step >= 1, so that a skipped first step
    (step still 0) hands the ops no division by zero."""
    if isinstance(step, Tensor):
        return 1 - beta1 ** step.clamp(min=1)
    return 1 - beta1 ** step


def load(entries: List[Tuple[int, Tensor, dict, dict]], on_device: bool) -> None:
    """Counters of freshly loaded states in the representation of the path in use.

    ``entries``: (group index, parameter, its state, the saved state it came from). The saved
    values are read (this synchronises, once, at load time); on the device path states with
    equal group, device, counters and Hessian schedule share tensors again."""
    shared: Dict[Hashable, Counters] = {}
    for group_index, p, state, saved in entries:
        if "step" not in saved or "bias_correction2" not in saved:
            continue  # no state yet, or the language-model variant's (no bias correction)
        step, correction = float(saved["step"]), float(saved["bias_correction2"])
        if not on_device:
            state["step"], state["bias_correction2"] = int(step), correction
            continue
        share = (group_index, p.device, step, correction, state.get("hessian_step"))
        if share not in shared:
            shared[share] = (torch.tensor(step, dtype=torch.float64, device=p.device),
                             torch.tensor(correction, dtype=torch.float64, device=p.device))
        state["step"], state["bias_correction2"] = shared[share]
