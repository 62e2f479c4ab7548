"""Which implementation of the fused ops serves the parameters of each device and dtype, and
the norms taken across all of them."""
from typing import Dict, List

import torch
from torch import Tensor

from .. import backends, functional
from ..distributed import dtensor
from .buckets import buckets, sqrt_of_sum


class Dispatch:
    """The ops of one optimizer's backend, resolved once per (device, dtype): "auto" may
    pick another backend for float64 than for float32."""

    def __init__(self, backend: str):
        self.backend = backend
        # Whether the ops take DTensors (set once a group holds one; see distributed.dtensor).
        self.takes_dtensors = False
        self._ops: Dict[tuple, backends.Ops] = {}

    def ops(self, device: torch.device, dtype: torch.dtype) -> backends.Ops:
        ops = self._ops.get((device, dtype))
        if ops is None:
            ops = functional.resolve(self.backend, device, dtype)
            if self.takes_dtensors:
                ops = dtensor.local_ops(ops)
            self._ops[(device, dtype)] = ops
        return ops

    def prepare(self, params: List[Tensor]) -> None:
        """Resolve the ops of the parameters' devices and dtypes now (raising for a backend
        that cannot run them): a step under torch.compile then finds them resolved, where
        resolving (it imports modules) would break the graph."""
        for p in params:
            self.ops(p.device, p.dtype)

    def take_dtensors(self) -> None:
        self.takes_dtensors = True
        self._ops.clear()

    def in_use(self) -> Dict[str, str]:
        """``{device: backend name}`` for every device resolved so far; a device whose
        dtypes use different backends gets one ``"device dtype"`` key each."""
        by_device: Dict[str, Dict[torch.dtype, str]] = {}
        for (device, dtype), ops in self._ops.items():
            by_device.setdefault(str(device), {})[dtype] = ops.name
        names = {}
        for device, by_dtype in by_device.items():
            if len(set(by_dtype.values())) == 1:
                names[device] = next(iter(by_dtype.values()))
            else:
                names.update({f"{device} {str(dtype).replace('torch.', '')}": name
                              for dtype, name in by_dtype.items()})
        return names

    def global_norm(self, params: List[Tensor], tensors: List[Tensor], weighted: bool,
                    home: torch.device) -> Tensor:
        """||(|p| if weighted else 1) * t|| over all the tensors, whatever their device/dtype,
        as a 0-d tensor on ``home``'s side of the sum."""
        if not params:
            return torch.zeros((), dtype=torch.float32, device=home)
        squares = []
        for (device, dtype), indices in buckets(
                range(len(params)), lambda i: (params[i].device, params[i].dtype)).items():
            norm = self.ops(device, dtype).global_norm([tensors[i] for i in indices],
                                                       [params[i] for i in indices] if weighted
                                                       else None)
            squares.append(norm.square())
        return sqrt_of_sum(squares)

    def __getstate__(self) -> dict:
        # Resolved ops hold functions of modules: looked up again after a copy.
        return {**self.__dict__, "_ops": {}}
