"""What SASSHA and M-SASSHA share: hyper-parameters, per-parameter state, the lazy Hessian
schedule, backend dispatch and the step around the update. The update rules live in the
subclasses; the Hessian estimate in ``estimators``, checkpoints and pickling in
``checkpoint.Checkpointing``, the inf/NaN skip in ``nonfinite.NonfiniteChecks``."""
import warnings
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch
from torch import Tensor

from . import (amp, backends, diagnostics, dtensor, errors, estimators, finite_difference,
               step_counters)
from ._validation import (check_dense, check_hessian_power, check_hyperparameters,
                          check_parameters, check_positive_int)
from .backward_record import BackwardRecord
from .checkpoint import Checkpointing
from .curvature_guard import check_curvature_floor, floor_hessian_
from .dispatch import BackendDispatch
from .distributed import Averager, check_process_group
from .hessian import RademacherSource
from .nonfinite import NONFINITE_POLICIES, NonfiniteChecks
# Also what the subclasses import from here.
from .plan import (Bucket, Entry, Plan, buckets, found_inf_argument,  # noqa: F401
                   group_scalars, kernel_scalar, sqrt_of_sum)
from .skipped_steps import SkipCounter, capturing

_GROUP_HYPERPARAMETERS = ("lr", "betas", "weight_decay", "rho", "eps", "hessian_power")
_CREATE_GRAPH_WARNING = r"Using backward\(\) with create_graph=True"


class HessianOptimizer(Checkpointing, BackendDispatch, NonfiniteChecks,
                       torch.optim.Optimizer):
    """Base class; subclasses define ``_apply_update(plan, hessian_power)``."""

    # GradScaler.step(opt) then hands the optimizer its scale instead of unscaling .grad
    # blindly; the step refuses it and says what to call (see amp.refuse_scaler_step).
    _step_supports_amp_scaling = True

    def __init__(self, params, defaults: dict, *, lazy_hessian: int, n_samples: int, seed: int,
                 hessian_power_scheduler, backend: str, process_group=None,
                 sync_gradients: bool = False, nonfinite: str = "skip",
                 grad_reduce: str = "mean", capturable: Optional[bool] = None,
                 skip_check_interval: int = 100, max_consecutive_skips: Optional[int] = 100,
                 curvature_floor: float = 0.0, hessian_estimator: str = "autograd",
                 fd_scheme: str = "one_sided", fd_eps: Optional[float] = None):
        # Before the parameters are read, as torch's optimizers do.
        check_hyperparameters(**{k: defaults[k] for k in _GROUP_HYPERPARAMETERS},
                              perturb_eps=defaults.get("perturb_eps", 0.0))
        check_positive_int("lazy_hessian", lazy_hessian)
        check_curvature_floor(curvature_floor)
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
        if not isinstance(grad_reduce, str) or grad_reduce.lower() not in ("mean", "sum"):
            raise ValueError('"grad_reduce" should be one of ["mean", "sum"].')
        if capturable not in (None, True, False):
            raise ValueError(f"Invalid capturable value: {capturable!r} (expected None, True "
                             "or False)")
        check_positive_int("skip_check_interval", skip_check_interval)
        if max_consecutive_skips is not None:
            check_positive_int("max_consecutive_skips", max_consecutive_skips)
        self._estimator = estimators.make(hessian_estimator, fd_scheme, fd_eps)
        self.hessian_estimator = hessian_estimator
        self.sync_gradients = sync_gradients
        self.nonfinite = nonfinite
        self.capturable = capturable
        # Iterations skipped for inf/NaN gradients or Hessian estimates.
        self._skips = SkipCounter(skip_check_interval, max_consecutive_skips)
        self.curvature_floor = float(curvature_floor)  # see curvature_guard.py
        self.grad_reduce = grad_reduce.lower()
        self._averager = Averager(process_group, mean=self.grad_reduce == "mean")
        self._first_pass_nonfinite = False  # host path: the first pass held inf/NaN
        self._first_pass_found_inf: Optional[Tensor] = None  # device path: its flag
        # The parameters and skip flag of the step last captured in a CUDA graph.
        self._captured: Tuple[List[Tensor], Optional[Tensor]] = ([], None)
        self.lazy_hessian = lazy_hessian
        self.n_samples = n_samples
        self.seed = seed
        self.hessian_power_scheduler = hessian_power_scheduler
        self.hessian_power_t: Optional[float] = None
        self.backend = backend
        self._rademacher = RademacherSource(seed)
        self._ops_by_device: Dict[Tuple[torch.device, torch.dtype], backends.Ops] = {}
        self._has_dtensors = False  # set by add_param_group; the ops then take DTensors
        self._backward_record = BackwardRecord()
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
        self._backward_record.watch(group["params"])

    def get_params(self):
        """Every parameter that requires a gradient, across all groups."""
        return (p for group in self.param_groups for p in group["params"] if p.requires_grad)

    def _params_with_grad(self, group: dict) -> List[Tensor]:
        params = [p for p in group["params"] if p.requires_grad and p.grad is not None]
        for p in params:
            check_dense(type(self).__name__, p.grad)
        return params

    @property
    def skipped_steps(self) -> int:
        """Iterations skipped for inf/NaN gradients or Hessian estimates (on the device
        path, reading it waits for the device)."""
        return self._skips.count

    def check_skipped_steps(self) -> None:
        """Read the skip counts now and warn (``SkippedStepWarning``) or raise as ``step()``
        does every ``skip_check_interval`` steps on the device path."""
        self._skips.check()

    # -- state ------------------------------------------------------------------------

    def _state_of(self, p: Tensor, fresh: Optional[dict] = None) -> dict:
        """The parameter's state, created when missing. On the device path the states that
        one step creates share their counters through ``fresh`` ({device: counters})."""
        state = self.state[p]
        if "step" not in state:
            if self.device_path:
                fresh = {} if fresh is None else fresh
                if p.device not in fresh:
                    fresh[p.device] = step_counters.new_counters(p.device)
                state["step"], correction = fresh[p.device]
            else:
                state["step"], correction = 0, 0.0
            state.setdefault("hessian_step", 0)
            dtype = backends.state_dtype(p.dtype)
            state["exp_avg"] = torch.zeros_like(p, dtype=dtype,
                                                memory_format=torch.preserve_format)
            state["exp_hessian_diag"] = torch.zeros_like(p, dtype=dtype,
                                                         memory_format=torch.preserve_format)
            state["bias_correction2"] = correction
        return state

    @property
    def hessian_due(self) -> bool:
        """Whether the next step estimates a Hessian for some parameter, i.e. whether the
        backward pass that precedes it needs ``create_graph=True`` (with
        ``hessian_estimator="finite_difference"``: whether ``hessian_probes()`` runs)."""
        return any([self._hessian_due_for(p) for p in self.get_params()])  # reads every key

    def hessian_probes(self, rng_state: Optional["finite_difference.RNGState"] = None):
        """With ``hessian_estimator="finite_difference"``, the gradient evaluations the
        Hessian estimate needs, for a loop of one's own::

            for _ in opt.hessian_probes(rng_state):
                loss_fn(model(x), y).backward()

        Call it once the gradients of the point to estimate at are in ``.grad`` (SASSHA:
        the perturbed pass, before ``unperturb()``; M-SASSHA: its one pass). Each
        iteration moves the parameters to w + eps*z (central: then w - eps*z), freezes
        BatchNorm statistics and replays ``rng_state`` (``sassha_fast.capture_rng_state()``
        taken before that pass's forward, so dropout draws the same masks); the body runs
        the same loss on the same batch (same loss scale) and calls ``backward()``. After
        the loop the parameters and ``.grad`` are as before and ``step()`` uses the
        estimate. On steps where the Hessian is not due it yields nothing."""
        yield from self._estimator.probes(self, rng_state)

    def zero_hessian(self) -> None:
        """Drop the estimates ``set_hessian()`` summed since the last step. Estimates are
        not kept across steps here (no per-parameter Hessian buffer), so a step always
        starts a fresh sum."""
        self._estimator.zero()

    def _before_hessian(self) -> None:
        """Hook run before the Hessian-vector product (SASSHA leaves the perturbed point)."""

    def _abandon_step(self) -> None:
        """Hook run when a step is skipped (SASSHA leaves the perturbed point)."""

    def _hessian_step_of(self, p: Tensor) -> int:
        """The parameter's Hessian counter. The authors' resume path writes
        ``state[p]["hessian step"] = 0`` to force a fresh estimate: that key is honoured
        here, taken over as ``hessian_step``."""
        state = self.state.get(p)
        if state is None:
            return 0
        if "hessian step" in state:
            state["hessian_step"] = int(state.pop("hessian step"))
        return state.get("hessian_step", 0)

    def _hessian_due_for(self, p: Tensor) -> bool:
        """Whether a Hessian estimate is computed for ``p`` in this step."""
        return self._hessian_step_of(p) % self.lazy_hessian == 0

    @torch.no_grad()
    def set_hessian(self) -> None:
        """Add this backward pass's Hessian estimate, for the parameters whose lazy interval
        is over, to the one the next ``step()`` uses. Call it after each micro-batch's
        ``backward(create_graph=True)``: the estimates are summed (scale the micro-batch
        losses as for the gradients), each with fresh Rademacher vectors, and the
        gradients are detached so that the next micro-batch's graph is the only one the
        next call goes through. A held perturbation stays until ``unperturb()``, so the
        Hessian is taken where the backward pass ran. ``step()`` estimates the Hessian
        itself when no call came before it; the Hessian counters advance when the step is
        applied, so a failed or skipped step leaves no trace."""
        self._estimator.add(self)

    def _plan_step(self) -> Plan:
        """The plan of this step: the estimates gathered for it, or a fresh one."""
        return self._estimator.plan(self)

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
        unscaling, the finite check, then the update. False when the step is known on the
        host to be skipped (on the device path the ops skip it on the device)."""
        amp.refuse_scaler_step(self)
        self._backward_record.accumulated = False  # what is in .grad now is this step's
        plan = self._plan_step()
        carrying_graph = [p for p in plan.params()
                          if p.grad.grad_fn is not None or p in plan.graph_params]
        # The gradients of a create_graph backward hold the whole double-backward graph.
        for p in self.get_params():
            if p.grad is not None and p.grad.grad_fn is not None:
                p.grad = p.grad.detach()
        grads = [p.grad for p in plan.params()]
        hessians = list(plan.hessians.values())
        # DDP cannot have averaged the gradients of a create_graph backward (it fails on one).
        to_average = grads if self.sync_gradients else [p.grad for p in carrying_graph]
        # An estimate without a graph differences gradients that DDP has averaged (or, with
        # sync_gradients, local ones: then it is averaged here as they are).
        if self._estimator.needs_graph or self.sync_gradients:
            to_average = to_average + hessians
        self._averager.average_(to_average)
        amp.unscale_(scaler, grads + hessians)
        found_inf = self._found_inf(plan, scaler)
        if self._reads_flags_on_host(scaler):
            if found_inf is not None and found_inf.item():
                self._skip(plan, scaler)
                return False
            found_inf = None
            self._skips.record(False)
        elif found_inf is not None:
            self._skips.record(found_inf)
        self._apply_update(self._commit(plan), self._next_hessian_power(), found_inf)
        self._finish_iteration(plan.params(), found_inf)
        return True

    def _commit(self, plan: Plan) -> Plan:
        """The plan with each parameter's state (created when missing)."""
        groups = []
        for group, entries in plan.groups:
            fresh: dict = {}
            committed = [Entry(entry.param, self._state_of(entry.param, fresh), entry.hessian_now)
                         for entry in entries]
            if self.device_path:
                step_counters.unshare([e.state for e in committed],
                                      [self.state[p] for p in group["params"] if p in self.state])
            groups.append((group, committed))
        return plan._replace(groups=groups)

    def _finish_iteration(self, params: List[Tensor], found_inf: Optional[Tensor]) -> None:
        """The host's bookkeeping of an iteration that was applied, or, on the device path,
        attempted: the lazy-Hessian counters and the skip report. While a CUDA graph is
        captured nothing runs, so it is left to each replay (see ``cuda_graphs``)."""
        if capturing():
            self._captured = (params, found_inf)
            return
        for p in params:
            state = self.state[p]
            if "hessian_step" in state:  # the language-model variant keeps no such counter
                state["hessian_step"] += 1
        self._skips.tick()

    def _apply_update(self, plan: Plan, hessian_power: Optional[float],
                      found_inf: Optional[Tensor]) -> None:
        """The update; ``found_inf`` (device path) is the skip flag the ops read."""
        raise NotImplementedError

    def _hessian_ema(self, ops: backends.Ops, exp_hessians: List[Tensor],
                     hessians: List[Tensor], beta2: float,
                     found_inf: Optional[Tensor] = None) -> None:
        """D = b2*D + (1-b2)*|h|, then the opt-in floor (see curvature_guard.py); neither
        moves D when ``found_inf`` is set."""
        ops.hessian_ema(exp_hessians, hessians, beta2, **found_inf_argument(found_inf))
        floor_hessian_(exp_hessians, self.curvature_floor, found_inf)

    def _bias_corrections(self, group: dict, state: dict,
                          hessian_power: float) -> Tuple[float, float]:
        """(bc1, bc2) as the parameter's last update used them (read on the host: for
        diagnostics only). SASSHA stores bc2 with its power already applied."""
        return 1 - group["betas"][0] ** float(state["step"]), float(state["bias_correction2"])

    def diagnostics(self) -> dict:
        """What to look at when training misbehaves, computed now from the state (no cost
        during ``step()``): ``skipped_steps``, ``curvature_floor``, ``hessian_due`` and, per
        parameter group, ``lr``, ``rho``, ``eps``, ``hessian_power`` (the scheduler's last
        value if one is set), M-SASSHA's ``norm_factor``, and once the group has stepped:
        ``step`` (the largest step count), ``bias_correction1`` and ``bias_correction2`` (as
        that step's update used them), ``hessian_zero_fraction`` (entries of D exactly
        zero), ``hessian_below_eps_fraction`` (entries whose D^hp / bc2 is below ``eps``,
        where ``eps`` rather than the curvature sets the step), ``max_update_ratio`` (the
        largest ||lr / bc1 * m / (D^hp / bc2 + eps)|| / ||p|| over the group's tensors for
        their last step, weight decay aside; NaN ranks first) and
        ``max_update_ratio_param`` (that tensor's index in the group and shape)."""
        return diagnostics.report(self)

    def _update_buckets(self, plan: Plan, entries: List[Entry], beta2: float,
                        found_inf: Optional[Tensor], bias_correction2: Callable,
                        extra: Callable[[Tensor], object] = lambda p: None) -> Iterator[Bucket]:
        """A group's entries split into op calls after their step counters advanced (and,
        on Hessian steps, ``bias_correction2(step)`` was stored), each with its fresh Hessian
        estimates already folded into D (the EMA), ready for the subclass's update op."""
        flags = step_counters.advance([(e.state, e.hessian_now) for e in entries], found_inf,
                                      bias_correction2)

        def key(entry):
            return (entry.param.device, entry.param.dtype, step_counters.key(entry.state),
                    entry.hessian_now, extra(entry.param))

        for (device, dtype, counters, hessian_now, extra_value), bucket in \
                buckets(entries, key).items():
            ops = self.ops(device, dtype)
            params = [e.param for e in bucket]
            exp_hessians = [e.state["exp_hessian_diag"] for e in bucket]
            flag = flags.get(counters)
            if hessian_now:
                self._hessian_ema(ops, exp_hessians, [plan.hessians[p] for p in params], beta2,
                                  flag)
            yield Bucket(ops, params, [e.state["exp_avg"] for e in bucket], exp_hessians,
                         bucket[0].state["step"], bucket[0].state["bias_correction2"],
                         extra_value, flag)

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

    def _check_closure(self, closure) -> None:
        if closure is not None and not callable(closure):
            raise TypeError(f"step(closure) takes a callable, got {type(closure).__name__} (the "
                            "authors' language-model SASSHA's step(iter_num) is "
                            "sassha_fast.lm.SASSHA)")
        if closure is None or not self._backward_record.accumulated:
            return
        # Gradients left by a backward since the last step: torch optimizers add the
        # closure's to them, which SASSHA's passes cannot do consistently (errors.py says
        # why); all-zero ones (zero_grad(set_to_none=False)) carry nothing to drop.
        left = [p for p in self.get_params() if p.grad is not None]
        if left and any(bool(p.grad.detach().ne(0).any()) for p in left):
            raise errors.accumulated_gradients_error(len(left))

    def _closure_pass(self, closure: Callable[[], Tensor], scaler, create_graph: bool,
                      capture_rng: bool = False):
        """The closure's loss, back-propagated, and (with ``capture_rng``) the RNG states
        its forward started from. With the finite-difference estimator a closure may run
        ``backward()`` itself (the torch / Lightning convention, found by the gradients it
        leaves; with a scaler it back-propagates ``scaler.scale(loss)``)."""
        rng = finite_difference.capture_rng_state() if capture_rng else None
        with torch.enable_grad():
            loss = closure()
        if any(p.grad is not None for p in self.get_params()):
            if not self._estimator.needs_graph:
                return loss, rng
            raise errors.closure_called_backward_error()
        if not isinstance(loss, Tensor) or not loss.requires_grad:
            raise ValueError("the closure must return the loss as a tensor that requires grad "
                             "(compute it; do not call backward: the optimizer does)"
                             + errors.framework_advice())
        self._backward(amp.scale_loss(scaler, loss), create_graph)
        return loss, rng

    def _gradient_pass(self, closure: Callable[[], Tensor], scaler, hessian_due: bool):
        """The pass whose gradient the update uses, with what the Hessian estimate needs:
        its graph (double backward) or the probes around it (finite difference)."""
        probing = hessian_due and not self._estimator.needs_graph
        loss, rng = self._closure_pass(closure, scaler, hessian_due and not probing,
                                       capture_rng=probing)
        if probing:
            for _ in self.hessian_probes(rng):
                self._closure_pass(closure, scaler, False)
        return loss
