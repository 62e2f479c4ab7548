"""The pieces of the optimizers' checkpoints that torch.optim.Optimizer does not handle:
load-state-dict hooks around a loader of their own, this package's section of the dict (or
the authors' format, converted), the checks a checkpoint passes before anything is replaced
(another optimizer's refused by name, every state tensor against its parameter), state
tensors kept in the compute dtype, and the attributes a pickle or ``copy.deepcopy`` must
carry."""
import math
from collections import OrderedDict
from typing import Callable, Iterable, List, Tuple

import torch

from ..backends.reference import compute_dtype
from ..step.authors_format import (STATE_TENSOR_KEYS, from_authors_format,
                                   generator_states_for, is_authors_format)
from .validation import GROUP_HYPERPARAMETERS, check_hyperparameters

# What torch.optim.Optimizer keeps in an instance (its own pickling handles these).
_TORCH_OPTIMIZER_ATTRIBUTES = frozenset(
    torch.optim.Optimizer([torch.zeros(1, requires_grad=True)], {}).__dict__)


def own_attributes(attributes: dict) -> dict:
    """The instance attributes that torch's pickling of an optimizer leaves out: every
    setting and collaborator of this package (hooks are dropped, as torch drops them)."""
    return {key: value for key, value in attributes.items()
            if key not in _TORCH_OPTIMIZER_ATTRIBUTES}


def load_with_hooks(optimizer: torch.optim.Optimizer, state_dict: dict,
                    load: Callable[[dict], None]) -> None:
    """``load(state_dict)`` with torch's load-state-dict hooks: pre-hooks see the dict as
    saved and the dict a pre-hook returns is the one loaded; post-hooks run once everything
    is loaded (and not inside ``load``, which calls torch's own loader)."""
    pre_hooks = optimizer._optimizer_load_state_dict_pre_hooks
    post_hooks = optimizer._optimizer_load_state_dict_post_hooks
    for hook in pre_hooks.values():
        replaced = hook(optimizer, state_dict)
        if replaced is not None:
            state_dict = replaced
    optimizer._optimizer_load_state_dict_pre_hooks = OrderedDict()
    optimizer._optimizer_load_state_dict_post_hooks = OrderedDict()
    try:
        load(state_dict)
    finally:
        optimizer._optimizer_load_state_dict_pre_hooks = pre_hooks
        optimizer._optimizer_load_state_dict_post_hooks = post_hooks
    for hook in post_hooks.values():
        hook(optimizer)


def split(state_dict: dict, optimizer, bias_correction2: Callable,
          authors_dropped_keys: Tuple[str, ...], authors_extra: dict) -> Tuple[dict, dict]:
    """(torch's part of the dict, this package's section). An authors' checkpoint is
    converted first (``step.authors_format``) and gets ``authors_extra`` as its section."""
    if is_authors_format(state_dict):
        return (from_authors_format(state_dict, optimizer, bias_correction2,
                                    authors_dropped_keys), authors_extra)
    state_dict = dict(state_dict)
    return state_dict, state_dict.pop("sassha_fast")


def restore_compute_dtype(state: dict, param_groups: List[dict], state_dict: dict) -> None:
    """PyTorch's loader casts floating state to the parameter's dtype; ours stays in the
    compute dtype (float32, float64 for float64 parameters)."""
    saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
    params = [p for g in param_groups for p in g["params"]]
    for saved_id, p in zip(saved_ids, params):
        saved = state_dict["state"].get(saved_id, {})
        for key in STATE_TENSOR_KEYS:
            if key in saved:
                state[p][key] = saved[key].to(device=p.device, dtype=compute_dtype(p.dtype),
                                              copy=True)


def saved_states(state: dict, param_groups: List[dict], state_dict: dict) -> list:
    """(group index, parameter, its state, the saved state) for every saved state."""
    return [(g, p, state[p], state_dict["state"][i])
            for g, (saved_group, group) in enumerate(zip(state_dict["param_groups"],
                                                         param_groups))
            for i, p in zip(saved_group["params"], group["params"])
            if i in state_dict["state"]]


# Per-parameter state keys by which other optimizers' checkpoints are recognised.
_FOREIGN_KEYS = (
    ("mu_product", "torch.optim.NAdam"), ("max_exp_avg_sq", "torch.optim.Adam(amsgrad=True)"),
    ("exp_avg_sq", "torch.optim.Adam / AdamW (or RAdam)"), ("exp_inf", "torch.optim.Adamax"),
    ("momentum_buffer", "torch.optim.SGD"), ("acc_delta", "torch.optim.Adadelta"),
    ("square_avg", "torch.optim.RMSprop"), ("sum", "torch.optim.Adagrad"),
    ("ax", "torch.optim.ASGD"), ("step_size", "torch.optim.Rprop"),
    ("row_var", "torch.optim.Adafactor"))
_NONFINITE_OPT_OUT = ("nonfinite='ignore' (the optimizer checks nothing for inf/NaN then) loads "
                      "it anyway")


class CheckpointError(ValueError):
    """A state dict this optimizer cannot load; nothing was changed."""


def check_foreign(state_dict: dict, optimizer_name: str) -> None:
    """Refuses another optimizer's checkpoint by name, before any conversion."""
    keys = {key for saved in state_dict.get("state", {}).values() if isinstance(saved, dict)
            for key in saved}
    for key, name in _FOREIGN_KEYS:
        if key in keys:
            raise CheckpointError(
                f"this is a checkpoint of another optimizer ({name}: its state holds "
                f"{key!r}), not of {optimizer_name} or the authors' SASSHA / M-SASSHA; load it "
                f"into that optimizer, or start {optimizer_name} from fresh state")


def _scalar(value, what: str) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_complex() or value.device.type == "meta":
            raise CheckpointError(f"{what} is a tensor of shape {tuple(value.shape)} on "
                                  f"{value.device}; expected one real number")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CheckpointError(f"{what} is {value!r}; expected a number")
    if not math.isfinite(value):
        raise CheckpointError(f"{what} is {value}; expected a finite number")
    return float(value)


def _check_tensor(t, p: torch.Tensor, what: str, allow_nonfinite: bool,
                  nonnegative: bool) -> None:
    if not isinstance(t, torch.Tensor):
        raise CheckpointError(f"{what} is a {type(t).__name__}; expected a tensor")
    if not t.is_floating_point():
        raise CheckpointError(f"{what} has dtype {t.dtype}; expected a floating tensor")
    if t.device.type == "meta":
        raise CheckpointError(f"{what} is a meta tensor, which holds no values")
    if t.shape != p.shape:
        raise CheckpointError(f"{what} has shape {list(t.shape)}, but its parameter has shape "
                              f"{list(p.shape)}: the checkpoint belongs to another model or "
                              "parameter order")
    if not allow_nonfinite and not bool(torch.isfinite(t).all()):
        raise CheckpointError(f"{what} holds inf or NaN (a diverged run's checkpoint?); "
                              + _NONFINITE_OPT_OUT)
    if nonnegative and bool((t < 0).any()):
        raise CheckpointError(f"{what} holds negative values; it averages |h| and cannot")


def check_state(state_dict: dict, param_groups: List[dict], hyperparameters: Iterable[str],
                has_second_correction: bool, allow_nonfinite: bool) -> None:
    """Every saved state against its parameter, in this package's format (after any
    conversion): the groups, the keys a state needs, each state tensor's kind, shape and
    values, and the counters. Raises ``CheckpointError`` naming the parameter."""
    required = ("step",) + STATE_TENSOR_KEYS + (("bias_correction2",)
                                                if has_second_correction else ())
    saved_groups = state_dict.get("param_groups")
    if not isinstance(saved_groups, list) or not isinstance(state_dict.get("state"), dict):
        raise CheckpointError("the state dict lacks 'state' or 'param_groups'")
    if len(saved_groups) != len(param_groups):
        raise CheckpointError(f"the checkpoint has {len(saved_groups)} parameter group(s), "
                              f"this optimizer {len(param_groups)}")
    for g, (saved_group, group) in enumerate(zip(saved_groups, param_groups)):
        # The optimizer's own keys only: an LR scheduler's initial_lr, or a key torch or a
        # framework's wrapper adds to the defaults (differentiable), is not ours to require.
        missing = [key for key in hyperparameters if key not in saved_group]
        if missing:
            raise CheckpointError(f"parameter group {g} of the checkpoint lacks "
                                  f"{', '.join(map(repr, missing))}: it was written by another "
                                  "optimizer (SASSHA's and M-SASSHA's groups differ)")
        try:
            check_hyperparameters(**{k: saved_group[k] for k in GROUP_HYPERPARAMETERS},
                                  perturb_eps=saved_group.get("perturb_eps", 0.0))
        except ValueError as exc:
            raise CheckpointError(f"parameter group {g} of the checkpoint: {exc}") from None
        if len(saved_group["params"]) != len(group["params"]):
            raise CheckpointError(f"parameter group {g} of the checkpoint has "
                                  f"{len(saved_group['params'])} parameters, this optimizer's "
                                  f"{len(group['params'])}")
        for i, (index, p) in enumerate(zip(saved_group["params"], group["params"])):
            saved = state_dict["state"].get(index)
            if not saved:
                continue
            where = f"the state of parameter {i} of group {g} (shape {list(p.shape)})"
            missing = [key for key in required if key not in saved]
            if missing:
                raise CheckpointError(f"{where} lacks {', '.join(map(repr, missing))} (present: "
                                      f"{', '.join(map(repr, saved))})")
            for key in STATE_TENSOR_KEYS:
                _check_tensor(saved[key], p, f"{where}: {key}", allow_nonfinite,
                              nonnegative=key == "exp_hessian_diag")
            if _scalar(saved["step"], f"{where}: step") < 0:
                raise CheckpointError(f"{where}: step is negative")
            if "bias_correction2" in saved and \
                    not 0.0 <= _scalar(saved["bias_correction2"],
                                       f"{where}: bias_correction2") <= 1.0:
                raise CheckpointError(f"{where}: bias_correction2 is outside [0, 1]")
            if "hessian_step" in saved and \
                    _scalar(saved["hessian_step"], f"{where}: hessian_step") < 0:
                raise CheckpointError(f"{where}: hessian_step is negative")


class Checkpointable:
    """The checkpoint side of ``HessianOptimizer`` (before ``torch.optim.Optimizer`` in its
    bases): what it saves beside torch's state dict, how it loads one (every check before
    anything is replaced), and what a pickle or ``copy.deepcopy`` carries."""

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state.update(own_attributes(self.__dict__))
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            self._backward_record.watch(group["params"])

    def _extra_state(self) -> dict:
        """What this package saves beside torch's state dict."""
        return {"rademacher": self._rademacher.state_dict(),
                **self._path.skips.state_dict()}

    def _load_extra_state(self, extra: dict) -> None:
        devices = [p.device for p in self.get_params()]
        self._rademacher.load_state_dict(
            generator_states_for(extra.get("rademacher", {}), devices))
        self._path.skips.load_state_dict(extra)

    def _authors_extra_state(self) -> dict:
        """What this package saves beside the state, for an authors' checkpoint."""
        return {}

    def state_dict(self) -> dict:
        state_dict = super().state_dict()
        state_dict["sassha_fast"] = self._extra_state()
        return state_dict

    def load_state_dict(self, state_dict: dict) -> None:
        """This package's checkpoints and the authors' (converted), from any device and
        backend, with torch's hooks. One that does not fit raises ``CheckpointError`` naming
        the tensor, and the optimizer stays exactly as it was (``optim.checkpointing``)."""
        load_with_hooks(self, state_dict, self._load_state_dict)

    def _load_state_dict(self, state_dict: dict) -> None:
        # Every check runs before anything is replaced: a refused checkpoint changes nothing.
        check_foreign(state_dict, type(self).__name__)
        policy = self._bias_correction
        state_dict, extra = split(
            state_dict, self, lambda step, group: policy.for_authors_checkpoint(
                step, group["betas"][1], self.lazy_hessian),
            self._schedule.authors_dropped_keys, self._authors_extra_state())
        check_state(state_dict, self.param_groups, self._hyperparameters,
                                  policy.has_second, allow_nonfinite=self.nonfinite == "ignore")
        super().load_state_dict(state_dict)
        restore_compute_dtype(self.state, self.param_groups, state_dict)
        # Counters in the representation of this optimizer's path, whichever path saved them.
        self._path.load(saved_states(self.state, self.param_groups, state_dict))
        self._load_extra_state(extra)
        self._estimator.reset()
        self._averaged_ahead.plan = None
        self._checks.reset()
