"""Host side of a launch: check the operands, find their table, launch one kernel over all
of them with keyword arguments, and (for reductions) finish the sum on the device."""
import contextlib
import math
from typing import List, Optional, Sequence, Tuple, Union

import torch
import triton.language as tl
from torch import Tensor

from . import kernels
from .tables import Table, protect, reduction_programs, sm_count, table_for

TL_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}
FINISH_BLOCK = 1024


def device_type() -> str:
    """The device type of the tensors the kernels run on."""
    return "cpu" if kernels.INTERPRETED else "cuda"


class Operand:
    """One list of tensors an op reads, and whether it writes them."""

    def __init__(self, name: str, tensors: Sequence[Tensor], written: bool = False,
                 fp32: bool = False):
        self.name = name
        self.tensors = list(tensors)
        self.written = written
        self.fp32 = fp32  # optimizer state: must be float32


def check(op: str, operands: Sequence[Operand]) -> torch.device:
    """The operands' common device; TypeError/ValueError for anything a kernel would read
    out of bounds or misinterpret (tensor subclasses and meta tensors are the caller's to
    refuse). Set and list comparisons: this runs on every call."""
    first = operands[0]
    if not first.tensors:  # an op over no tensors has no device: its caller answers it
        raise ValueError(f"{op}: {first.name} is empty")
    device = first.tensors[0].device
    if device.type != device_type():
        raise ValueError(f"{op}: {first.name}[0] is on {device}; the triton backend takes "
                         f"{device_type()} tensors here")
    shapes = [t.shape for t in first.tensors]
    for operand in operands:
        if len(operand.tensors) != len(shapes):
            raise ValueError(f"{op}: {operand.name}: {len(operand.tensors)} tensors, but "
                             f"{first.name} has {len(shapes)}")
        dtypes = {t.dtype for t in operand.tensors}
        if len(dtypes) > 1:
            raise TypeError(f"{op}: {operand.name}: mixed dtypes in one call "
                            f"({sorted(map(str, dtypes))})")
        dtype = dtypes.pop()
        if dtype not in TL_DTYPES or (operand.fp32 and dtype != torch.float32):
            allowed = "float32" if operand.fp32 else "float32, bfloat16 or float16"
            hint = "; use backend='foreach' for float64" if dtype == torch.float64 else ""
            raise TypeError(f"{op}: {operand.name}: the triton backend takes {allowed} "
                            f"tensors, got {dtype}{hint}")
        devices = {t.device for t in operand.tensors}
        if devices != {device}:
            raise ValueError(f"{op}: {operand.name}: tensors on {sorted(map(str, devices))}, "
                             f"expected all on {device}")
        if operand is not first and [t.shape for t in operand.tensors] != shapes:
            i = next(i for i, t in enumerate(operand.tensors) if t.shape != shapes[i])
            raise ValueError(f"{op}: {operand.name}[{i}] has shape "
                             f"{tuple(operand.tensors[i].shape)}, but {first.name}[{i}] has "
                             f"{tuple(shapes[i])}")
    return device


def _dense_strides(t: Tensor) -> Optional[Tuple[int, ...]]:
    """Strides of the dimensions longer than 1 when t covers its memory without gaps or
    overlaps (elementwise work can then run over memory order), else None."""
    dims = [(stride, size) for stride, size in zip(t.stride(), t.shape) if size != 1]
    expected = 1
    for stride, size in sorted(dims):
        if stride != expected:
            return None
        expected *= size
    return tuple(stride for stride, _ in dims)


def _in_memory_order(operands: Sequence[Operand]) -> List[Tuple[Tensor, Tensor]]:
    """Make the tensors at each position share one memory order. Positions where they do
    not (a transposed gradient, a strided view) go through contiguous copies; returns the
    (original, copy) pairs to write back after the launch."""
    write_back = []
    if all(t.is_contiguous() for operand in operands for t in operand.tensors):
        return write_back
    for i in range(len(operands[0].tensors)):
        at_i = [operand.tensors[i] for operand in operands]
        if all(t.is_contiguous() for t in at_i):
            continue
        layout = _dense_strides(at_i[0])
        if layout is not None and all(_dense_strides(t) == layout for t in at_i):
            continue
        for operand in operands:
            t = operand.tensors[i]
            if not t.is_contiguous():
                operand.tensors[i] = t.contiguous()
                if operand.written:
                    write_back.append((t, operand.tensors[i]))
    return write_back


def _device_guard(device: torch.device):
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def tl_dtype(tensors: Sequence[Tensor]) -> tl.dtype:
    """The Triton element type of a (checked) list's tensors; float32 for an empty list."""
    return TL_DTYPES[tensors[0].dtype] if tensors else tl.float32


def zero() -> Tensor:
    """The result of a reduction over nothing: a zero 0-d fp32 tensor on the device the
    kernels run on (the current CUDA device; the CPU in the interpreter)."""
    if kernels.INTERPRETED:
        return torch.zeros((), dtype=torch.float32)
    return torch.zeros((), dtype=torch.float32, device=torch.device("cuda", torch.cuda.current_device()))


def scalar(op: str, name: str, value: Tensor,
           device: torch.device) -> Tuple[Union[float, Tensor], bool]:
    """A kernel argument for a per-step scalar (a one-element tensor), and whether it is a
    pointer: a tensor on the kernels' device is read there (no synchronisation); a CPU
    tensor when the kernels run on a GPU (reading it waits for nothing) is passed by
    value."""
    if value.numel() != 1:
        raise ValueError(f"{op}: {name} must be a number or a one-element tensor, got shape "
                         f"{tuple(value.shape)}")
    if value.device.type == "cpu" and device.type != "cpu":
        return float(value), False
    if value.device != device:
        raise ValueError(f"{op}: {name} is on {value.device}, expected {device}")
    return value.to(torch.float32).reshape(()), True


def flag_arg(op: str, name: str, flag: Optional[Tensor],
             device: torch.device) -> Tuple[Optional[Tensor], bool]:
    """A flag (``found_inf``, read: SKIPPABLE; ``wrote_nonfinite``, written: FLAGGED) as a
    kernel argument: a pointer, or None when not given, and whether it was."""
    if flag is None:
        return None, False
    if (not isinstance(flag, Tensor) or flag.numel() != 1
            or flag.dtype != torch.float32 or flag.device != device):
        raise ValueError(f"{op}: {name} must be None or a one-element float32 tensor on "
                         f"{device}, got {flag!r}")
    return flag, True


def largest_finite(tensors: Sequence[Tensor]) -> float:
    """The largest fp32 value that stays finite when stored in the tensors' dtype: what the
    kernels' ``_flag_nonfinite`` compares stored values with. Rounding to nearest even takes
    the midpoint between the dtype's largest value and the next power of its step to inf
    (the largest value's last bit is odd), so the bound is the fp32 value just below it."""
    dtype = tensors[0].dtype if tensors else torch.float32
    info = torch.finfo(dtype)
    if dtype == torch.float32:
        return info.max
    step = info.eps * 2.0 ** math.floor(math.log2(info.max))  # spacing at the largest value
    midpoint = torch.tensor(info.max + step / 2, dtype=torch.float32)
    return float(torch.nextafter(midpoint, torch.zeros(())))


class Prepared:
    """Checked operands in one memory order and their table, on the right device; launches
    run inside ``with prepared:``, which writes back reordered copies afterwards."""

    def __init__(self, op: str, operands: Sequence[Operand]):
        self.device = check(op, operands)
        self.write_back = _in_memory_order(operands)
        self.table: Table = table_for([operand.tensors for operand in operands],
                                      kernels.INTERPRETED)
        self._guard = _device_guard(self.device)

    @property
    def empty(self) -> bool:
        return self.table.plan.n_blocks == 0

    def __enter__(self) -> "Prepared":
        self._guard.__enter__()
        if not self.empty:
            protect(self.table)
        return self

    def __exit__(self, *exc) -> None:
        try:
            if exc[0] is None:
                for original, copy in self.write_back:
                    original.copy_(copy)
        finally:
            self._guard.__exit__(*exc)

    def table_args(self) -> dict:
        plan = self.table.plan
        return dict(table=self.table.data, n_tensors=plan.n_tensors,
                    search_steps=plan.search_steps, BLOCK=plan.block, num_warps=plan.num_warps)

    def elementwise(self, kernel, **arguments) -> None:
        """One program per block."""
        if not self.empty:
            kernel[(self.table.plan.n_blocks,)](**self.table_args(), **arguments)

    def reduction(self, kernel, sqrt: bool, **arguments) -> Tensor:
        """A bounded number of programs, each writing one partial sum, then their sum (or
        its square root) as a 0-d fp32 tensor on the device."""
        if self.empty:
            return torch.zeros((), dtype=torch.float32, device=self.device)
        n_blocks = self.table.plan.n_blocks
        programs = reduction_programs(n_blocks, sm_count(self.device))
        partials = torch.empty(programs, dtype=torch.float32, device=self.device)
        kernel[(programs,)](**self.table_args(), n_blocks=n_blocks, partials=partials,
                            **arguments)
        out = torch.empty((), dtype=torch.float32, device=self.device)
        kernels.finish_sum_kernel[(1,)](partials=partials, n=programs, out=out, SQRT=sqrt,
                                        BLOCK=FINISH_BLOCK)
        return out
