"""``opt.diagnostics()``: what a user needs to see why training misbehaves.

Everything is computed when asked, from the optimizer's state, never during ``step()``:
the last step's update is rebuilt exactly from the state it left behind. A step reads m
(``exp_avg``), D (``exp_hessian_diag``), the step count and the frozen second bias
correction, and nothing changes them until the next step, so the update
``lr / bc1 * m / (D^hp / bc2 + eps)`` (weight decay aside) can be recomputed in one pass
over m, D and the parameter. Recording it during the step instead would add a reduction to
every backend's fused update (or a copy of the parameters) on every iteration, for a number
read rarely.
"""
import math
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor

# (beta1, a parameter's state, power) -> (bc1, bc2) as its last update used them.
AsUsed = Callable[[float, dict, float], Tuple[float, float]]


def _number(value) -> float:
    """A state scalar as a float (device-resident scalars are read here, off the hot path)."""
    return float(value.item()) if isinstance(value, Tensor) else float(value)


def _preconditioner(state: dict, power: float, bias_correction2: float) -> Tensor:
    """D^hp / bc2 as the last step used it."""
    if bias_correction2 == 0.0:  # no Hessian update yet: D is zero
        return torch.zeros_like(state["exp_hessian_diag"])
    return state["exp_hessian_diag"].pow(power) / bias_correction2


def zero_curvature_entries(state: dict) -> Tensor:
    """Entries whose Hessian average D is exactly 0 while their momentum is not: weights that
    got gradients but never a curvature estimate (an embedding row no Hessian batch reached,
    a unit dead on the Hessian batch). Each steps by lr * m / eps. A 0-d int64 tensor where
    the state lives (nothing is read on the host)."""
    return ((state["exp_hessian_diag"] == 0) & (state["exp_avg"] != 0)).sum()


@torch.no_grad()
def zero_curvature_message(opt) -> str:
    """The tensor with the most zero-curvature entries and the remedy, or "" (reads the
    state on the host: for error paths)."""
    found = [(int(zero_curvature_entries(opt.state[p])), g, i, p)
             for g, group in enumerate(opt.param_groups) for i, p in enumerate(group["params"])
             if "exp_hessian_diag" in opt.state.get(p, {})]
    found = [f for f in found if f[0] > 0]
    if not found:
        return ""
    count, g, i, p = max(found, key=lambda f: f[0])
    others = sum(f[0] for f in found) - count
    return (f" Parameter {i} of group {g} (shape {tuple(p.shape)}) has {count:,} entries whose "
            "Hessian estimate is exactly 0 while their momentum is not (weights no Hessian "
            "batch reached, such as embedding rows of tokens absent then, or units dead on it)"
            + (f", and {len(found) - 1} other tensor(s) {others:,} more" if others else "")
            + ": each moves by lr * m / eps, up to 1/eps times a curvature-scaled step, which "
            "can blow the weights up. Pass curvature_floor (e.g. 0.01: D is then at least that "
            "fraction of its tensor's mean; docs/troubleshooting.md).")


def skip_cause(opt, origin: Optional[str], read_state: bool) -> str:
    """What a skipped-step report adds: the last skipped step's offending tensor (``origin``,
    known on the host path), and, with ``read_state``, the weights without a curvature
    estimate (else where to count them)."""
    cause = f" The last skipped step: {origin}." if origin else ""
    if read_state:
        return cause + zero_curvature_message(opt)
    return cause + (" opt.diagnostics() counts the weights without a curvature estimate "
                    "(zero_curvature_entries).")


@torch.no_grad()
def group_report(opt, group: dict, as_used: AsUsed, reported: Callable) -> dict:
    power = group["hessian_power"] if opt.hessian_power_t is None else opt.hessian_power_t
    report = {"lr": _number(group["lr"]), "rho": group["rho"], "eps": group["eps"],
              "hessian_power": power}
    if "norm_factor" in group:
        report["norm_factor"] = group["norm_factor"]
    stepped = [(i, p, opt.state[p]) for i, p in enumerate(group["params"])
               if _number(opt.state.get(p, {}).get("step", 0)) > 0]
    if not stepped:
        return report
    entries = zeros = below_eps = 0
    zero_curvature = torch.zeros((), dtype=torch.int64)
    ratios = []
    for i, p, state in stepped:
        bias_correction1, bias_correction2 = as_used(group["betas"][0], state, power)
        preconditioner = _preconditioner(state, power, bias_correction2)
        entries += preconditioner.numel()
        zeros += int((state["exp_hessian_diag"] == 0).sum())
        zero_curvature = zero_curvature.to(p.device) + zero_curvature_entries(state)
        below_eps += int((preconditioner < group["eps"]).sum())
        step_size = _number(group["lr"]) / bias_correction1
        update = step_size * float((state["exp_avg"] / (preconditioner + group["eps"])).norm())
        ratios.append((update / max(float(p.detach().float().norm()), 1e-12), i, p))
    # A NaN ratio ranks first: it is the one to see.
    ratio, index, param = max(ratios, key=lambda r: math.inf if math.isnan(r[0]) else r[0])
    last = max((state for _, _, state in stepped), key=lambda state: _number(state["step"]))
    bias_correction1, bias_correction2 = as_used(group["betas"][0], last, power)
    report.update(
        step=int(_number(last["step"])), bias_correction1=bias_correction1,
        bias_correction2=bias_correction2,
        hessian_zero_fraction=zeros / max(entries, 1),
        hessian_below_eps_fraction=below_eps / max(entries, 1),
        zero_curvature_entries=reported(zero_curvature),
        max_update_ratio=ratio,
        max_update_ratio_param={"index": index, "shape": tuple(param.shape)})
    return report


def report(opt, as_used: AsUsed, reported: Callable) -> dict:
    """``opt.diagnostics()`` (``as_used``: the optimizer's bias corrections; ``reported``:
    how its path hands out a device count):
    ``skipped_steps``, ``curvature_floor``, ``hessian_due`` and, per parameter group, ``lr``,
    ``rho``, ``eps``, ``hessian_power`` (the scheduler's last value if one is set),
    M-SASSHA's ``norm_factor``, and once the group has stepped: ``step`` (the largest step
    count), ``bias_correction1`` and ``bias_correction2`` (as that step's update used them),
    ``hessian_zero_fraction`` (entries of D exactly zero), ``hessian_below_eps_fraction``
    (entries whose D^hp / bc2 is below ``eps``, where ``eps`` rather than the curvature sets
    the step), ``zero_curvature_entries`` (entries with D exactly zero and nonzero momentum;
    a device tensor on the device path), ``max_update_ratio`` (the largest
    ||lr / bc1 * m / (D^hp / bc2 + eps)|| / ||p|| over the group's tensors for their last
    step, weight decay aside; NaN ranks first) and ``max_update_ratio_param`` (that tensor's
    index in the group and shape)."""
    return {"skipped_steps": int(opt.skipped_steps),
            "curvature_floor": opt.curvature_floor,
            "hessian_due": opt.hessian_due,
            "groups": [group_report(opt, group, as_used, reported)
                       for group in opt.param_groups]}
