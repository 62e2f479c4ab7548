"""Device tables that let one kernel launch cover a whole list of tensors.

A table is one int64 tensor on the tensors' device with one entry per (non-empty) tensor,
laid out as ``kernels.py`` reads it::

    [first block of each tensor, and the total (n + 1) | numel of each (n) |
     16-byte aligned in every list? (n) | addresses of list 0 (n) | list 1 (n) | ...]

A program finds its tensor by a binary search over the first blocks, so the table's size
grows with the number of tensors, not of blocks: a 7B-parameter model's tables are a few
kilobytes. Its contents are a function of the addresses and sizes alone, so a table cached
under exactly those is always valid, whoever owns the memory now: a training loop that
reuses its buffers builds its tables once.

Everything here that decides a launch's shape (``plan``, ``reduction_programs``) is a pure
function of the sizes, so the tests check it at LLM scale without allocating anything.
"""
from collections import OrderedDict
from typing import Dict, List, NamedTuple, Optional, Sequence

import torch
from torch import Tensor

# Tables kept per process. A step of SASSHA uses a handful (one per op and bucket); the
# bound only stops a loop whose buffers move every step from growing the cache.
CACHE_SIZE = 128

# Block sizes (elements per program), see ``block_size``.
MIN_BLOCK = 128
MAX_BLOCK = 4096
MAX_BLOCK_INTERPRETED = 32768

# Programs of a reduction per streaming multiprocessor: each loops over blocks and writes one
# partial sum, so the final one-program sum reads at most this many per SM.
PROGRAMS_PER_SM = 4
# What the interpreter (no SMs) counts as SMs: small, so that the tests run programs that
# loop over several blocks, as they do on a GPU.
INTERPRETER_SMS = 2

ALIGNMENT = 16  # bytes: what a 16-byte vector access needs


class Plan(NamedTuple):
    """The shape of a launch over tensors of given sizes (a pure function of them)."""
    block: int         # elements per program (a power of two)
    num_warps: int
    n_tensors: int     # non-empty tensors, the table's rows
    n_blocks: int      # programs of an elementwise launch
    search_steps: int  # binary-search steps that find a block's tensor
    entries: int       # int64 entries of the table


class Table(NamedTuple):
    data: Tensor       # int64, on the tensors' device
    plan: Plan
    ready: Optional["torch.cuda.Event"]  # recorded after the table's copy (CUDA, eager)
    stream: Optional["torch.cuda.Stream"]  # the stream the copy ran on
    host: Optional[Tensor]  # pinned source of a table built during capture (kept alive)


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


def plan(numels: Sequence[int], n_lists: int, interpreted: bool) -> Plan:
    """The launch over tensors of these sizes (empty ones are left out) and ``n_lists`` lists."""
    sizes = [n for n in numels if n > 0]
    block = block_size(max(sizes, default=0), interpreted)
    n_blocks = sum(-(-n // block) for n in sizes)
    return Plan(block, num_warps(block), len(sizes), n_blocks,
                max(0, len(sizes) - 1).bit_length(), (3 + n_lists) * len(sizes) + 1)


def reduction_programs(n_blocks: int, sm_count: int) -> int:
    """Programs (hence partial sums) of a reduction over n_blocks blocks: a small multiple of
    the SM count, so the final sum stays short whatever the model's size."""
    return max(1, min(n_blocks, PROGRAMS_PER_SM * sm_count))


_sm_counts: Dict[torch.device, int] = {}


def sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return INTERPRETER_SMS
    if device not in _sm_counts:
        _sm_counts[device] = torch.cuda.get_device_properties(device).multi_processor_count
    return _sm_counts[device]


_cache: "OrderedDict[tuple, Table]" = OrderedDict()
# Tables that a CUDA graph captured: every replay reads them (and the copies of those built
# during capture read their pinned host source), so they live as long as the process,
# whatever the cache drops.
_captured: List[Table] = []


def _capturing(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def table_for(lists: Sequence[Sequence[Tensor]], interpreted: bool) -> Table:
    """The table of ``lists`` (equal-length lists of tensors on one device; the tensors at
    one position have one numel), ready to be read by a kernel on the current stream.

    Outside CUDA-graph capture it comes from the cache when the same memory was seen before.
    During capture, a cached table (built before the capture: ``torch.cuda.graph``
    synchronises the device on entry, so its copy is done) is kept for good; a missing one
    is built with a captured copy from pinned host memory that is never freed, so every
    replay copies the same contents, and it is not cached (its contents exist only once
    the graph has run)."""
    device = lists[0][0].device
    addresses = tuple(t.data_ptr() for ts in lists for t in ts)
    numels = tuple(t.numel() for t in lists[0])
    key = (device, addresses, numels)
    if _capturing(device):
        table = _cache.get(key) or _build(device, addresses, numels, len(lists), interpreted,
                                          capturing=True)
        _captured.append(table)
        return table
    table = _cache.get(key)
    if table is None:
        table = _cache[key] = _build(device, addresses, numels, len(lists), interpreted,
                                     capturing=False)
        if len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    else:
        _cache.move_to_end(key)
        _wait_on_current_stream(table)
    return table


def _contents(addresses: Sequence[int], numels: Sequence[int], n_lists: int,
              block: int) -> List[int]:
    n_all = len(numels)
    rows = [i for i, n in enumerate(numels) if n > 0]
    first_blocks = [0]
    for i in rows:
        first_blocks.append(first_blocks[-1] + -(-numels[i] // block))
    aligned = [int(all(addresses[d * n_all + i] % ALIGNMENT == 0 for d in range(n_lists)))
               for i in rows]
    return (first_blocks + [numels[i] for i in rows] + aligned
            + [addresses[d * n_all + i] for d in range(n_lists) for i in rows])


def _build(device: torch.device, addresses: Sequence[int], numels: Sequence[int],
           n_lists: int, interpreted: bool, capturing: bool) -> Table:
    shape = plan(numels, n_lists, interpreted)
    contents = _contents(addresses, numels, n_lists, shape.block)
    if device.type != "cuda":
        return Table(torch.tensor(contents, dtype=torch.int64), shape, None, None, None)
    # Pinned memory makes the copy asynchronous: building a table never waits for the GPU.
    try:
        host = torch.tensor(contents, dtype=torch.int64).pin_memory()
    except RuntimeError as exc:
        if not capturing:
            raise
        raise RuntimeError(
            "sassha_fast triton backend: this torch cannot pin host memory during CUDA-graph "
            "capture, which a launch table for new tensor addresses needs; run the step once "
            "before capturing it with the same tensors (e.g. zero_grad(set_to_none=False))"
        ) from exc
    data = host.to(device, non_blocking=True)
    if capturing:
        return Table(data, shape, None, None, host)
    stream = torch.cuda.current_stream(device)
    ready = torch.cuda.Event()
    ready.record(stream)
    return Table(data, shape, ready, stream, None)


def _wait_on_current_stream(table: Table) -> None:
    """A cached table reused on another stream than the one its copy ran on: that stream
    waits (on the device) for the copy."""
    if table.ready is not None:
        current = torch.cuda.current_stream(table.data.device)
        if current != table.stream:
            current.wait_event(table.ready)


def protect(table: Table) -> None:
    """Keep ``table`` valid for the kernel about to read it on the current CUDA stream until
    the stream has run it, even if the cache drops the table meanwhile (the allocator
    reuses memory in the order of the stream it was made on). Captured tables are kept for
    good by ``table_for``."""
    if table.data.device.type == "cuda" and not _capturing(table.data.device):
        table.data.record_stream(torch.cuda.current_stream(table.data.device))


def clear_cache() -> None:
    """Forget the cached tables (not those a CUDA graph captured)."""
    _cache.clear()
