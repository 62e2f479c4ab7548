"""A step's plan split into op calls (``Bucket``), and the small helpers those calls share."""
from collections import OrderedDict
from typing import Callable, Iterable, Iterator, List, NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor

from .. import backends
from ..backends.reference import compute_dtype
from ..hessian.curvature_floor import floor_hessian_
from ..step.plan import Entry, Plan


class Bucket(NamedTuple):
    """Parameters of one group that one op call updates: same device, dtype, step count,
    Hessian refresh, stored second bias correction and optimizer-specific ``extra``. On the
    device path the counters are 0-d tensors and ``found_inf`` is the ops' skip flag."""
    ops: "backends.Ops"
    params: List[Tensor]
    exp_avgs: List[Tensor]
    exp_hessians: List[Tensor]
    step: Union[int, Tensor]
    bias_correction2: Union[float, Tensor, None]  # as stored (None: no bias correction)
    extra: object
    found_inf: Optional[Tensor]
    wrote_nonfinite: Optional[Tensor]  # the flag the update op sets when it stores inf/NaN
    path: object  # the optimizer's host or device path (step.counters)

    def scalar(self, value):
        """``value`` as the ops take it for these parameters."""
        return kernel_scalar(value, self.params[0].device, self.params[0].dtype)

    def bias_correction1(self, beta1: float):
        return self.path.bias_correction1(self.step, beta1)

    def flags(self) -> dict:
        """The update op's ``found_inf`` and ``wrote_nonfinite`` keywords, those it has."""
        return flag_arguments(self.found_inf, self.wrote_nonfinite)


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
    return value.to(device=device, dtype=compute_dtype(dtype))


def flag_arguments(found_inf: Optional[Tensor], wrote_nonfinite: Optional[Tensor] = None) -> dict:
    """The ops' ``found_inf`` and ``wrote_nonfinite`` keywords, passed only when given."""
    flags = {"found_inf": found_inf, "wrote_nonfinite": wrote_nonfinite}
    return {name: flag for name, flag in flags.items() if flag is not None}


def sqrt_of_sum(squares: List[Tensor]) -> Tensor:
    """sqrt of a sum of 0-d tensors that may live on different devices."""
    device = squares[0].device
    return torch.stack([s.to(device) for s in squares]).sum().sqrt()


def update_buckets(plan: Plan, entries: List[Entry], path, ops_of: Callable,
                   stored: Optional[Callable], beta2: float, curvature_floor: float,
                   found_inf: Optional[Tensor], written: Callable, extra: Callable = lambda p: None
                   ) -> Iterator[Bucket]:
    """A group's entries split into op calls after their step counters advanced on ``path``
    (and, on Hessian steps, ``stored(step)`` was kept as the second bias correction), each
    with its fresh Hessian estimates already folded into D, ready for the update op.
    ``ops_of(device, dtype)``: the optimizer's ops; ``written(device)``: the update ops'
    ``wrote_nonfinite`` flag there; ``extra(param)``: a further key."""
    flags = path.advance([(e.state, e.hessian_now) for e in entries], found_inf, stored)

    def key(entry):
        return (entry.param.device, entry.param.dtype, path.key(entry.state),
                entry.hessian_now, extra(entry.param))

    for (device, dtype, counters, hessian_now, extra_value), bucket in \
            buckets(entries, key).items():
        ops = ops_of(device, dtype)
        params = [e.param for e in bucket]
        exp_hessians = [e.state["exp_hessian_diag"] for e in bucket]
        flag, wrote_nonfinite = flags.get(counters), written(device)
        if hessian_now:
            # D = b2*D + (1-b2)*|h|, then the opt-in floor; neither moves D when skipped.
            ops.hessian_ema(exp_hessians, [plan.hessians[p] for p in params], beta2,
                            **flag_arguments(flag, wrote_nonfinite))
            floor_hessian_(exp_hessians, curvature_floor, flag)
        yield Bucket(ops, params, [e.state["exp_avg"] for e in bucket], exp_hessians,
                     bucket[0].state["step"], bucket[0].state.get("bias_correction2"),
                     extra_value, flag, wrote_nonfinite, path)
