"""cuda backend: the fused CUDA kernels of the extension ``sassha_fast._C`` (csrc/cuda/).

Each op is one pass of a multi-tensor launcher over the whole list (a few kernel launches
however many tensors), reading and writing every element once. Norms stay on the device.
Scalars (``scale``, ``norm_factor``, ``alpha``, ``lr`` and both bias corrections) may be
numbers or one-element tensors; a CUDA tensor is read by the kernel when it runs, so a step
captured in a CUDA graph can be replayed after writing new values into those tensors.
"""
from typing import List, Optional, Union

import torch
from torch import Tensor

from .reference import Scalar

try:
    from .. import _C
    _IMPORT_ERROR: Optional[str] = None
except ImportError as exc:  # an install without its extension still offers other backends
    _C = None
    _IMPORT_ERROR = f"cannot import the extension sassha_fast._C: {exc}"


def unavailable_reason() -> Optional[str]:
    if _C is None:
        return _IMPORT_ERROR
    if not _C.with_cuda:
        return f"sassha_fast._C was built without its CUDA part ({_C.cuda_status})"
    if not torch.cuda.is_available():
        return "no CUDA device present"
    return None


def supports(device: torch.device) -> bool:
    return device.type == "cuda"


def _kernel_scalar(value: Scalar) -> Union[float, Tensor]:
    """A number, or an fp32 CUDA tensor for the kernel to read. A CPU tensor is read here,
    which costs no synchronisation."""
    if isinstance(value, Tensor):
        return value.float() if value.is_cuda else float(value)
    return float(value)


def global_norm(tensors: List[Tensor], weights: Optional[List[Tensor]] = None) -> Tensor:
    return _C.global_norm_cuda(tensors, weights)


def perturb(params: List[Tensor], grads: List[Tensor], scale: Scalar, adaptive: bool) -> None:
    _C.perturb_cuda(params, grads, _kernel_scalar(scale), bool(adaptive))


def sassha_update(params: List[Tensor], grads: List[Tensor], exp_avgs: List[Tensor],
                  exp_hessians: List[Tensor], perturbations: Optional[List[Tensor]], *,
                  lr: Scalar, weight_decay: float, beta1: float, bias_correction1: Scalar,
                  bias_correction2: Scalar, hessian_power: float, eps: float) -> None:
    _C.sassha_update_cuda(params, grads, exp_avgs, exp_hessians, perturbations,
                          _kernel_scalar(lr), weight_decay, beta1,
                          _kernel_scalar(bias_correction1), _kernel_scalar(bias_correction2),
                          hessian_power, eps)


def hessian_ema(exp_hessians: List[Tensor], hessians: List[Tensor], beta2: float) -> None:
    _C.hessian_ema_cuda(exp_hessians, hessians, beta2)


def msassha_update(params: List[Tensor], grads: List[Tensor], exp_avgs: List[Tensor],
                   exp_hessians: List[Tensor], *, norm_factor: Scalar, lr: Scalar,
                   weight_decay: float, beta1: float, bias_correction1: Scalar,
                   bias_correction2: Scalar, hessian_power: float, eps: float) -> Tensor:
    return _C.msassha_update_cuda(params, grads, exp_avgs, exp_hessians,
                                  _kernel_scalar(norm_factor), _kernel_scalar(lr), weight_decay,
                                  beta1, _kernel_scalar(bias_correction1),
                                  _kernel_scalar(bias_correction2), hessian_power, eps)


def add_scaled(params: List[Tensor], tensors: List[Tensor], alpha: Scalar) -> None:
    _C.add_scaled_cuda(params, tensors, _kernel_scalar(alpha))
