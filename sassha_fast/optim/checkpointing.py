"""The pieces of the optimizers' checkpoints that torch.optim.Optimizer does not handle:
load-state-dict hooks around a loader of their own, this package's section of the dict (or
the authors' format, converted), state tensors kept in the compute dtype, and the
attributes a pickle or ``copy.deepcopy`` must carry."""
from collections import OrderedDict
from typing import Callable, List, Tuple

import torch

from ..backends.reference import compute_dtype
from ..step.authors_format import STATE_TENSOR_KEYS, from_authors_format, is_authors_format

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
