"""Refusal of tensors a Python backend cannot run on (contract item "Tensor types" in
``reference.py``): tensor subclasses such as DTensor, meta tensors, tensors on another
device than the op's first tensor. Without it a subclass would run through its own
dispatch and a meta tensor would turn an update into a silent no-op."""
from typing import List, Optional

import torch
from torch import Tensor

_PLAIN_TYPES = {Tensor, torch.nn.Parameter}


def check_plain_tensors(op: str, **lists: Optional[List[Tensor]]) -> None:
    """TypeError / RuntimeError naming ``op``, the list, the index and the tensor's type or
    device for the first tensor that is not a plain tensor on the first tensor's device."""
    device = None
    for name, tensors in lists.items():
        if not tensors:
            continue
        if device is None:
            device = tensors[0].device
        # Whole-list set checks, the loop below only names the culprit. A set comprehension
        # of devices costs what map(attrgetter("device")) did (building each torch.device
        # dominates both) and, unlike attrgetter, torch.compile traces it.
        if not set(map(type, tensors)) <= _PLAIN_TYPES or \
                {t.device for t in tensors} != {device} or device.type == "meta":
            _raise_for_first_fault(op, name, tensors, device)


def _raise_for_first_fault(op: str, name: str, tensors: List[Tensor],
                           device: torch.device) -> None:
    for i, t in enumerate(tensors):
        if type(t) not in _PLAIN_TYPES:
            raise TypeError(f"sassha_fast {op}: {name}[{i}] is a {type(t).__module__}."
                            f"{type(t).__qualname__}; the fused ops take plain torch.Tensor "
                            "objects (not tensor subclasses such as DTensor)")
        if t.device.type == "meta":
            raise RuntimeError(f"sassha_fast {op}: {name}[{i}] is a meta tensor, which holds "
                               "no data to update")
        if t.device != device:
            raise RuntimeError(f"sassha_fast {op}: {name}[{i}] is on {t.device}, but the "
                               f"op's first tensor is on {device}; every tensor of one op "
                               "must be on one device")
