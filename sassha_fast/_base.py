"""What SASSHA and M-SASSHA share: hyper-parameters, per-parameter state, the lazy Hessian
schedule, backend dispatch and checkpointing. The update rules live in the subclasses."""
import warnings
from collections import OrderedDict
from typing import Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from . import amp, backends, checkpoint, dtensor, errors
from ._validation import (check_dense, check_hessian_power, check_hyperparameters,
                          check_parameters, check_positive_int)
from .distributed import Averager, check_process_group
from .hessian import RademacherSource, hutchinson

# State kept in fp32 whatever the parameter's dtype (PyTorch's loader would cast it).
FP32_STATE_KEYS = ("exp_avg", "exp_hessian_diag")
_GROUP_HYPERPARAMETERS = ("lr", "betas", "weight_decay", "rho", "eps", "hessian_power")
_CREATE_GRAPH_WARNING = r"Using backward\(\) with create_graph=True"
NONFINITE_POLICIES = ("skip", "raise", "ignore")


class Entry(NamedTuple):
    """A parameter that takes part in this step."""
    param: Tensor
    state: Optional[dict]  # None until the step is known to be applied
    hessian_now: bool  # a Hessian estimate was computed for it in this step


class Bucket(NamedTuple):
    """Parameters of one group that one op call updates: same device, dtype, step count,
    Hessian refresh, second bias correction and subclass-specific ``extra``."""
    ops: "backends.Ops"
    params: List[Tensor]
    exp_avgs: List[Tensor]
    exp_hessians: List[Tensor]
    step: int
    bias_correction2: float
    extra: object


class Plan(NamedTuple):
    """The work of one step, decided before anything is modified."""
    groups: List[Tuple[dict, List[Entry]]]
    hessians: Dict[Tensor, Tensor]
    rademacher_before: Optional[dict]  # generator states before this step's draws

    def params(self) -> List[Tensor]:
        return [entry.param for _, entries in self.groups for entry in entries]


def buckets(items: Iterable, key: Callable) -> "OrderedDict":
    """Items grouped by ``key(item)``, in first-seen order (each bucket is one op call)."""
    items = list(items)
    keys = [key(item) for item in items]
    grouped: "OrderedDict" = OrderedDict()
    if keys and keys.count(keys[0]) == len(keys):  # the common case: one bucket
        grouped[keys[0]] = items
        return grouped
    for item, item_key in zip(items, keys):
        grouped.setdefault(item_key, []).append(item)
    return grouped


class HessianOptimizer(torch.optim.Optimizer):
    """Base class; subclasses define ``_apply_update(plan, hessian_power)``."""

    # GradScaler.step(opt) then hands the optimizer its scale instead of unscaling .grad
    # blindly; the step refuses it and says what to call (see amp.refuse_scaler_step).
    _step_supports_amp_scaling = True

    def __init__(self, params, defaults: dict, *, lazy_hessian: int, n_samples: int, seed: int,
                 hessian_power_scheduler, backend: str, process_group=None,
                 sync_gradients: bool = False, nonfinite: str = "skip"):
        check_positive_int("lazy_hessian", lazy_hessian)
        check_positive_int("n_samples", n_samples)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError(f"Invalid seed value: {seed} (expected an integer)")
        if not isinstance(backend, str):
            raise ValueError(f"Invalid backend: {backend!r}")
        backends.check_name(backend)
        check_process_group(process_group)
        if not isinstance(sync_gradients, bool):
            raise ValueError(f"Invalid sync_gradients value: {sync_gradients!r} (expected a bool)")
        if nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"Invalid nonfinite value: {nonfinite!r} (choose from "
                             + ", ".join(repr(p) for p in NONFINITE_POLICIES) + ")")
        self.sync_gradients = sync_gradients
        self.nonfinite = nonfinite
        self.skipped_steps = 0  # iterations skipped for inf/NaN gradients or Hessian estimates
        self._averager = Averager(process_group)
        self._first_pass_nonfinite = False
        self.lazy_hessian = lazy_hessian
        self.n_samples = n_samples
        self.seed = seed
        self.hessian_power_scheduler = hessian_power_scheduler
        self.hessian_power_t: Optional[float] = None
        self.backend = backend
        self._rademacher = RademacherSource(seed)
        self._ops_by_device: Dict[torch.device, backends.Ops] = {}
        self._has_dtensors = False  # set by add_param_group; the ops then take DTensors
        self._plan: Optional[Plan] = None
        super().__init__(params, defaults)

    # -- parameter groups -------------------------------------------------------------

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            check_hyperparameters(**{k: group[k] for k in _GROUP_HYPERPARAMETERS},
                                  perturb_eps=group.get("perturb_eps", 0.0))
            check_parameters(type(self).__name__, group["params"])
            if dtensor.any_dtensor(group["params"]):
                for p in group["params"]:
                    if dtensor.is_dtensor(p):
                        dtensor.check_placements(p)
                self._has_dtensors = True
                self._ops_by_device.clear()
        except (ValueError, TypeError):
            self.param_groups.pop()
            raise

    def get_params(self):
        """Every parameter that requires a gradient, across all groups."""
        return (p for group in self.param_groups for p in group["params"] if p.requires_grad)

    def _params_with_grad(self, group: dict) -> List[Tensor]:
        params = [p for p in group["params"] if p.requires_grad and p.grad is not None]
        for p in params:
            check_dense(type(self).__name__, p.grad)
        return params

    # -- backends ---------------------------------------------------------------------

    def ops(self, device: torch.device) -> backends.Ops:
        """The backend ops used for tensors on ``device`` (resolved once per device)."""
        ops = self._ops_by_device.get(device)
        if ops is None:
            ops = backends.resolve(self.backend, device)
            if self._has_dtensors:
                ops = dtensor.local_ops(ops)
            self._ops_by_device[device] = ops
        return ops

    @property
    def backends_in_use(self) -> Dict[str, str]:
        """``{device: backend name}`` for every device this optimizer has stepped on."""
        return {str(device): ops.name for device, ops in self._ops_by_device.items()}

    def _global_norm(self, params: List[Tensor], tensors: List[Tensor],
                     weighted: bool) -> Tensor:
        """||(|p| if weighted else 1) * t|| over all the tensors, whatever their device/dtype."""
        if not params:
            return torch.zeros((), dtype=torch.float32)
        squares = []
        for (device, _), indices in buckets(range(len(params)),
                                            lambda i: (params[i].device, params[i].dtype)).items():
            norm = self.ops(device).global_norm([tensors[i] for i in indices],
                                                [params[i] for i in indices] if weighted else None)
            squares.append(norm.square())
        return sqrt_of_sum(squares)

    # -- state ------------------------------------------------------------------------

    def _state_of(self, p: Tensor) -> dict:
        state = self.state[p]
        if "step" not in state:
            state["step"] = 0
            state.setdefault("hessian_step", 0)
            state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32,
                                                memory_format=torch.preserve_format)
            state["exp_hessian_diag"] = torch.zeros_like(p, dtype=torch.float32,
                                                         memory_format=torch.preserve_format)
            state["bias_correction2"] = 0.0
        return state

    @property
    def hessian_due(self) -> bool:
        """Whether the next step estimates a Hessian for some parameter, i.e. whether the
        backward pass that precedes it needs ``create_graph=True``."""
        return any(self.state.get(p, {}).get("hessian_step", 0) % self.lazy_hessian == 0
                   for p in self.get_params())

    def zero_hessian(self) -> None:
        """Kept for the authors' API. Estimates are not accumulated across steps here (no
        per-parameter Hessian buffer is kept), so there is nothing to zero."""

    def _before_hessian(self) -> None:
        """Hook run before the Hessian-vector product (SASSHA leaves the perturbed point)."""

    def _abandon_step(self) -> None:
        """Hook run when a step is skipped (SASSHA leaves the perturbed point)."""

    @torch.no_grad()
    def set_hessian(self) -> None:
        """Estimate the Hessian diagonal for the parameters whose lazy interval is over.
        ``step()`` calls it when the caller has not; the Hessian counters advance when the
        step is applied, so a failed or skipped step leaves no trace."""
        if self._plan is not None:
            return
        groups = []
        due_params: List[Tensor] = []
        for group in self.param_groups:
            entries = []
            for p in self._params_with_grad(group):
                now = self.state.get(p, {}).get("hessian_step", 0) % self.lazy_hessian == 0
                if now:
                    due_params.append(p)
                entries.append(Entry(p, None, now))
            groups.append((group, entries))
        hessians: Dict[Tensor, Tensor] = {}
        rademacher_before = None
        if due_params:
            self._before_hessian()
            rademacher_before = self._rademacher.state_dict()
            try:
                with torch.enable_grad():
                    estimate = hutchinson([p.grad for p in due_params], due_params,
                                          self._rademacher, self.n_samples)
            except RuntimeError as exc:
                self._rademacher.load_state_dict(rademacher_before)
                clearer = errors.compiled_double_backward_error(exc)
                if clearer is None:
                    raise
                raise clearer from exc
            hessians = dict(zip(due_params, estimate))
        self._plan = Plan(groups, hessians, rademacher_before)

    def _next_hessian_power(self) -> Optional[float]:
        """The scheduler's power for this step, or None to use each group's constant."""
        if self.hessian_power_scheduler is None:
            self.hessian_power_t = None
            return None
        power = self.hessian_power_scheduler.step()
        check_hessian_power(power)
        self.hessian_power_t = float(power)
        return self.hessian_power_t

    @torch.no_grad()
    def _step_from_gradients(self, scaler=None) -> bool:
        """The step from the gradients present: Hessian estimate, averaging across ranks,
        unscaling, the finite check, then the update. False when the step was skipped."""
        amp.refuse_scaler_step(self)
        self.set_hessian()
        plan, self._plan = self._plan, None
        carrying_graph = [p for p in plan.params() if p.grad.grad_fn is not None]
        # The gradients of a create_graph backward hold the whole double-backward graph.
        for p in self.get_params():
            if p.grad is not None and p.grad.grad_fn is not None:
                p.grad = p.grad.detach()
        grads = [p.grad for p in plan.params()]
        hessians = list(plan.hessians.values())
        # DDP cannot have averaged the gradients of a create_graph backward (it fails on one).
        to_average = grads if self.sync_gradients else [p.grad for p in carrying_graph]
        self._averager.average_(to_average + hessians)
        amp.unscale_(scaler, grads + hessians)
        if not self._finite(plan, scaler):
            return False
        self._apply_update(self._commit(plan), self._next_hessian_power())
        return True

    def _commit(self, plan: Plan) -> Plan:
        """The plan with each parameter's state, its Hessian counter advanced."""
        groups = []
        for group, entries in plan.groups:
            committed = []
            for entry in entries:
                state = self._state_of(entry.param)
                state["hessian_step"] += 1
                committed.append(Entry(entry.param, state, entry.hessian_now))
            groups.append((group, committed))
        return plan._replace(groups=groups)

    def _finite(self, plan: Plan, scaler) -> bool:
        """Whether the step's gradients and Hessian estimates (and the first pass's
        gradients) are finite on every rank. When not, the iteration is undone: the
        parameters leave the perturbed point, the generator rewinds and no state moves."""
        first_pass_nonfinite, self._first_pass_nonfinite = self._first_pass_nonfinite, False
        if self.nonfinite == "ignore" and not amp.enabled(scaler):
            return True
        params = plan.params()
        norm = self._global_norm(params, [p.grad for p in params], False)
        hessian_norm = self._global_norm(list(plan.hessians), list(plan.hessians.values()),
                                         False)
        # On a parameter's device: NCCL reduces no CPU tensor, and the norms of no tensors
        # (a skipped second pass) are CPU zeros.
        device = self.param_groups[0]["params"][0].device
        found_inf = (~torch.isfinite(norm.to(device) + hessian_norm.to(device))).float()
        if first_pass_nonfinite:
            found_inf.fill_(1.0)
        found_inf = self._averager.any(found_inf)
        amp.record_found_inf(scaler, self, found_inf)
        if not found_inf.item():
            return True
        if plan.rademacher_before is not None:
            self._rademacher.load_state_dict(plan.rademacher_before)
        self._abandon_step()
        if self.nonfinite == "raise" and not amp.enabled(scaler):
            raise FloatingPointError(self._nonfinite_message(
                [(p, "gradient", p.grad) for p in params]
                + [(p, "Hessian estimate", h) for p, h in plan.hessians.items()]))
        self.skipped_steps += 1
        return False

    def _nonfinite_message(self, items: List[Tuple[Tensor, str, Tensor]]) -> str:
        """Names the first (parameter, what, tensor) whose tensor holds inf or NaN."""
        where = {id(p): (g, i) for g, group in enumerate(self.param_groups)
                 for i, p in enumerate(group["params"])}
        for p, what, tensor in items:
            if not torch.isfinite(tensor).all():
                group, index = where[id(p)]
                return (f"the {what} of parameter {index} of group {group} (shape "
                        f"{tuple(p.shape)}) holds inf or NaN; the step was not applied")
        return "a gradient or Hessian estimate on another rank holds inf or NaN; the step " \
               "was not applied"

    def _apply_update(self, plan: Plan, hessian_power: Optional[float]) -> None:
        raise NotImplementedError

    def _update_buckets(self, plan: Plan, entries: List[Entry], beta2: float,
                        extra: Callable[[Tensor], object] = lambda p: None) -> Iterator[Bucket]:
        """A group's entries split into op calls, each with its fresh Hessian estimates
        already folded into D (the EMA), ready for the subclass's update op."""
        def key(entry):
            return (entry.param.device, entry.param.dtype, entry.state["step"],
                    entry.hessian_now, entry.state["bias_correction2"], extra(entry.param))

        for (device, _, step, hessian_now, bias_correction2, extra_value), bucket in \
                buckets(entries, key).items():
            ops = self.ops(device)
            params = [e.param for e in bucket]
            exp_hessians = [e.state["exp_hessian_diag"] for e in bucket]
            if hessian_now:
                ops.hessian_ema(exp_hessians, [plan.hessians[p] for p in params], beta2)
            yield Bucket(ops, params, [e.state["exp_avg"] for e in bucket], exp_hessians,
                         step, bias_correction2, extra_value)

    @staticmethod
    def _backward(loss: Tensor, create_graph: bool) -> None:
        with torch.enable_grad(), warnings.catch_warnings():
            # The reference cycle PyTorch warns about is broken by the step, which
            # detaches the gradients once the Hessian-vector product is done.
            warnings.filterwarnings("ignore", message=_CREATE_GRAPH_WARNING)
            try:
                loss.backward(create_graph=create_graph)
            except RuntimeError as exc:
                clearer = errors.create_graph_backward_error(exc) if create_graph else None
                if clearer is None:
                    raise
                raise clearer from exc

    def _evaluate(self, closure: Callable[[], Tensor]) -> Tensor:
        with torch.enable_grad():
            loss = closure()
        if not isinstance(loss, Tensor) or not loss.requires_grad:
            raise ValueError("the closure must return the loss as a tensor that requires grad "
                             "(compute it; do not call backward: the optimizer does)")
        if any(p.grad is not None for p in self.get_params()):
            raise ValueError("the closure must not call backward(): it returns the loss and "
                             "the optimizer runs the backward passes itself")
        return loss

    # -- checkpoints ------------------------------------------------------------------

    def _extra_state(self) -> dict:
        return {"rademacher": self._rademacher.state_dict(),
                "skipped_steps": self.skipped_steps}

    def _load_extra_state(self, extra: dict) -> None:
        devices = [p.device for p in self.get_params()]
        self._rademacher.load_state_dict(
            checkpoint.generator_states_for(extra.get("rademacher", {}), devices))
        self.skipped_steps = extra.get("skipped_steps", 0)

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
        ``checkpoint.from_authors_format``), from any device and backend."""
        if checkpoint.is_authors_format(state_dict):
            state_dict = checkpoint.from_authors_format(state_dict, self,
                                                        self._authors_bias_correction2)
            extra = self._authors_extra_state()
        else:
            state_dict = dict(state_dict)
            extra = state_dict.pop("sassha_fast")
        super().load_state_dict(state_dict)
        # PyTorch casts floating state to the parameter's dtype; ours stays fp32.
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for saved_id, p in zip(saved_ids, params):
            saved = state_dict["state"].get(saved_id, {})
            for key in FP32_STATE_KEYS:
                if key in saved:
                    self.state[p][key] = saved[key].to(device=p.device, dtype=torch.float32,
                                                       copy=True)
        self._load_extra_state(extra)
        self._plan = None
        self._first_pass_nonfinite = False


def group_scalars(group: dict, hessian_power: Optional[float]) -> Tuple[float, float, float]:
    """(beta1, beta2, power) of a group for this step."""
    beta1, beta2 = group["betas"]
    return beta1, beta2, group["hessian_power"] if hessian_power is None else hessian_power


def sqrt_of_sum(squares: List[Tensor]) -> Tensor:
    """sqrt of a sum of 0-d tensors that may live on different devices."""
    device = squares[0].device
    return torch.stack([s.to(device) for s in squares]).sum().sqrt()
