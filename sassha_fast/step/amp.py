"""torch.amp.GradScaler support for the two-pass iteration.

``GradScaler.step(opt)`` assumes one backward pass per iteration and unscales only ``.grad``;
SASSHA needs the first pass unscaled before its norm, the second pass and the Hessian
estimate (the Hessian-vector product of a scaled gradient is scaled too) unscaled before the
update, and the scale lowered when any of them overflowed. The optimizer does all of that
when given the scaler (``opt.step(closure, scaler=scaler)`` or, in the authors' loop,
``perturb_weights(scaler=scaler)`` and ``step(scaler=scaler)``); the caller then calls
``scaler.update()`` as usual.

GradScaler has no public way to report an overflow found outside ``.grad``, so
``record_found_inf`` writes the per-optimizer record that ``scaler.update()`` reads. That
record is private to PyTorch; the tests pin its behaviour on the supported torch.
"""
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor
from torch.amp.grad_scaler import OptState

from .skips import any_set


def enabled(scaler) -> bool:
    return scaler is not None and scaler.is_enabled()


def scale_loss(scaler, loss: Tensor) -> Tensor:
    if not enabled(scaler):
        return loss
    with torch.enable_grad():  # the optimizer's step runs under no_grad
        return scaler.scale(loss)


@torch.no_grad()
def unscale_(scaler, tensors: List[Tensor]) -> Optional[Tensor]:
    """Divide the tensors by the scaler's current scale, in the pass that also finds whether
    they hold inf or NaN (GradScaler's own kernel, which sets its flag as it reads them):
    that flag, a 0-d float32 tensor on the first tensor's device (None without a scaler).
    No host synchronisation."""
    if not enabled(scaler) or not tensors:
        return None
    # The reciprocal in fp64, as GradScaler.unscale_ does, so both agree bit for bit.
    inv_scale = _scale(scaler).double().reciprocal().float()
    by_kind: Dict[Tuple[torch.device, torch.dtype], List[Tensor]] = {}
    for t in tensors:
        by_kind.setdefault((t.device, t.dtype), []).append(t)
    home = tensors[0].device
    found = []
    for (device, _), group in by_kind.items():
        found_here = torch.zeros(1, dtype=torch.float32, device=device)
        torch._amp_foreach_non_finite_check_and_unscale_(group, found_here, inv_scale.to(device))
        found.append(found_here)
    return any_set(found, home)


def record_found_inf(scaler, optimizer, found_inf: Tensor) -> None:
    """Tell ``scaler.update()`` whether this iteration overflowed (``found_inf`` nonzero), so
    that it lowers the scale, or counts a good step towards raising it."""
    if not enabled(scaler):
        return
    scale = _scale(scaler)
    # The whole record, set rather than filled in: under torch.compile the entry that the
    # defaultdict creates for a missing key is dropped (scaler.update() then finds none).
    scaler._per_optimizer_states[id(optimizer)] = {
        "stage": OptState.STEPPED,
        "found_inf_per_device": {scale.device: found_inf.to(scale.device, dtype=torch.float32)}}


def _scale(scaler) -> Tensor:
    scale = scaler._get_scale_async()
    if scale is None:
        raise RuntimeError("the GradScaler has not scaled a loss yet: back-propagate "
                           "scaler.scale(loss), or pass the scaler to optimizer.step(closure, "
                           "scaler=scaler), which scales it")
    return scale


def refuse_scaler_step(optimizer) -> None:
    """``scaler.step(opt)`` sets these attributes before calling ``opt.step()`` (the
    optimizer declares ``_step_supports_amp_scaling``); the scale of the Hessian estimate
    would then be unknown, so say what to call instead."""
    if getattr(optimizer, "grad_scale", None) is None and \
            getattr(optimizer, "found_inf", None) is None:
        return
    for name in ("grad_scale", "found_inf"):
        if hasattr(optimizer, name):
            delattr(optimizer, name)
    raise RuntimeError(
        f"{type(optimizer).__name__} unscales a Hessian-vector product "
        "besides the gradients, which scaler.step(optimizer) cannot do: call "
        "optimizer.step(closure, scaler=scaler) (or, after the backward passes, "
        "optimizer.step(scaler=scaler)) and then scaler.update()")

