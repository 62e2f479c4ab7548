"""Backend dispatch: which implementation of the fused ops serves the parameters of each
device and dtype, and the norms taken across them. A mixin of ``HessianOptimizer``."""
from typing import Dict, List

import torch
from torch import Tensor

from . import backends, dtensor
from .plan import buckets, sqrt_of_sum


class BackendDispatch:
    """``opt.ops(device, dtype)``, ``opt.backends_in_use`` and the norms of a step."""

    def ops(self, device: torch.device, dtype: torch.dtype) -> backends.Ops:
        """The backend ops used for parameters of ``dtype`` on ``device`` (resolved once
        per pair: "auto" may pick another backend for float64 than for float32)."""
        ops = self._ops_by_device.get((device, dtype))
        if ops is None:
            ops = backends.resolve(self.backend, device, dtype)
            if self._has_dtensors:
                ops = dtensor.local_ops(ops)
            self._ops_by_device[(device, dtype)] = ops
        return ops

    @property
    def backends_in_use(self) -> Dict[str, str]:
        """``{device: backend name}`` for every device this optimizer has stepped on; a
        device whose dtypes use different backends gets one ``"device dtype"`` key each."""
        by_device: Dict[str, Dict[torch.dtype, str]] = {}
        for (device, dtype), ops in self._ops_by_device.items():
            by_device.setdefault(str(device), {})[dtype] = ops.name
        names = {}
        for device, by_dtype in by_device.items():
            if len(set(by_dtype.values())) == 1:
                names[device] = next(iter(by_dtype.values()))
            else:
                names.update({f"{device} {str(dtype).replace('torch.', '')}": name
                              for dtype, name in by_dtype.items()})
        return names

    def _global_norm(self, params: List[Tensor], tensors: List[Tensor],
                     weighted: bool) -> Tensor:
        """||(|p| if weighted else 1) * t|| over all the tensors, whatever their device/dtype."""
        if not params:
            return torch.zeros((), dtype=torch.float32, device=self._home_device)
        squares = []
        for (device, dtype), indices in buckets(
                range(len(params)), lambda i: (params[i].device, params[i].dtype)).items():
            norm = self.ops(device, dtype).global_norm([tensors[i] for i in indices],
                                                [params[i] for i in indices] if weighted else None)
            squares.append(norm.square())
        return sqrt_of_sum(squares)

    @property
    def _home_device(self) -> torch.device:
        """Where the step's flags and norms meet: the first parameter's device."""
        return self.param_groups[0]["params"][0].device
