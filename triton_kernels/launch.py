"""Host side of a launch: check the operands, find their table, launch one kernel over all
of them, and (for reductions) finish the sum on the device."""
import contextlib
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import triton.language as tl
from torch import Tensor

from . import kernels
from .tables import protect, table_for

TL_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}
FINISH_BLOCK = 1024


class Operand:
    """One list of tensors an op reads, and whether it writes them."""

    def __init__(self, name: str, tensors: Sequence[Tensor], written: bool = False,
                 fp32: bool = False):
        self.name = name
        self.tensors = list(tensors)
        self.written = written
        self.fp32 = fp32  # optimizer state: must be float32


def check(operands: Sequence[Operand]) -> torch.device:
    """The operands' common device; ValueError/TypeError for anything a kernel would read
    out of bounds or misinterpret. (Set and list comparisons: this runs on every call.)"""
    first = operands[0]
    device = first.tensors[0].device
    shapes = [t.shape for t in first.tensors]
    for op in operands:
        if len(op.tensors) != len(shapes):
            raise ValueError(f"{op.name}: {len(op.tensors)} tensors, but {first.name} has "
                             f"{len(shapes)}")
        dtypes = {t.dtype for t in op.tensors}
        if len(dtypes) > 1:
            raise TypeError(f"{op.name}: mixed dtypes in one call ({sorted(map(str, dtypes))})")
        dtype = dtypes.pop()
        if dtype not in TL_DTYPES or (op.fp32 and dtype != torch.float32):
            allowed = "float32" if op.fp32 else "float32, bfloat16 or float16"
            raise TypeError(f"{op.name}: the triton backend takes {allowed} tensors, "
                            f"got {dtype}")
        devices = {t.device for t in op.tensors}
        if devices != {device}:
            raise ValueError(f"{op.name}: tensors on {sorted(map(str, devices))}, expected "
                             f"all on {device}")
        if op is not first and [t.shape for t in op.tensors] != shapes:
            i = next(i for i, t in enumerate(op.tensors) if t.shape != shapes[i])
            raise ValueError(f"{op.name}[{i}] has shape {tuple(op.tensors[i].shape)}, but "
                             f"{first.name}[{i}] has {tuple(shapes[i])}")
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
    if all(t.is_contiguous() for op in operands for t in op.tensors):
        return write_back
    for i in range(len(operands[0].tensors)):
        at_i = [op.tensors[i] for op in operands]
        if all(t.is_contiguous() for t in at_i):
            continue
        layout = _dense_strides(at_i[0])
        if layout is not None and all(_dense_strides(t) == layout for t in at_i):
            continue
        for op in operands:
            t = op.tensors[i]
            if not t.is_contiguous():
                op.tensors[i] = t.contiguous()
                if op.written:
                    write_back.append((t, op.tensors[i]))
    return write_back


def _device_guard(device: torch.device):
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def scalar(value: Union[float, Tensor],
           device: torch.device) -> Tuple[Union[float, Tensor], bool]:
    """A kernel argument for a scalar that may be a 0-d tensor (read on the device, no
    synchronisation) or a number; and whether it is a pointer."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"expected a scalar or a one-element tensor, got shape "
                             f"{tuple(value.shape)}")
        return value.to(device=device, dtype=torch.float32).reshape(()), True
    return float(value), False


def launch(kernel, operands: Sequence[Operand], *args, partials: bool = False,
           **constexprs) -> Optional[Tensor]:
    """One launch of ``kernel`` over every tensor of ``operands`` (non-empty lists). Each
    operand's dtype goes to the kernel as ``<name>_DTYPE`` unless it is fp32 state. With
    ``partials``, the kernel writes one fp32 partial sum per block into a buffer passed
    before ``args``, which is returned."""
    device = check(operands)
    write_back = _in_memory_order(operands)
    table = table_for([op.tensors for op in operands], kernels.INTERPRETED)
    dtypes: Dict[str, object] = {f"{op.name}_DTYPE": TL_DTYPES[op.tensors[0].dtype]
                                 for op in operands if not op.fp32}
    with _device_guard(device):
        sums = torch.empty(table.n_blocks, dtype=torch.float32, device=device) \
            if partials else None
        if table.n_blocks:
            protect(table)
            kernel[(table.n_blocks,)](
                table.data, table.n_blocks, table.n_tensors, *((sums,) if partials else ()),
                *args, **constexprs, **dtypes, BLOCK=table.block, ALIGNED=table.aligned,
                num_warps=table.num_warps)
        for original, copy in write_back:
            original.copy_(copy)
    return sums


def finish_sum(partials: Tensor, sqrt: bool) -> Tensor:
    """sum(partials) (or its square root) as a 0-d fp32 tensor, computed on the device."""
    out = torch.empty((), dtype=torch.float32, device=partials.device)
    with _device_guard(partials.device):
        kernels.finish_sum_kernel[(1,)](partials, partials.numel(), out, SQRT=sqrt,
                                        BLOCK=FINISH_BLOCK)
    return out
