"""DTensor parameters (FSDP2's ``fully_shard``, tensor parallelism): the fused ops run on each
rank's local shard, and every sum over parameters (norms, M-SASSHA's sum of squares) is
completed over the ranks that hold the other shards.

A backend only sees plain tensors: ``local_ops`` wraps a backend's ops so that DTensor
arguments arrive as their local shards and reductions come back global. Optimizers without
DTensor parameters never go through this module, so their hot path does not pay for it.
"""
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
from torch import Tensor

try:
    from torch.distributed.tensor import DTensor, Replicate, Shard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
except ImportError:  # a torch built without distributed support has no DTensor
    DTensor = None


def is_dtensor(t: object) -> bool:
    return DTensor is not None and isinstance(t, DTensor)


def any_dtensor(params) -> bool:
    return DTensor is not None and any(isinstance(p, DTensor) for p in params)


def check_placements(p: Tensor) -> None:
    """Shards and replicas are supported; a pending reduction (Partial) is not a parameter."""
    for placement in p.placements:
        if not isinstance(placement, (Shard, Replicate)):
            raise ValueError(
                f"sassha_fast supports DTensor parameters placed with Shard or Replicate, got "
                f"{placement} (parameter of shape {tuple(p.shape)} on {p.device_mesh})")


def local(t: Optional[Tensor]) -> Optional[Tensor]:
    """The local shard of a DTensor (writing into it writes the DTensor), else ``t``."""
    return t.to_local() if is_dtensor(t) else t


def _locals(value):
    if isinstance(value, (list, tuple)):
        return [local(t) for t in value]
    return local(value)


# The ranks whose shards must be summed: for each mesh dimension along which the tensor is
# sharded, that dimension's process group (replicated dimensions hold copies: not summed).
ReductionKey = Tuple[object, Tuple[int, ...]]


def _reduction_key(t: Tensor) -> Optional[ReductionKey]:
    if not is_dtensor(t):
        return None
    dims = tuple(i for i, placement in enumerate(t.placements) if isinstance(placement, Shard))
    return (t.device_mesh, dims) if dims else None


def _by_reduction_key(tensors: List[Tensor]) -> Dict[Optional[ReductionKey], List[int]]:
    """Indices of ``tensors`` grouped by the ranks their sums must be completed over."""
    groups: Dict[Optional[ReductionKey], List[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault(_reduction_key(t), []).append(i)
    return groups


def _sum_over_shards(square: Tensor, key: Optional[ReductionKey]) -> Tensor:
    if key is not None:
        mesh, dims = key
        for dim in dims:
            dist.all_reduce(square, group=mesh.get_group(dim))
    return square


def _sum_of_squares(norm: Callable, tensors: List[Tensor],
                    weights: Optional[List[Tensor]]) -> Tensor:
    """Global sum of squares of ``tensors`` (weighted as ``global_norm`` weights them)."""
    total = None
    for key, indices in _by_reduction_key(tensors).items():
        square = norm([local(tensors[i]) for i in indices],
                      None if weights is None else [local(weights[i]) for i in indices]).square()
        square = _sum_over_shards(square, key)
        total = square if total is None else total + square.to(total.device)
    return total


def local_ops(ops):
    """``ops`` (a ``backends.Ops``) taking DTensors: shards in, global reductions out."""
    def shards_in(op: Callable) -> Callable:
        def run(*args, **kwargs):
            return op(*[_locals(a) for a in args], **{k: _locals(v) for k, v in kwargs.items()})
        return run

    def global_norm(tensors: List[Tensor], weights: Optional[List[Tensor]] = None,
                    **kwargs) -> Tensor:
        if not tensors:
            return ops.global_norm(tensors, weights, **kwargs)
        return _sum_of_squares(lambda ts, ws: ops.global_norm(ts, ws, **kwargs),
                               tensors, weights).sqrt()

    def msassha_update(params: List[Tensor], grads: List[Tensor], exp_avgs: List[Tensor],
                       exp_hessians: List[Tensor], **kwargs) -> Tensor:
        # Each call's sum of squares covers this rank's shards; complete it over the mesh.
        total = None
        for key, indices in _by_reduction_key(params).items():
            lists = [[local(ts[i]) for i in indices]
                     for ts in (params, grads, exp_avgs, exp_hessians)]
            square = _sum_over_shards(
                ops.msassha_update(*lists, **{k: _locals(v) for k, v in kwargs.items()}), key)
            total = square if total is None else total + square
        return ops.msassha_update([], [], [], [], **kwargs) if total is None else total

    wrapped = {name: shards_in(getattr(ops, name)) for name in ops._fields if name != "name"}
    wrapped.update(global_norm=global_norm, msassha_update=msassha_update)
    return ops._replace(**wrapped)


def draw_like(p: Tensor, draw_full: Callable[[torch.Size], Tensor]) -> Tensor:
    """A random tensor for DTensor ``p`` that equals a single process's draw: the whole
    tensor is drawn (every rank draws the same, from the same seeded generator) and each rank
    keeps its shard."""
    full = draw_full(p.shape)
    shape, offset = compute_local_shape_and_global_offset(p.shape, p.device_mesh, p.placements)
    shard = full[tuple(slice(o, o + s) for o, s in zip(offset, shape))]
    return DTensor.from_local(shard.contiguous(), p.device_mesh, p.placements,
                              run_check=False, shape=p.shape, stride=p.stride())
