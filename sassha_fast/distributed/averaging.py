"""Averaging across data-parallel ranks, for what DistributedDataParallel cannot average.

DDP's hooks see ordinary backward passes only: a Hessian-vector product goes through
``torch.autograd.grad``, and a ``create_graph=True`` backward fails inside DDP's reducer (so
it runs under ``model.no_sync()``). The optimizer averages those tensors itself, with one
all-reduce per bucket of flattened tensors rather than one per tensor.
"""
from typing import Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
from torch import Tensor
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from .dtensor import is_dtensor

# Large enough to amortise each collective's latency, small enough that the flat copy of a
# bucket stays a fraction of the gradients' memory.
BUCKET_BYTES = 32 * 2 ** 20


class Averager:
    """Means (``mean=False``: sums, the authors' ``grad_reduce='sum'``) over the ranks of
    ``process_group`` (None: the default group, once ``torch.distributed`` is
    initialised). Does nothing in a single process."""

    def __init__(self, process_group=None, bucket_bytes: int = BUCKET_BYTES,
                 mean: bool = True):
        self.process_group = process_group
        self.bucket_bytes = bucket_bytes
        self.mean = mean

    def world_size(self) -> int:
        if not (dist.is_available() and dist.is_initialized()):
            return 1
        return dist.get_world_size(self.process_group)

    @property
    def active(self) -> bool:
        return self.world_size() > 1

    @torch.no_grad()
    def average_(self, tensors: List[Tensor]) -> None:
        """Replace every tensor by its mean (or sum) over the ranks. Every rank must pass
        tensors of the same shapes, dtypes and order (as DDP requires of the parameters)."""
        world = self.world_size()
        # A DTensor's gradient was reduced by FSDP / tensor parallelism, and what is derived
        # from it (a finite-difference Hessian estimate) is global already.
        tensors = [t for t in tensors if not is_dtensor(t)]
        if world == 1 or not tensors:
            return
        pending = []
        for bucket in self._buckets(tensors):
            # Dividing first keeps a low-precision sum from overflowing (as DDP does).
            flat = _flatten_dense_tensors(bucket)
            if self.mean:
                flat.div_(world)
            pending.append((bucket, flat, dist.all_reduce(flat, group=self.process_group,
                                                          async_op=True)))
        for bucket, flat, work in pending:
            work.wait()
            for tensor, mean in zip(bucket, _unflatten_dense_tensors(flat, bucket)):
                tensor.copy_(mean)

    def _buckets(self, tensors: List[Tensor]) -> List[List[Tensor]]:
        """Tensors of one device and dtype, in order, cut where a bucket would exceed
        ``bucket_bytes`` (a larger tensor gets a bucket of its own)."""
        open_buckets: Dict[Tuple[torch.device, torch.dtype], List[Tensor]] = {}
        sizes: Dict[Tuple[torch.device, torch.dtype], int] = {}
        done: List[List[Tensor]] = []
        for t in tensors:
            key = (t.device, t.dtype)
            nbytes = t.numel() * t.element_size()
            if key in open_buckets and sizes[key] + nbytes > self.bucket_bytes:
                done.append(open_buckets.pop(key))
            if key not in open_buckets:
                open_buckets[key], sizes[key] = [], 0
            open_buckets[key].append(t)
            sizes[key] += nbytes
        return done + list(open_buckets.values())

    def any(self, flag: Tensor) -> Tensor:
        """``flag`` (a 0-d float tensor, nonzero meaning true) or-ed over the ranks."""
        if self.active:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.process_group)
        return flag


def check_process_group(process_group: Optional[object]) -> None:
    if process_group is None:
        return
    if not (dist.is_available() and isinstance(process_group, dist.ProcessGroup)):
        raise ValueError(f"Invalid process_group: {process_group!r} (expected None or a "
                         "torch.distributed.ProcessGroup)")
