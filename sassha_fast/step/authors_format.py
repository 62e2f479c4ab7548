"""Checkpoints from elsewhere: the authors' optimizers' ``state_dict`` converted to this
package's format, and saved Rademacher generator states matched to the devices the
parameters now live on."""
import warnings
from typing import Callable, Dict, Iterable, Optional

import torch
from torch import Tensor


# State kept in the compute dtype whatever the parameter's (PyTorch's loader would cast it).
STATE_TENSOR_KEYS = ("exp_avg", "exp_hessian_diag")

# The authors' names of per-parameter state -> this package's.
AUTHORS_STATE_KEYS = {"hessian step": "hessian_step", "grad_momentum": "exp_avg",
                      "hess_momentum": "exp_hessian_diag"}
# Settings the authors keep in every parameter group and this package on the optimizer.
AUTHORS_GROUP_SETTINGS = ("lazy_hessian", "n_samples", "adaptive", "seed")


def is_authors_format(state_dict: dict) -> bool:
    """This package writes its own section; the authors' optimizers (and torch) do not."""
    return "sassha_fast" not in state_dict


def from_authors_format(state_dict: dict, optimizer,
                        bias_correction2: Callable[[int, dict], Optional[float]],
                        dropped_keys: Iterable[str] = ("e_w",)) -> dict:
    """The authors' ``state_dict`` in this package's format.

    State keys are renamed (``AUTHORS_STATE_KEYS``); a parameter group keeps the saved value
    of every hyper-parameter this optimizer has and takes the optimizer's own for the rest
    (``hessian_power``); M-SASSHA's ``norm_factor`` list becomes a float; a missing
    ``bias_correction2`` (M-SASSHA keeps it in a module global) is rebuilt from the step by
    ``bias_correction2(step, group)``, which raises when it cannot and returns None when the
    optimizer keeps none. ``dropped_keys`` are
    per-parameter state that means nothing here: the perturbation ``e_w`` of a past
    iteration (the authors save at the clean point). The last Hessian estimate the authors keep on
    ``p.hess`` is not in their ``state_dict`` and is not needed: estimates are not
    accumulated across steps here."""
    groups = []
    for saved, current in zip(state_dict["param_groups"], optimizer.param_groups):
        _warn_on_other_settings(saved, optimizer)
        group = {key: saved.get(key, value) for key, value in current.items()
                 if key != "params"}
        if isinstance(group.get("norm_factor"), (list, tuple)):
            group["norm_factor"] = float(group["norm_factor"][0])
        group["params"] = saved["params"]
        groups.append(group)
    group_of = {index: group for group in groups for index in group["params"]}
    state = {}
    for index, saved in state_dict["state"].items():
        converted = {AUTHORS_STATE_KEYS.get(key, key): value for key, value in saved.items()
                     if key not in dropped_keys}
        if "step" in converted and "bias_correction2" not in converted:
            rebuilt = bias_correction2(int(converted["step"]), group_of[index])
            if rebuilt is not None:
                converted["bias_correction2"] = rebuilt
        state[index] = converted
    return {"state": state, "param_groups": groups}


def _warn_on_other_settings(saved_group: dict, optimizer) -> None:
    for name in AUTHORS_GROUP_SETTINGS:
        if name in saved_group and hasattr(optimizer, name) and \
                saved_group[name] != getattr(optimizer, name):
            warnings.warn(f"the checkpoint was written with {name}={saved_group[name]!r}; "
                          f"this optimizer keeps its own {name}={getattr(optimizer, name)!r}")


def generator_states_for(states: Dict[str, Tensor],
                         devices: Iterable[torch.device]) -> Dict[str, Tensor]:
    """Saved generator states keyed by the devices the parameters now live on.

    A state saved for another device of the same type is used (rank 0's ``cuda:0`` checkpoint
    loaded on ``cuda:1``), so that every rank keeps drawing the same vectors. A state for a
    device type that no parameter uses cannot drive another type's generator: it is dropped
    with a warning, and that device's draws restart from the seed."""
    devices = list(dict.fromkeys(devices))
    first_of_type: Dict[str, Tensor] = {}
    for name, state in states.items():
        first_of_type.setdefault(torch.device(name).type, state)
    matched = {}
    for device in devices:
        state = states.get(str(device), first_of_type.get(device.type))
        if state is not None:
            matched[str(device)] = state
    types_used = {device.type for device in devices}
    dropped = [name for name in states if torch.device(name).type not in types_used]
    if dropped:
        warnings.warn(f"the checkpoint holds Rademacher generator states for {dropped}, where "
                      "no parameter lives now: the Hessian probes on "
                      f"{sorted(types_used)} restart from the seed")
    return matched
