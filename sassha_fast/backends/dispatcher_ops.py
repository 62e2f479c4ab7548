"""The ops of the cpu and cuda backends: ``torch.ops.sassha_fast.<op>``, the dispatcher
operators that the extension ``sassha_fast._C`` defines (schemas: csrc/schema.cpp), with a
CPU and a CUDA kernel each and a fake kernel (``fake_kernels.py``). The dispatcher picks the
kernel from the tensors' device, so one function serves both backends; this module only
adapts the op contract of ``reference.py`` to the schemas.

The schemas take every per-step scalar as a one-element tensor: a number is passed as a
float64 CPU tensor, which the kernels read on the host (in double on the CPU, rounded to
fp32 by the CUDA kernels), and a tensor as it comes (a CUDA kernel reads a device tensor
when it runs). Functions of empty lists that have no tensor to dispatch on are answered
here. ``LibraryOps`` serves the same contract from another library with these schemas: the
test-only ``torch.ops.sassha_fast_cuda_emulated`` (backend cuda_emulated)."""
from typing import List, Optional

import torch
from torch import Tensor

from .reference import Scalar


def scalar_tensor(value: Scalar) -> Tensor:
    """A per-step scalar as the schemas take it (the triton backend's ops too)."""
    if isinstance(value, Tensor):
        return value
    return torch.tensor(value, dtype=torch.float64)


class LibraryOps:
    """The ops of ``torch.ops.<library>`` with the signatures of reference.py."""

    def __init__(self, library: str):
        self._library = getattr(torch.ops, library)

    def global_norm(self, tensors: List[Tensor],
                    weights: Optional[List[Tensor]] = None) -> Tensor:
        if not tensors:
            return torch.zeros((), dtype=torch.float32)
        return self._library.global_norm(tensors, weights)

    def perturb(self, params: List[Tensor], grads: List[Tensor], scale: Scalar,
                adaptive: bool, *, found_inf: Optional[Tensor] = None) -> None:
        self._library.perturb(params, grads, scalar_tensor(scale), bool(adaptive), found_inf)

    def sassha_update(self, params: List[Tensor], grads: List[Tensor], exp_avgs: List[Tensor],
                      exp_hessians: List[Tensor], perturbations: Optional[List[Tensor]], *,
                      lr: Scalar, weight_decay: float, beta1: float, bias_correction1: Scalar,
                      bias_correction2: Scalar, hessian_power: float, eps: float,
                      found_inf: Optional[Tensor] = None,
                      wrote_nonfinite: Optional[Tensor] = None) -> None:
        self._library.sassha_update(
            params, grads, exp_avgs, exp_hessians, perturbations, scalar_tensor(lr),
            weight_decay, beta1, scalar_tensor(bias_correction1),
            scalar_tensor(bias_correction2), hessian_power, eps, found_inf, wrote_nonfinite)

    def hessian_ema(self, exp_hessians: List[Tensor], hessians: List[Tensor], beta2: float, *,
                    found_inf: Optional[Tensor] = None,
                    wrote_nonfinite: Optional[Tensor] = None) -> None:
        if exp_hessians:
            self._library.hessian_ema(exp_hessians, hessians, beta2, found_inf,
                                      wrote_nonfinite)

    def msassha_update(self, params: List[Tensor], grads: List[Tensor], exp_avgs: List[Tensor],
                       exp_hessians: List[Tensor], *, norm_factor: Scalar, lr: Scalar,
                       weight_decay: float, beta1: float, bias_correction1: Scalar,
                       bias_correction2: Scalar, hessian_power: float, eps: float,
                       found_inf: Optional[Tensor] = None,
                       wrote_nonfinite: Optional[Tensor] = None) -> Tensor:
        return self._library.msassha_update(
            params, grads, exp_avgs, exp_hessians, scalar_tensor(norm_factor),
            scalar_tensor(lr), weight_decay, beta1, scalar_tensor(bias_correction1),
            scalar_tensor(bias_correction2), hessian_power, eps, found_inf, wrote_nonfinite)

    def add_scaled(self, params: List[Tensor], tensors: List[Tensor], alpha: Scalar) -> None:
        self._library.add_scaled(params, tensors, scalar_tensor(alpha))


_sassha_fast = LibraryOps("sassha_fast")
global_norm = _sassha_fast.global_norm
perturb = _sassha_fast.perturb
sassha_update = _sassha_fast.sassha_update
hessian_ema = _sassha_fast.hessian_ema
msassha_update = _sassha_fast.msassha_update
add_scaled = _sassha_fast.add_scaled
