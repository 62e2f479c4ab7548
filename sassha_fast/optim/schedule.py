"""When a parameter's Hessian estimate is due.

``LazySchedule`` is SASSHA's and M-SASSHA's: each parameter counts the steps applied to it
(``hessian_step``) and is estimated every ``lazy_hessian`` of them. ``CallerSchedule`` is the
authors' language-model variant's: every ``set_hessian()`` estimates every parameter with a
gradient, and the caller's ``step(iter_num)`` decides whether the step folds the summed
estimates into the average (``iter_num % lazy_hessian == 0``)."""
from typing import Optional, Tuple

from ..hessian.estimators import entries
from ..step.plan import Entry, Plan


class LazySchedule:
    # Per-parameter state of the authors' checkpoints that means nothing here: the
    # perturbation of a past iteration (they save at the clean point).
    authors_dropped_keys: Tuple[str, ...] = ("e_w",)

    def __init__(self, lazy_hessian: int):
        self.lazy_hessian = lazy_hessian

    @staticmethod
    def counter(state: Optional[dict]) -> int:
        """The parameter's Hessian counter. The authors' resume path writes
        ``state[p]["hessian step"] = 0`` to force a fresh estimate: that key is honoured
        here, taken over as ``hessian_step``."""
        if state is None:
            return 0
        if "hessian step" in state:
            state["hessian_step"] = int(state.pop("hessian step"))
        return state.get("hessian_step", 0)

    def due(self, state: Optional[dict]) -> bool:
        # `not`, which torch.compile must evaluate to a bool: once it traces the counter as
        # a symbol, a symbolic "due" would key the update's op buckets, which it cannot.
        return not self.counter(state) % self.lazy_hessian

    @staticmethod
    def init_state(state: dict) -> None:
        state.setdefault("hessian_step", 0)

    @staticmethod
    def applied(state: dict) -> None:
        state["hessian_step"] += 1

    @staticmethod
    def plan(estimator, opt) -> Plan:
        return estimator.plan(opt)


class CallerSchedule:
    # Their "hessian step" counter is read by nothing (the iteration number decides).
    authors_dropped_keys: Tuple[str, ...] = ("e_w", "hessian step")

    def __init__(self, lazy_hessian: int):
        self.lazy_hessian = lazy_hessian
        self.refresh = False  # whether the step in progress refreshes the Hessian average

    def start_step(self, iter_num: int) -> None:
        self.refresh = iter_num % self.lazy_hessian == 0

    @staticmethod
    def due(state: Optional[dict]) -> bool:
        return True

    @staticmethod
    def init_state(state: dict) -> None:
        """No counter: the iteration number decides."""

    @staticmethod
    def applied(state: dict) -> None:
        """No counter to advance."""

    def plan(self, estimator, opt) -> Plan:
        """The estimates ``set_hessian()`` summed (``estimator`` is ``estimators.Summed``)
        when this step refreshes the average, none otherwise. The caller reduces the
        gradients itself (``_sync_gradient()``): no gradient is marked for averaging."""
        summed = estimator.sum
        plan, estimator.sum = summed, None
        if plan is None:
            plan = Plan(entries(opt)[0], {}, None)
        if not self.refresh:
            plan = plan._replace(hessians={})
        elif any(p not in plan.hessians for p in plan.params()):
            estimator.sum = summed
            missing = sum(p not in plan.hessians for p in plan.params())
            raise RuntimeError(
                "this step refreshes the Hessian average (iter_num % lazy_hessian == 0), but "
                f"{missing} parameter(s) with a gradient have no Hessian estimate: call "
                "set_hessian() after each micro-batch's backward(create_graph=True) on "
                "iterations where iter_num % lazy_hessian == 0")
        groups = [(group, [Entry(e.param, None, e.param in plan.hessians) for e in entries])
                  for group, entries in plan.groups]
        return plan._replace(groups=groups, graph_params=frozenset())
