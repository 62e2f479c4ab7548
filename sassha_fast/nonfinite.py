"""Inf/NaN in a step: where the skip decision is made (on the host, which reads a flag, or on
the device, whose ops read it: no synchronisation, capturable in a CUDA graph), the check of
the step's gradients and Hessian estimates, and undoing an iteration skipped on the host.
A mixin of ``HessianOptimizer``; the skip counts are ``skipped_steps.SkipCounter``'s."""
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from . import amp
from .plan import Plan

NONFINITE_POLICIES = ("skip", "raise", "ignore")


class NonfiniteChecks:
    """The optimizer's ``nonfinite`` policy at work (see ``HessianOptimizer``)."""

    @property
    def device_path(self) -> bool:
        """Whether steps keep their skip decision, counters and norms on the device (no host
        synchronisation, capturable in a CUDA graph): ``capturable``, or, when None, whether
        the parameters are CUDA tensors."""
        if self.capturable is not None:
            return self.capturable
        return self._home_device.type == "cuda"

    def _reads_flags_on_host(self, scaler) -> bool:
        """The host path, and ``nonfinite="raise"``, which must read the flag to raise."""
        return not self.device_path or (self.nonfinite == "raise" and not amp.enabled(scaler))

    def _found_inf(self, plan: Plan, scaler) -> Optional[Tensor]:
        """1.0 (a 0-d float32 tensor on the first parameter's device) when the step's
        gradients or Hessian estimates, or the first pass's gradients, hold inf/NaN on some
        rank, else 0.0; reported to the scaler. None when nothing is checked."""
        first_pass_nonfinite, self._first_pass_nonfinite = self._first_pass_nonfinite, False
        first_pass_found_inf, self._first_pass_found_inf = self._first_pass_found_inf, None
        if self.nonfinite == "ignore" and not amp.enabled(scaler):
            return None
        params = plan.params()
        norm = self._global_norm(params, [p.grad for p in params], False)
        hessian_norm = self._global_norm(list(plan.hessians), list(plan.hessians.values()),
                                         False)
        # On a parameter's device: NCCL reduces no CPU tensor.
        device = self._home_device
        found_inf = (~torch.isfinite(norm.to(device) + hessian_norm.to(device))).float()
        if first_pass_nonfinite:
            found_inf.fill_(1.0)
        if first_pass_found_inf is not None:
            found_inf = torch.maximum(found_inf, first_pass_found_inf)
        found_inf = self._averager.any(found_inf)
        amp.record_found_inf(scaler, self, found_inf)
        return found_inf

    def _skip(self, plan: Plan, scaler) -> None:
        """Undo an iteration known on the host to hold inf/NaN: the parameters leave the
        perturbed point, the generator rewinds and no state moves; raise or count it."""
        params = plan.params()
        if plan.rademacher_before is not None:
            self._rademacher.load_state_dict(plan.rademacher_before)
        self._abandon_step()
        if self.nonfinite == "raise" and not amp.enabled(scaler):
            raise FloatingPointError(self._nonfinite_message(
                [(p, "gradient", p.grad) for p in params]
                + [(p, "Hessian estimate", h) for p, h in plan.hessians.items()]))
        self._skips.record(True)
        self._skips.tick()

    def _nonfinite_message(self, items: List[Tuple[Tensor, str, Tensor]]) -> str:
        """Names the first (parameter, what, tensor) whose tensor holds inf or NaN."""
        where = {id(p): (g, i) for g, group in enumerate(self.param_groups)
                 for i, p in enumerate(group["params"])}
        for p, what, tensor in items:
            if not torch.isfinite(tensor).all():
                group, index = where[id(p)]
                return (f"the {what} of parameter {index} of group {group} (shape "
                        f"{tuple(p.shape)}) holds inf or NaN; the step was not applied")
        return "a gradient or Hessian estimate on another rank holds inf or NaN; the step " \
               "was not applied"
