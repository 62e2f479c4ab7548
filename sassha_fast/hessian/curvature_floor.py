"""An opt-in guard against near-zero curvature (``curvature_floor``).

A weight whose Hessian diagonal estimate is zero (a ReLU unit dead on the Hessian batch
gives exactly zero for all its weights) gets the denominator ``eps`` alone, so until the
next Hessian refresh it moves by ``lr * m / eps``: with the default ``eps = 1e-4``, thousands
of times its momentum. The guard raises each tensor's Hessian EMA ``D`` to at least
``curvature_floor`` times that tensor's mean, right after the EMA on Hessian steps: a
weight without curvature then steps at most 1/sqrt(floor) times as far (power 0.5) as one
of the tensor's mean curvature with the same momentum, and steps without a Hessian refresh
cost nothing extra. Default 0: off, as the authors'
code. ``bench/studies/floor_choice.py`` is the measurement that chose it and its value.
"""
import math
import numbers
from typing import List, Optional

import torch
from torch import Tensor


def check_curvature_floor(value) -> None:
    if not (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"Invalid curvature_floor value: {value} (expected 0 <= floor <= 1)")


def floor_hessian_(exp_hessians: List[Tensor], floor: float,
                   found_inf: Optional[Tensor] = None) -> None:
    """D = max(D, floor * mean(D)) for each tensor, in place, with no host synchronisation
    (the means stay on the device as 0-d tensors). A set ``found_inf`` (a skipped step)
    makes every floor 0, which leaves D (>= 0) as it is."""
    if floor == 0.0:
        return
    nonempty = [d for d in exp_hessians if d.numel()]
    if not nonempty:
        return
    sums = torch._foreach_norm(nonempty, 1)  # D >= 0, so its L1 norm is its sum
    floors = torch._foreach_mul(sums, [floor / d.numel() for d in nonempty])
    if found_inf is not None:
        torch._foreach_mul_(floors, (1 - found_inf).to(floors[0].dtype))
    torch._foreach_maximum_(nonempty, floors)
