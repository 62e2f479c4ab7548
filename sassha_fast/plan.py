"""The work of one step as the optimizers pass it around (which parameters take part, with
which state and Hessian estimate, split into op calls), and the small helpers the op calls
share."""
from collections import OrderedDict
from typing import Callable, Dict, FrozenSet, Iterable, List, NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor

from . import backends, step_counters


class Entry(NamedTuple):
    """A parameter that takes part in this step."""
    param: Tensor
    state: Optional[dict]  # None until the step is known to be applied
    hessian_now: bool  # a Hessian estimate was computed for it in this step


class Bucket(NamedTuple):
    """Parameters of one group that one op call updates: same device, dtype, step count,
    Hessian refresh, second bias correction and subclass-specific ``extra``. On the device
    path the counters are 0-d tensors and ``found_inf`` is the ops' skip flag."""
    ops: "backends.Ops"
    params: List[Tensor]
    exp_avgs: List[Tensor]
    exp_hessians: List[Tensor]
    step: Union[int, Tensor]
    bias_correction2: Union[float, Tensor]
    extra: object
    found_inf: Optional[Tensor]

    def scalar(self, value):
        """``value`` as the ops take it for these parameters."""
        return kernel_scalar(value, self.params[0].device, self.params[0].dtype)

    def bias_correction1(self, beta1: float):
        return self.scalar(step_counters.bias_correction1(self.step, beta1))


class Plan(NamedTuple):
    """The work of one step, decided before anything is modified."""
    groups: List[Tuple[dict, List[Entry]]]
    hessians: Dict[Tensor, Tensor]
    rademacher_before: Optional[dict]  # generator states before this step's draws
    # Parameters whose gradients carried a graph (set_hessian() detaches them).
    graph_params: FrozenSet[Tensor] = frozenset()

    def params(self) -> List[Tensor]:
        return [entry.param for _, entries in self.groups for entry in entries]


def buckets(items: Iterable, key: Callable) -> "OrderedDict":
    """Items grouped by ``key(item)``, in first-seen order (each bucket is one op call)."""
    items = list(items)
    keys = [key(item) for item in items]
    grouped: "OrderedDict" = OrderedDict()
    if keys and keys.count(keys[0]) == len(keys):  # the common case: one bucket
        grouped[keys[0]] = items
        return grouped
    for item, item_key in zip(items, keys):
        grouped.setdefault(item_key, []).append(item)
    return grouped


def group_scalars(group: dict, hessian_power: Optional[float]) -> Tuple[float, float, float]:
    """(beta1, beta2, power) of a group for this step."""
    beta1, beta2 = group["betas"]
    return beta1, beta2, group["hessian_power"] if hessian_power is None else hessian_power


def kernel_scalar(value, device: torch.device, dtype: torch.dtype):
    """A per-step scalar as the ops take it for parameters of ``device`` and ``dtype``: a
    Python float as it is, a tensor as a 0-d float32 tensor there (float64 for float64
    parameters)."""
    if not isinstance(value, Tensor):
        return value
    return value.to(device=device, dtype=backends.state_dtype(dtype))


def found_inf_argument(flag: Optional[Tensor]) -> dict:
    """The ops' ``found_inf`` keyword, passed only when there is a flag."""
    return {} if flag is None else {"found_inf": flag}


def sqrt_of_sum(squares: List[Tensor]) -> Tensor:
    """sqrt of a sum of 0-d tensors that may live on different devices."""
    device = squares[0].device
    return torch.stack([s.to(device) for s in squares]).sum().sqrt()
