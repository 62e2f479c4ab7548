"""The ``nonfinite`` policy: whether a step's gradients and Hessian estimates (and the first
pass's gradients, for SASSHA) hold inf/NaN, found as one flag without reading the tensors on
the host, and the message that names the first offending tensor."""
from typing import Callable, List, Optional, Tuple

import torch
from torch import Tensor

from . import amp

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

    def found_inf(self, norms: Callable[[], Tuple[Tensor, Tensor]], home: torch.device,
                  scaler, optimizer) -> Optional[Tensor]:
        """1.0 (a 0-d float32 tensor on ``home``, the first parameter's device) when the
        step's gradients or Hessian estimates (``norms()``: their norms), or the first pass's
        gradients, hold inf/NaN on some rank, else 0.0; reported to the scaler. None when
        nothing is checked. Consumes what the first pass left."""
        first_pass_nonfinite, self.first_pass_nonfinite = self.first_pass_nonfinite, False
        first_pass_found_inf, self.first_pass_found_inf = self.first_pass_found_inf, None
        self.origin, self.first_pass_origin = self.first_pass_origin, None
        if not self.checks(scaler):
            return None
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

    def reset(self) -> None:
        """Forget the first pass (a checkpoint was loaded)."""
        self.first_pass_nonfinite = False
        self.first_pass_found_inf = None
        self.first_pass_origin = self.origin = None


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
