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
from typing import Callable, Tuple

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


@torch.no_grad()
def group_report(opt, group: dict, as_used: AsUsed) -> dict:
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
    ratios = []
    for i, p, state in stepped:
        bias_correction1, bias_correction2 = as_used(group["betas"][0], state, power)
        preconditioner = _preconditioner(state, power, bias_correction2)
        entries += preconditioner.numel()
        zeros += int((state["exp_hessian_diag"] == 0).sum())
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
        max_update_ratio=ratio,
        max_update_ratio_param={"index": index, "shape": tuple(param.shape)})
    return report


def report(opt, as_used: AsUsed) -> dict:
    """See ``HessianOptimizer.diagnostics``; ``as_used``: the optimizer's bias corrections."""
    return {"skipped_steps": int(opt.skipped_steps),
            "curvature_floor": opt.curvature_floor,
            "hessian_due": opt.hessian_due,
            "groups": [group_report(opt, group, as_used) for group in opt.param_groups]}
