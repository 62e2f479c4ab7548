"""The work of one step as the optimizer and its estimator pass it around: which parameters
take part, with which state and Hessian estimate."""
from typing import Dict, FrozenSet, List, NamedTuple, Optional, Tuple

from torch import Tensor


class Entry(NamedTuple):
    """A parameter that takes part in this step."""
    param: Tensor
    state: Optional[dict]  # None until the step is known to be applied
    hessian_now: bool  # a Hessian estimate was computed for it in this step


class Plan(NamedTuple):
    """The work of one step, decided before anything is modified."""
    groups: List[Tuple[dict, List[Entry]]]
    hessians: Dict[Tensor, Tensor]
    rademacher_before: Optional[dict]  # generator states before this step's draws
    # Parameters whose gradients carried a graph (set_hessian() detaches them).
    graph_params: FrozenSet[Tensor] = frozenset()

    def params(self) -> List[Tensor]:
        return [entry.param for _, entries in self.groups for entry in entries]
