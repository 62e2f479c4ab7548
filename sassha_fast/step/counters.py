"""Where a step's bookkeeping lives: on the host, or on the parameters' device.

An optimizer picks one of the two paths when it is built (``capturable``, or, when that is
None, whether its first parameter is a CUDA tensor) and holds it; nothing else asks which
one it holds. A path owns the per-parameter step counts and second bias corrections, the
record of skipped steps, and the representation of M-SASSHA's norm factor.

Host path: ``state["step"]`` is an int and ``state["bias_correction2"]`` a float; the
optimizer knows on the host whether a step is applied and advances them only then.

Device path (what a CUDA graph can capture): both are 0-d float64 tensors on the parameter's
device, advanced by ``1 - skip`` where ``skip`` is the device-resident skip flag, so that no
step has to read the flag on the host. float64 because ``1 - beta2 ** t`` with beta2 = 0.999
loses five digits to cancellation in float32. Parameters whose counters have always moved
together share the same two tensors (a host fact: they were created by the same step and
stepped in the same iterations since), so the update ops are bucketed by tensor identity,
never by a device value; when only some of the sharing parameters take part in a step, those
get a copy first.
"""
import warnings
from typing import Callable, Dict, Hashable, List, Optional, Tuple, Union

import torch
from torch import Tensor

from .skips import SkipCounter, caller_stacklevel

Counters = Tuple[Tensor, Tensor]
# What a Hessian step stores as the second bias correction, from the new step count; None
# for an optimizer without one (the authors' language-model variant).
StoredCorrection = Optional[Callable[[Union[int, Tensor]], Union[float, Tensor]]]


class HostPath:
    """Counters, skip decisions and norm factors read and kept on the host."""

    on_device = False

    def __init__(self, skip_check_interval: int, max_consecutive_skips: Optional[int]):
        self.skips = SkipCounter(skip_check_interval, max_consecutive_skips)
        self._told_untraceable = False

    def read(self, value: Tensor) -> Union[bool, float]:
        """``value`` on the host. Under torch.compile each read breaks the graph; the first
        one says so, and what to build instead."""
        if torch.compiler.is_compiling() and not self._told_untraceable:
            self._tell_untraceable()
        return value.item()

    @torch.compiler.disable  # run, not traced: a warning in the compiled code's place
    def _tell_untraceable(self) -> None:
        self._told_untraceable = True
        warnings.warn("this optimizer keeps its skip decisions, counters and norms on the "
                      "host (capturable=False, the default for parameters that are not on a "
                      "CUDA device): torch.compile cannot trace its steps whole, each host "
                      "read breaks the graph. Build it with capturable=True for steps "
                      "without a graph break.", UserWarning, stacklevel=caller_stacklevel())

    def new_counters(self, device: torch.device, fresh: dict) -> Tuple[int, float]:
        """(step, bias_correction2) of a state created now."""
        return 0, 0.0

    def unshare(self, states: List[dict], all_states: List[dict]) -> None:
        """Host counters are never shared."""

    def reads_flags(self, raises: bool) -> bool:
        """Whether the step's skip decision is read on the host (always, here)."""
        return True

    @staticmethod
    def key(state: dict) -> Hashable:
        """Equal for states whose counters are equal (one op call serves them)."""
        return state["step"], state.get("bias_correction2")

    def advance(self, states: List[Tuple[dict, bool]], found_inf: Optional[Tensor],
                stored: StoredCorrection) -> Dict[Hashable, Optional[Tensor]]:
        """Advance the counters of the (state, hessian_now) pairs of one parameter group
        (the step is known to be applied); a Hessian step stores ``stored(step)``. Returns
        the flag the update ops get for each counter ``key``: None."""
        for state, hessian_now in states:
            state["step"] += 1
            if hessian_now and stored is not None:
                state["bias_correction2"] = stored(state["step"])
        return {}

    @staticmethod
    def bias_correction1(step: int, beta1: float) -> float:
        return 1 - beta1 ** step

    def load(self, entries: List[Tuple[int, Tensor, dict, dict]]) -> None:
        """Counters of freshly loaded states as ints and floats (see ``DevicePath.load``)."""
        for _, _, state, saved in _with_counters(entries):
            state["step"] = int(float(saved["step"]))
            state["bias_correction2"] = float(saved["bias_correction2"])

    @staticmethod
    def norm_factor(value, home: torch.device) -> float:
        """M-SASSHA's norm factor as this path keeps it: a float."""
        return float(value) if isinstance(value, Tensor) else value

    def momentum_norm(self, norm: Tensor, home: torch.device) -> float:
        """The momentum norm read on the host (float64 arithmetic from here)."""
        return self.read(norm)

    @staticmethod
    def store_norm_factor(group: dict, value: float) -> None:
        group["norm_factor"] = value

    @staticmethod
    def reported(count: Tensor) -> int:
        """A count for a report: read here, as everything on this path."""
        return int(count)


class DevicePath:
    """Counters, skip flags and norm factors kept on the device: no host synchronisation."""

    on_device = True

    def __init__(self, skip_check_interval: int, max_consecutive_skips: Optional[int]):
        self.skips = SkipCounter(skip_check_interval, max_consecutive_skips)

    def new_counters(self, device: torch.device, fresh: dict) -> Counters:
        """0 and 0 as float64 tensors, shared by the states one step creates (``fresh``:
        {device: counters} for that step)."""
        if device not in fresh:
            fresh[device] = (torch.zeros((), dtype=torch.float64, device=device),
                             torch.zeros((), dtype=torch.float64, device=device))
        return fresh[device]

    def unshare(self, states: List[dict], all_states: List[dict]) -> None:
        """Give the ``states`` taking part in this step their own counters where they share
        them with ``all_states`` that do not."""
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

    def reads_flags(self, raises: bool) -> bool:
        """Only when a set flag must raise (``NonfiniteCheck.raises``) is it read on the
        host, which raising needs."""
        return raises

    @staticmethod
    def read(value: Tensor) -> Union[bool, float]:
        """A flag read on the host, for ``nonfinite="raise"`` only (a graph break under
        torch.compile)."""
        return value.item()

    @staticmethod
    def key(state: dict) -> Hashable:
        return id(state["step"])

    def advance(self, states: List[Tuple[dict, bool]], found_inf: Optional[Tensor],
                stored: StoredCorrection) -> Dict[Hashable, Optional[Tensor]]:
        """As ``HostPath.advance``, by ``1 - skip``; the flag of each counter is
        ``found_inf``, or, on a step without a Hessian estimate, also set while no estimate
        was ever applied (bias_correction2 still 0: the first Hessian step was skipped, and
        dividing by it would blow the update up)."""
        flags: Dict[Hashable, Optional[Tensor]] = {}
        for state, hessian_now in states:
            step = state["step"]
            if id(step) in flags:
                continue  # shared counters advance once
            current = state["bias_correction2"]
            skip = None if found_inf is None else found_inf.to(step.device)
            if not hessian_now:
                never_estimated = (current == 0).to(torch.float32)
                skip = never_estimated if skip is None else torch.maximum(skip, never_estimated)
            step.add_(1 if skip is None else 1 - skip)
            if hessian_now:
                fresh = stored(step)
                current.copy_(fresh if skip is None else torch.where(skip.bool(), current, fresh))
            flags[id(step)] = skip
        return flags

    @staticmethod
    def bias_correction1(step: Tensor, beta1: float) -> Tensor:
        """From step >= 1, so that a skipped first step (step still 0) hands the ops no
        division by zero."""
        return 1 - beta1 ** step.clamp(min=1)

    def load(self, entries: List[Tuple[int, Tensor, dict, dict]]) -> None:
        """Counters of freshly loaded states as device tensors. ``entries``: (group index,
        parameter, its state, the saved state it came from). The saved values are read
        (this synchronises, once, at load time); states with equal group, device, counters
        and Hessian schedule share tensors again."""
        shared: Dict[Hashable, Counters] = {}
        for group_index, p, state, saved in _with_counters(entries):
            step, correction = float(saved["step"]), float(saved["bias_correction2"])
            share = (group_index, p.device, step, correction, state.get("hessian_step"))
            if share not in shared:
                shared[share] = (torch.tensor(step, dtype=torch.float64, device=p.device),
                                 torch.tensor(correction, dtype=torch.float64, device=p.device))
            state["step"], state["bias_correction2"] = shared[share]

    @staticmethod
    def norm_factor(value, home: torch.device) -> Tensor:
        """M-SASSHA's norm factor as a 0-d float64 tensor on the first parameter's device
        (a captured graph reads it there)."""
        if isinstance(value, Tensor):
            return value
        return torch.tensor(value, dtype=torch.float64, device=home)

    @staticmethod
    def momentum_norm(norm: Tensor, home: torch.device) -> Tensor:
        """The momentum norm kept on the device, in float64 as the host path computes."""
        return norm.to(home, torch.float64)

    @staticmethod
    def store_norm_factor(group: dict, value: Tensor) -> None:
        group["norm_factor"].copy_(value)  # in place: a captured graph reads it there

    @staticmethod
    def reported(count: Tensor) -> Tensor:
        """A count for a report: left on the device (reading it is the caller's choice)."""
        return count


def _with_counters(entries):
    # States without counters: none yet, or the language-model variant's (no bias correction).
    return [e for e in entries if "step" in e[3] and "bias_correction2" in e[3]]


def path_for(capturable: Optional[bool], home: torch.device, skip_check_interval: int,
             max_consecutive_skips: Optional[int]):
    """The path of an optimizer whose first parameter lives on ``home``."""
    on_device = home.type == "cuda" if capturable is None else capturable
    return (DevicePath if on_device else HostPath)(skip_check_interval, max_consecutive_skips)
