"""cpu backend: the fused ops of ``sassha_fast._C`` (csrc/cpu), one multi-threaded,
vectorized pass over a whole tensor list per op.

Parameters, gradients, perturbations and Hessian estimates may be fp32, bf16 or fp16 (one
dtype per list); optimizer state is fp32; every tensor is on the CPU, and tensor i of every
list has the shape of parameter i. The C++ side checks this and raises RuntimeError naming
the op, the list and the index of the tensor at fault. Any memory layout works: tensors laid
out like their parameter are used in place, others through a copy. Scalars given as 0-d
tensors are read on the host (a CPU tensor: no synchronisation).
"""
from typing import List, Optional

import torch
from torch import Tensor

from .reference import Scalar

try:
    from .. import _C
    _IMPORT_ERROR = None
except ImportError as exc:  # the extension was not built
    _C = None
    _IMPORT_ERROR = exc


def unavailable_reason() -> Optional[str]:
    if _C is None:
        return f"cannot import sassha_fast._C ({_IMPORT_ERROR}); reinstall to build it"
    if not hasattr(_C, "sassha_update_cpu"):
        return "sassha_fast._C was built without the CPU ops"
    return None


def supports(device: torch.device) -> bool:
    return device.type == "cpu"


def isa() -> str:
    """The instruction set the kernels run with here: "avx512", "avx2" or "generic"."""
    return _C.cpu_isa()


def global_norm(tensors: List[Tensor], weights: Optional[List[Tensor]] = None) -> Tensor:
    return _C.global_norm_cpu(tensors, weights)


def perturb(params: List[Tensor], grads: List[Tensor], scale: Scalar, adaptive: bool) -> None:
    _C.perturb_cpu(params, grads, float(scale), bool(adaptive))


def sassha_update(params: List[Tensor], grads: List[Tensor], exp_avgs: List[Tensor],
                  exp_hessians: List[Tensor], perturbations: Optional[List[Tensor]], *,
                  lr: float, weight_decay: float, beta1: float, bias_correction1: float,
                  bias_correction2: float, hessian_power: float, eps: float) -> None:
    _C.sassha_update_cpu(params, grads, exp_avgs, exp_hessians, perturbations, lr,
                         weight_decay, beta1, bias_correction1, bias_correction2,
                         hessian_power, eps)


def hessian_ema(exp_hessians: List[Tensor], hessians: List[Tensor], beta2: float) -> None:
    _C.hessian_ema_cpu(exp_hessians, hessians, beta2)


def msassha_update(params: List[Tensor], grads: List[Tensor], exp_avgs: List[Tensor],
                   exp_hessians: List[Tensor], *, norm_factor: Scalar, lr: float,
                   weight_decay: float, beta1: float, bias_correction1: float,
                   bias_correction2: float, hessian_power: float, eps: float) -> Tensor:
    return _C.msassha_update_cpu(params, grads, exp_avgs, exp_hessians, float(norm_factor), lr,
                                 weight_decay, beta1, bias_correction1, bias_correction2,
                                 hessian_power, eps)


def add_scaled(params: List[Tensor], tensors: List[Tensor], alpha: Scalar) -> None:
    _C.add_scaled_cpu(params, tensors, float(alpha))
