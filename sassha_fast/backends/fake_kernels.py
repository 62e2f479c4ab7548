"""The fake kernels of the fused ops: what each op does to tensors without data (FakeTensor
under torch.compile and ``torch.library.opcheck``, meta tensors): the same checks of list
lengths and devices as the real kernels, and a result of the right dtype and device. An op
that only writes its inputs returns nothing, as its real kernels do.

Two families of ops share one schema per op and so these kernels (``register``):
``torch.ops.sassha_fast.<op>`` of the C++ backends, registered when ``sassha_fast._C`` is
loaded (``extension.py``), and ``torch.ops.sassha_fast.triton_<op>`` of the triton backend
(``triton_ops.py``). Errors name the op without the family's prefix, as the real kernels
of both do."""
from typing import List, Optional

import torch
from torch import Tensor


def _check(op: str, **lists: Optional[List[Tensor]]) -> None:
    """The real kernels' refusals that a fake tensor can be judged by: lists of unequal
    length, tensors on more than one device."""
    (lead_name, lead), *_ = lists.items()
    for name, tensors in lists.items():
        if tensors is None:
            continue
        if len(tensors) != len(lead):
            raise RuntimeError(f"{op}: {name} has {len(tensors)} tensors, expected {len(lead)} "
                               "(one per parameter)")
        for i, t in enumerate(tensors):
            if t.device != lead[0].device:
                raise RuntimeError(f"{op}: {name}[{i}] is on {t.device}, but {lead_name}[0] is "
                                   f"on {lead[0].device}; every tensor of one op must be on "
                                   "one device")


def _check_scalars(op: str, lead: List[Tensor], **scalars: Optional[Tensor]) -> None:
    """A scalar tensor is read on the lists' device or, from the CPU, on the host."""
    for name, t in scalars.items():
        if lead and t is not None and t.device not in (lead[0].device, torch.device("cpu")):
            raise RuntimeError(f"{op}: {name} is a tensor on {t.device}, but the op's tensors "
                               f"are on {lead[0].device}; a scalar tensor must be on their "
                               "device or on the CPU")


def _sum_of_squares(like: Tensor) -> Tensor:
    """A 0-d result in the compute dtype of ``like`` (float64 for float64, else fp32)."""
    dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
    return like.new_empty((), dtype=dtype)


def global_norm(tensors, weights):
    _check("global_norm", tensors=tensors, weights=weights)
    if not tensors:
        raise RuntimeError("global_norm: no tensors (sassha_fast.functional.global_norm "
                           "answers an empty list itself)")
    return _sum_of_squares(tensors[0])


def perturb(params, grads, scale, adaptive, found_inf):
    _check("perturb", params=params, grads=grads)
    _check_scalars("perturb", params, scale=scale, found_inf=found_inf)


def sassha_update(params, grads, exp_avgs, exp_hessians, perturbations, lr, weight_decay,
                  beta1, bias_correction1, bias_correction2, hessian_power, eps, found_inf,
                  wrote_nonfinite=None):
    _check("sassha_update", params=params, grads=grads, exp_avgs=exp_avgs,
           exp_hessians=exp_hessians, perturbations=perturbations)
    _check_scalars("sassha_update", params, lr=lr, bias_correction1=bias_correction1,
                   bias_correction2=bias_correction2, found_inf=found_inf,
                   wrote_nonfinite=wrote_nonfinite)


def hessian_ema(exp_hessians, hessians, beta2, found_inf, wrote_nonfinite=None):
    _check("hessian_ema", exp_hessians=exp_hessians, hessians=hessians)
    _check_scalars("hessian_ema", exp_hessians, found_inf=found_inf,
                   wrote_nonfinite=wrote_nonfinite)


def msassha_update(params, grads, exp_avgs, exp_hessians, norm_factor, lr, weight_decay, beta1,
                   bias_correction1, bias_correction2, hessian_power, eps, found_inf,
                   wrote_nonfinite=None):
    _check("msassha_update", params=params, grads=grads, exp_avgs=exp_avgs,
           exp_hessians=exp_hessians)
    _check_scalars("msassha_update", params, norm_factor=norm_factor, lr=lr,
                   bias_correction1=bias_correction1, bias_correction2=bias_correction2,
                   found_inf=found_inf, wrote_nonfinite=wrote_nonfinite)
    if not params:  # the kernel that ran is the one of the scalars' device
        return norm_factor.new_empty((), dtype=torch.float32)
    return _sum_of_squares(params[0])


def add_scaled(params, tensors, alpha):
    _check("add_scaled", params=params, tensors=tensors)
    _check_scalars("add_scaled", params, alpha=alpha)


def register(prefix: str) -> None:
    """Make these the fake kernels of the ops ``sassha_fast::<prefix><op>``."""
    for fake in (global_norm, perturb, sassha_update, hessian_ema, msassha_update, add_scaled):
        torch.library.register_fake(f"sassha_fast::{prefix}{fake.__name__}", fake)
