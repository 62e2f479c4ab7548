"""Checks of hyper-parameters and parameters, with errors that name the offending value."""
import math
import numbers
import warnings

import torch

from .. import functional
from ..distributed.averaging import check_process_group
from ..hessian.curvature_floor import check_curvature_floor
from ..step.nonfinite import check_policy

GROUP_HYPERPARAMETERS = ("lr", "betas", "weight_decay", "rho", "eps", "hessian_power")
# The constructor arguments every optimizer hands to HessianOptimizer as they are.
SHARED_OPTIONS = ("lazy_hessian", "n_samples", "seed", "hessian_power_scheduler", "backend",
                  "process_group", "sync_gradients", "nonfinite", "grad_reduce", "capturable",
                  "skip_check_interval", "max_consecutive_skips", "curvature_floor",
                  "hessian_estimator", "fd_scheme", "fd_eps")
SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _learning_rate(lr):
    """``lr`` as a number: a float, or a one-element floating tensor (as torch's Adam
    takes, so that a compiled or captured step reads it on the device)."""
    if isinstance(lr, torch.Tensor):
        if lr.numel() != 1 or not lr.is_floating_point():
            raise ValueError(f"Invalid learning rate: {lr} (a tensor lr must be a "
                             "one-element floating tensor)")
        return lr.item()
    return lr


def check_hyperparameters(*, lr, betas, weight_decay, rho, eps, hessian_power,
                          perturb_eps=0.0) -> None:
    """The wording of torch's and the authors' optimizers."""
    value = _learning_rate(lr)
    if not (is_real(value) and value >= 0.0):
        raise ValueError(f"Invalid learning rate: {value}")
    if not (is_real(eps) and eps >= 0.0):
        raise ValueError(f"Invalid epsilon value: {eps}")
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
        raise ValueError(f"Invalid betas value: {betas} (expected a pair of floats)")
    for index, beta in enumerate(betas):
        if not (is_real(beta) and 0.0 <= beta < 1.0):
            raise ValueError(f"Invalid beta parameter at index {index}: {beta}")
    if not (is_real(weight_decay) and weight_decay >= 0.0):
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")
    if not (is_real(rho) and rho >= 0.0):
        raise ValueError(f"Invalid rho value: {rho}")
    if not (is_real(perturb_eps) and perturb_eps >= 0.0):
        raise ValueError(f"Invalid perturb_eps value: {perturb_eps}")
    check_hessian_power(hessian_power)


def check_hessian_power(hessian_power) -> float:
    if not (is_real(hessian_power) and 0.0 <= hessian_power <= 1.0):
        raise ValueError(f"Invalid hessian_power value: {hessian_power} (expected 0 <= p <= 1)")
    return float(hessian_power)


def check_positive_int(name: str, value) -> None:
    if not (isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1):
        raise ValueError(f"Invalid {name} value: {value} (expected an integer >= 1)")


def check_parameters(optimizer_name: str, params) -> None:
    for p in params:
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"{optimizer_name} can only optimize Tensors, got {type(p).__name__}")
        if p.is_complex():
            raise ValueError(f"{optimizer_name} does not support complex parameters "
                             f"(got a {p.dtype} parameter of shape {tuple(p.shape)}); "
                             "optimize torch.view_as_real(p) instead")
        if p.is_floating_point() and p.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"{optimizer_name} supports float32, float64, bfloat16 and "
                             f"float16 parameters, got {p.dtype}")


def check_dense(optimizer_name: str, grad: torch.Tensor) -> None:
    if grad.is_sparse:
        raise RuntimeError(f"{optimizer_name} does not support sparse gradients")


def warn_on_unknown_keywords(optimizer_name: str, kwargs: dict) -> None:
    """The authors' constructors take ``**kwargs`` and ignore them; so do these, aloud."""
    if kwargs:
        warnings.warn(f"{optimizer_name} ignores the unknown keyword arguments "
                      + ", ".join(sorted(kwargs)), stacklevel=3)


def shared_options(arguments: dict) -> dict:
    """The shared options among a constructor's ``locals()``."""
    return {name: arguments[name] for name in SHARED_OPTIONS}


def check_options(defaults: dict, *, lazy_hessian, n_samples, seed, backend, process_group,
                  sync_gradients, nonfinite, grad_reduce, capturable, skip_check_interval,
                  max_consecutive_skips, curvature_floor) -> None:
    """Every constructor argument of the optimizers, before the parameters are read."""
    check_hyperparameters(**{k: defaults[k] for k in GROUP_HYPERPARAMETERS},
                          perturb_eps=defaults.get("perturb_eps", 0.0))
    check_positive_int("lazy_hessian", lazy_hessian)
    check_curvature_floor(curvature_floor)
    check_positive_int("n_samples", n_samples)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"Invalid seed value: {seed} (expected an integer)")
    if not isinstance(backend, str):
        raise ValueError(f"Invalid backend: {backend!r}")
    functional.check_name(backend)
    check_process_group(process_group)
    if not isinstance(sync_gradients, bool):
        raise ValueError(f"Invalid sync_gradients value: {sync_gradients!r} (expected a bool)")
    check_policy(nonfinite)
    if not isinstance(grad_reduce, str) or grad_reduce.lower() not in ("mean", "sum"):
        raise ValueError('"grad_reduce" should be one of ["mean", "sum"].')
    if capturable not in (None, True, False):
        raise ValueError(f"Invalid capturable value: {capturable!r} (expected None, True "
                         "or False)")
    check_positive_int("skip_check_interval", skip_check_interval)
    if max_consecutive_skips is not None:
        check_positive_int("max_consecutive_skips", max_consecutive_skips)


def check_group(optimizer_name: str, group: dict) -> None:
    """A parameter group's hyper-parameters and parameters."""
    check_hyperparameters(**{k: group[k] for k in GROUP_HYPERPARAMETERS},
                          perturb_eps=group.get("perturb_eps", 0.0))
    check_parameters(optimizer_name, group["params"])
