"""The ``nonfinite`` policy: whether a step's gradients and Hessian estimates (and the first
pass's gradients, for SASSHA) hold inf/NaN, found as one flag without reading the tensors on
the host, whether the update then wrote inf/NaN (the update ops' ``wrote_nonfinite`` flags),
and the messages that name the first offending tensor."""
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from . import amp
from .authors_format import STATE_TENSOR_KEYS
from .skips import UPDATE_WROTE_NONFINITE, any_set

NONFINITE_POLICIES = ("skip", "raise", "ignore")


def check_policy(policy) -> None:
    if policy not in NONFINITE_POLICIES:
        raise ValueError(f"Invalid nonfinite value: {policy!r} (choose from "
                         + ", ".join(repr(p) for p in NONFINITE_POLICIES) + ")")


class NonfiniteCheck:
    """One optimizer's policy, and what SASSHA's first pass found for the step that follows
    it: on the host path whether it held inf/NaN, on the device path its flag."""

    def __init__(self, policy: str, averager):
        self.policy = policy
        self._averager = averager  # the flag is or-ed over the ranks
        self.first_pass_nonfinite = False
        self.first_pass_found_inf: Optional[Tensor] = None
        # Host path: what held inf/NaN in the first pass, then in the step being taken (for
        # the skip reports and nonfinite="raise").
        self.first_pass_origin: Optional[str] = None
        self.origin: Optional[str] = None

    def checks(self, scaler) -> bool:
        """Whether anything is checked (a GradScaler always needs its overflow flag)."""
        return self.policy != "ignore" or amp.enabled(scaler)

    def raises(self, scaler) -> bool:
        """``nonfinite="raise"``, which a GradScaler overrides: its overflows are skipped."""
        return self.policy == "raise" and not amp.enabled(scaler)

    def found_inf(self, norms: Callable[[], Tuple[Tensor, Tensor]],
                  unscaled_found_inf: Optional[Tensor], home: torch.device, scaler,
                  optimizer) -> Optional[Tensor]:
        """1.0 (a 0-d float32 tensor on ``home``, the first parameter's device) when the
        step's gradients or Hessian estimates, or the first pass's gradients, hold inf/NaN
        on some rank, else 0.0; reported to the scaler. None when nothing is checked.
        Consumes what the first pass left. With a GradScaler the pass that unscaled them
        found it (``unscaled_found_inf``); without one, ``norms()`` (their norms) reads
        them once more."""
        first_pass_nonfinite, self.first_pass_nonfinite = self.first_pass_nonfinite, False
        first_pass_found_inf, self.first_pass_found_inf = self.first_pass_found_inf, None
        self.origin, self.first_pass_origin = self.first_pass_origin, None
        if not self.checks(scaler):
            return None
        if unscaled_found_inf is not None:
            found_inf = unscaled_found_inf.to(home)
        else:
            norm, hessian_norm = norms()
            # On a parameter's device: NCCL reduces no CPU tensor.
            found_inf = (~torch.isfinite(norm.to(home) + hessian_norm.to(home))).float()
        if first_pass_nonfinite:
            found_inf.fill_(1.0)
        if first_pass_found_inf is not None:
            found_inf = torch.maximum(found_inf, first_pass_found_inf)
        found_inf = self._averager.any(found_inf)
        amp.record_found_inf(scaler, optimizer, found_inf)
        return found_inf

    def name_origin(self, param_groups: List[dict], params: List[Tensor],
                    hessians: Dict[Tensor, Tensor]) -> None:
        """Name what held inf/NaN in a step being skipped, unless this rank's gradients and
        estimates are finite and the first pass already named its own."""
        found = nonfinite_message(param_groups, [(p, "gradient", p.grad) for p in params]
                                  + [(p, "Hessian estimate", h) for p, h in hessians.items()])
        if found != ON_ANOTHER_RANK or self.origin is None:
            self.origin = found

    def update_flags(self) -> "UpdateFlags":
        """The ``wrote_nonfinite`` flags of this step's update ops (none with "ignore")."""
        return UpdateFlags(self.policy != "ignore")

    def after_update(self, flags: "UpdateFlags", home: torch.device, path, raises: bool,
                     locate: Callable[[], str]) -> None:
        """Count an applied update that wrote inf/NaN: read now where the path reads its
        flags (the host path; ``nonfinite="raise"``, which raises naming the tensor), else
        counted on the device and reported with the skip counts."""
        flag = flags.combined(home)
        if flag is None:
            return
        if not path.reads_flags(raises):
            path.skips.record_written(flag)
            return
        wrote_nonfinite = bool(path.read(flag))
        if wrote_nonfinite and raises:
            raise FloatingPointError(f"this step's update wrote inf or NaN: {locate()}. "
                                     + UPDATE_WROTE_NONFINITE)
        path.skips.record_written(wrote_nonfinite)

    def reset(self) -> None:
        """Forget the first pass (a checkpoint was loaded)."""
        self.first_pass_nonfinite = False
        self.first_pass_found_inf = None
        self.first_pass_origin = self.origin = None


class UpdateFlags:
    """One step's ``wrote_nonfinite`` flags: a zeroed 0-d float32 tensor per device, made
    when an update op of that device asks for it; None for every device when unchecked."""

    def __init__(self, checked: bool):
        self.checked = checked
        self.by_device: Dict[torch.device, Tensor] = {}

    def __call__(self, device: torch.device) -> Optional[Tensor]:
        if not self.checked:
            return None
        if device not in self.by_device:
            self.by_device[device] = torch.zeros((), dtype=torch.float32, device=device)
        return self.by_device[device]

    def combined(self, home: torch.device) -> Optional[Tensor]:
        """Whether any op set its flag, on ``home`` (None when no op was given one)."""
        if not self.by_device:
            return None
        return any_set(list(self.by_device.values()), home)


def nonfinite_state_message(param_groups: List[dict], state: dict) -> str:
    """Names the first parameter, or state tensor of a parameter, holding inf or NaN."""
    for g, group in enumerate(param_groups):
        for i, p in enumerate(group["params"]):
            saved = state.get(p, {})
            for what, tensor in [("", p)] + [(f"{key} of ", saved[key])
                                              for key in STATE_TENSOR_KEYS if key in saved]:
                if not torch.isfinite(tensor).all():
                    return (f"the {what}parameter {i} of group {g} (shape {tuple(p.shape)}) "
                            "holds inf or NaN")
    return "no parameter or state tensor holds inf or NaN any more"


ON_ANOTHER_RANK = ("a gradient or Hessian estimate on another rank holds inf or NaN; the step "
                   "was not applied")


def nonfinite_message(param_groups: List[dict], items: List[Tuple[Tensor, str, Tensor]]) -> str:
    """Names the first (parameter, what, tensor) whose tensor holds inf or NaN."""
    where = {id(p): (g, i) for g, group in enumerate(param_groups)
             for i, p in enumerate(group["params"])}
    for p, what, tensor in items:
        if not torch.isfinite(tensor).all():
            group, index = where[id(p)]
            return (f"the {what} of parameter {index} of group {group} (shape "
                    f"{tuple(p.shape)}) holds inf or NaN; the step was not applied")
    return ON_ANOTHER_RANK
