"""The ops of a backend that lives in the extension ``sassha_fast._C``: each op is a call of
``_C.<op>_<suffix>``, with the per-step scalars converted the way that backend takes them.
The cpu and cuda backends differ only in that suffix and conversion. ``found_inf`` is passed
as it comes (None or a tensor that the extension reads itself)."""
from typing import Callable, List, Optional, Tuple, Union

from torch import Tensor

from .extension import IMPORT_ERROR, _C  # noqa: F401 (the backends read them from here)
from .reference import Scalar

KernelScalar = Callable[[Scalar], Union[float, Tensor]]


def extension_ops(suffix: str, kernel_scalar: KernelScalar) -> Tuple[Callable, ...]:
    """The op contract of ``reference.py`` bound to ``_C``'s functions ending in
    ``suffix``, in the order of ``backends.OPS``."""
    def kernel(op: str) -> Callable:
        return getattr(_C, f"{op}_{suffix}")

    def global_norm(tensors: List[Tensor], weights: Optional[List[Tensor]] = None) -> Tensor:
        return kernel("global_norm")(tensors, weights)

    def perturb(params: List[Tensor], grads: List[Tensor], scale: Scalar, adaptive: bool, *,
                found_inf: Optional[Tensor] = None) -> None:
        kernel("perturb")(params, grads, kernel_scalar(scale), bool(adaptive),
                          found_inf=found_inf)

    def sassha_update(params: List[Tensor], grads: List[Tensor], exp_avgs: List[Tensor],
                      exp_hessians: List[Tensor], perturbations: Optional[List[Tensor]], *,
                      lr: Scalar, weight_decay: float, beta1: float, bias_correction1: Scalar,
                      bias_correction2: Scalar, hessian_power: float, eps: float,
                      found_inf: Optional[Tensor] = None) -> None:
        kernel("sassha_update")(params, grads, exp_avgs, exp_hessians, perturbations,
                                kernel_scalar(lr), weight_decay, beta1,
                                kernel_scalar(bias_correction1),
                                kernel_scalar(bias_correction2), hessian_power, eps,
                                found_inf=found_inf)

    def hessian_ema(exp_hessians: List[Tensor], hessians: List[Tensor], beta2: float, *,
                    found_inf: Optional[Tensor] = None) -> None:
        kernel("hessian_ema")(exp_hessians, hessians, beta2, found_inf=found_inf)

    def msassha_update(params: List[Tensor], grads: List[Tensor], exp_avgs: List[Tensor],
                       exp_hessians: List[Tensor], *, norm_factor: Scalar, lr: Scalar,
                       weight_decay: float, beta1: float, bias_correction1: Scalar,
                       bias_correction2: Scalar, hessian_power: float, eps: float,
                       found_inf: Optional[Tensor] = None) -> Tensor:
        return kernel("msassha_update")(params, grads, exp_avgs, exp_hessians,
                                        kernel_scalar(norm_factor), kernel_scalar(lr),
                                        weight_decay, beta1, kernel_scalar(bias_correction1),
                                        kernel_scalar(bias_correction2), hessian_power, eps,
                                        found_inf=found_inf)

    def add_scaled(params: List[Tensor], tensors: List[Tensor], alpha: Scalar) -> None:
        kernel("add_scaled")(params, tensors, kernel_scalar(alpha))

    return global_norm, perturb, sassha_update, hessian_ema, msassha_update, add_scaled
