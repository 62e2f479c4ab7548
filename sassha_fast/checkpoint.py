"""Checkpoints: the optimizers' ``state_dict`` / ``load_state_dict`` and pickling
(``Checkpointing``), the authors' optimizers' ``state_dict`` converted to this package's
format, and saved Rademacher generator states matched to the devices the parameters now
live on."""
import warnings
from collections import OrderedDict
from typing import Callable, Dict, Iterable, Optional, Tuple

import torch
from torch import Tensor

from . import backends, step_counters

# State kept in fp32 whatever the parameter's dtype (PyTorch's loader would cast it).
STATE_TENSOR_KEYS = ("exp_avg", "exp_hessian_diag")  # in backends.state_dtype(p.dtype)

# The authors' names of per-parameter state -> this package's.
AUTHORS_STATE_KEYS = {"hessian step": "hessian_step", "grad_momentum": "exp_avg",
                      "hess_momentum": "exp_hessian_diag"}
# Settings the authors keep in every parameter group and this package on the optimizer.
AUTHORS_GROUP_SETTINGS = ("lazy_hessian", "n_samples", "adaptive", "seed")


def is_authors_format(state_dict: dict) -> bool:
    """This package writes its own section; the authors' optimizers (and torch) do not."""
    return "sassha_fast" not in state_dict


def from_authors_format(state_dict: dict, optimizer,
                        bias_correction2: Optional[Callable[[int, dict], float]],
                        dropped_keys: Iterable[str] = ("e_w",)) -> dict:
    """The authors' ``state_dict`` in this package's format.

    State keys are renamed (``AUTHORS_STATE_KEYS``); a parameter group keeps the saved value
    of every hyper-parameter this optimizer has and takes the optimizer's own for the rest
    (``hessian_power``); M-SASSHA's ``norm_factor`` list becomes a float; a missing
    ``bias_correction2`` (M-SASSHA keeps it in a module global) is rebuilt from the step by
    ``bias_correction2(step, group)`` (None: the optimizer has none). ``dropped_keys`` are
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
        if bias_correction2 is not None and "step" in converted and \
                "bias_correction2" not in converted:
            converted["bias_correction2"] = bias_correction2(int(converted["step"]),
                                                             group_of[index])
        state[index] = converted
    return {"state": state, "param_groups": groups}


def _warn_on_other_settings(saved_group: dict, optimizer) -> None:
    for name in AUTHORS_GROUP_SETTINGS:
        if name in saved_group and hasattr(optimizer, name) and \
                saved_group[name] != getattr(optimizer, name):
            warnings.warn(f"the checkpoint was written with {name}={saved_group[name]!r}; "
                          f"this optimizer keeps its own {name}={getattr(optimizer, name)!r}")


def last_hessian_step(step: int, lazy_hessian: int) -> int:
    """The last step t <= ``step`` that updated the Hessian average ((t - 1) % k == 0), or 0."""
    return 0 if step < 1 else (step - 1) // lazy_hessian * lazy_hessian + 1


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


# What torch.optim.Optimizer keeps in an instance (its own pickling handles these).
_TORCH_OPTIMIZER_ATTRIBUTES = frozenset(
    torch.optim.Optimizer([torch.zeros(1, requires_grad=True)], {}).__dict__)


class Checkpointing:
    """``state_dict`` / ``load_state_dict`` and pickling for ``HessianOptimizer`` (a mixin):
    this package's section beside torch's, the authors' format on load, and every setting
    and counter through pickle and ``copy.deepcopy``."""

    # Per-parameter state of the authors' checkpoints that is not kept (see
    # from_authors_format).
    _AUTHORS_DROPPED_KEYS: Tuple[str, ...] = ("e_w",)

    # -- pickling and deep copies -------------------------------------------------------

    def __getstate__(self) -> dict:
        # torch.optim.Optimizer pickles defaults, state and param_groups only; every
        # setting and counter of this package must survive too (resolved backends are
        # looked up again; hooks are dropped, as torch drops them).
        state = super().__getstate__()
        state.update({key: value for key, value in self.__dict__.items()
                      if key not in _TORCH_OPTIMIZER_ATTRIBUTES and key != "_ops_by_device"})
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._ops_by_device = {}
        for group in self.param_groups:
            self._backward_record.watch(group["params"])

    # -- checkpoints ------------------------------------------------------------------

    def _extra_state(self) -> dict:
        return {"rademacher": self._rademacher.state_dict(), **self._skips.state_dict()}

    def _load_extra_state(self, extra: dict) -> None:
        devices = [p.device for p in self.get_params()]
        self._rademacher.load_state_dict(
            generator_states_for(extra.get("rademacher", {}), devices))
        self._skips.load_state_dict(extra)

    def _authors_bias_correction2(self, step: int, group: dict) -> float:
        """``bias_correction2`` for an authors' checkpoint that lacks it."""
        raise ValueError("the checkpoint's state has a step but no bias_correction2")

    def _authors_extra_state(self) -> dict:
        """What this package saves beside the state, for an authors' checkpoint."""
        return {}

    def state_dict(self) -> dict:
        state_dict = super().state_dict()
        state_dict["sassha_fast"] = self._extra_state()
        return state_dict

    def load_state_dict(self, state_dict: dict) -> None:
        """Loads this package's checkpoints and the authors' optimizers' (converted, see
        ``checkpoint.from_authors_format``), from any device and backend. Pre-hooks see
        the dict as saved, and the dict a pre-hook returns is the one loaded; post-hooks
        run once everything is loaded."""
        pre_hooks = self._optimizer_load_state_dict_pre_hooks
        post_hooks = self._optimizer_load_state_dict_post_hooks
        for hook in pre_hooks.values():
            replaced = hook(self, state_dict)
            if replaced is not None:
                state_dict = replaced
        self._optimizer_load_state_dict_pre_hooks = OrderedDict()
        self._optimizer_load_state_dict_post_hooks = OrderedDict()
        try:
            self._load_state_dict(state_dict)
        finally:
            self._optimizer_load_state_dict_pre_hooks = pre_hooks
            self._optimizer_load_state_dict_post_hooks = post_hooks
        for hook in post_hooks.values():
            hook(self)

    def _load_state_dict(self, state_dict: dict) -> None:
        if is_authors_format(state_dict):
            state_dict = from_authors_format(state_dict, self, self._authors_bias_correction2,
                                             self._AUTHORS_DROPPED_KEYS)
            extra = self._authors_extra_state()
        else:
            state_dict = dict(state_dict)
            extra = state_dict.pop("sassha_fast")
        super().load_state_dict(state_dict)
        # PyTorch casts floating state to the parameter's dtype; ours stays in the state
        # dtype (float32, float64 for float64 parameters).
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for saved_id, p in zip(saved_ids, params):
            saved = state_dict["state"].get(saved_id, {})
            for key in STATE_TENSOR_KEYS:
                if key in saved:
                    self.state[p][key] = saved[key].to(device=p.device,
                                                       dtype=backends.state_dtype(p.dtype),
                                                       copy=True)
        # Counters in the representation of this optimizer's path, whichever path saved them.
        step_counters.load([(g, p, self.state[p], state_dict["state"][i])
                            for g, (saved_group, group) in enumerate(
                                zip(state_dict["param_groups"], self.param_groups))
                            for i, p in zip(saved_group["params"], group["params"])
                            if i in state_dict["state"]], self.device_path)
        self._load_extra_state(extra)
        self._estimator.reset()
        self._first_pass_nonfinite = False
        self._first_pass_found_inf = None
