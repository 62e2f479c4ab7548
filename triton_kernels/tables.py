"""Device tables that let one kernel launch cover a whole list of tensors.

A table is one int64 tensor on the tensors' device, laid out as ``kernels.py`` reads it:
``[tensor of each block | block index in its tensor | numel of its tensor | addresses of
list 0 | addresses of list 1 | ...]``. Its contents are a function of the addresses and
sizes alone, so a table cached under exactly those is always valid, whoever owns the memory
now: a training loop that reuses its buffers builds its tables once.
"""
from collections import OrderedDict
from typing import Dict, List, NamedTuple, Sequence

import torch
from torch import Tensor

# Tables kept per process. A step of SASSHA uses a handful (one per op and bucket); the
# bound only stops a loop whose buffers move every step from growing the cache.
CACHE_SIZE = 128

# Block sizes (elements per program), see ``block_size``.
MIN_BLOCK = 128
MAX_BLOCK = 4096
MAX_BLOCK_INTERPRETED = 32768


class Table(NamedTuple):
    data: Tensor       # int64, on the tensors' device
    n_blocks: int
    n_tensors: int
    block: int         # elements per program (a power of two)
    num_warps: int
    aligned: bool      # every address is a multiple of 16 bytes


def block_size(max_numel: int, interpreted: bool) -> int:
    """Elements per program: the largest tensor's size rounded up to a power of two, within
    [MIN_BLOCK, MAX_BLOCK]. Large tensors then get enough programs to fill the GPU and small
    ones one short program each. The interpreter runs programs one after another, each
    block as numpy arrays, so there larger blocks (fewer programs) are much faster."""
    largest = MAX_BLOCK_INTERPRETED if interpreted else MAX_BLOCK
    return min(largest, max(MIN_BLOCK, 1 << max(0, max_numel - 1).bit_length()))


def num_warps(block: int) -> int:
    """Warps per program: 256 elements per warp (8 per thread: two 16-byte fp32 vectors),
    up to 8 warps."""
    return min(8, max(1, block // 256))


_cache: "OrderedDict[tuple, Table]" = OrderedDict()
# Tables that a CUDA graph captured: every replay reads them, so they live as long as the
# process, whatever the cache drops.
_captured: Dict[int, Table] = {}


def table_for(lists: Sequence[Sequence[Tensor]], interpreted: bool) -> Table:
    """The table of ``lists`` (equal-length lists of tensors on one device; the tensors at
    one position have one numel), from the cache when the same memory was seen before."""
    device = lists[0][0].device
    addresses = tuple(t.data_ptr() for ts in lists for t in ts)
    numels = tuple(t.numel() for t in lists[0])
    key = (device, addresses, numels)
    table = _cache.get(key)
    if table is None:
        table = _cache[key] = _build(device, list(addresses), list(numels), interpreted)
        if len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    else:
        _cache.move_to_end(key)
    return table


def _build(device: torch.device, addresses: List[int], numels: List[int],
           interpreted: bool) -> Table:
    block = block_size(max(numels), interpreted)
    tensor_of_block: List[int] = []
    index_in_tensor: List[int] = []
    numel_of_block: List[int] = []
    for i, numel in enumerate(numels):
        count = -(-numel // block)
        tensor_of_block += [i] * count
        index_in_tensor += range(count)
        numel_of_block += [numel] * count
    host = torch.tensor(tensor_of_block + index_in_tensor + numel_of_block + addresses,
                        dtype=torch.int64)
    if device.type == "cuda":
        # Pinned memory makes the copy asynchronous: building a table never waits for the GPU.
        data = host.pin_memory().to(device, non_blocking=True)
    else:
        data = host.to(device)
    return Table(data, len(tensor_of_block), len(numels), block, num_warps(block),
                 all(address % 16 == 0 for address in addresses))


def protect(table: Table) -> None:
    """Keep ``table`` valid for the kernel about to read it on the current CUDA stream: if
    that launch is being captured into a CUDA graph, for good; otherwise until the stream
    has run it, even if the cache drops the table meanwhile and it was built on another
    stream (the allocator reuses memory in the order of the stream it was made on)."""
    if table.data.device.type != "cuda":
        return
    if torch.cuda.is_current_stream_capturing():
        _captured[table.data.data_ptr()] = table
    else:
        table.data.record_stream(torch.cuda.current_stream(table.data.device))


def clear_cache() -> None:
    """Forget the cached tables (not those a CUDA graph captured)."""
    _cache.clear()
