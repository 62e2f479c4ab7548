"""What SASSHA and M-SASSHA share: hyper-parameters, per-parameter state and the step around
the update (checkpoints: ``checkpointing.Checkpointable``). The update rules live in the
subclasses. The optimizer owns one of
each collaborator and builds it here: the Hessian estimator and schedule, the backend
dispatch, the host or device path (counters, skip record), the inf/NaN check, the averaging
across ranks and the bias-correction policy."""
from typing import Iterator, List, Optional, Tuple

import torch
from torch import Tensor

from ..backends.reference import compute_dtype
from ..distributed import dtensor
from ..distributed.averaging import Averager
from ..hessian import estimators, finite_difference
from ..step import amp, diagnostics
from ..step.authors_format import STATE_TENSOR_KEYS
from ..step.backward_record import BackwardRecord
from ..step.capture import capturing
from ..step.counters import path_for
from ..step.nonfinite import NonfiniteCheck, UpdateFlags, nonfinite_state_message
from ..step.plan import Entry, Plan
from . import checkpointing, passes
from .buckets import Bucket, update_buckets
from .dispatch import Dispatch
from .schedule import LazySchedule
from .validation import check_dense, check_group, check_hessian_power, check_options


class HessianOptimizer(checkpointing.Checkpointable, torch.optim.Optimizer):
    """Base class; subclasses define ``_apply_update(plan, hessian_power, found_inf, written)``."""

    # GradScaler.step(opt) then hands the optimizer its scale instead of unscaling .grad
    # blindly; the step refuses it and says what to call (see amp.refuse_scaler_step).
    _step_supports_amp_scaling = True

    def __init__(self, params, defaults: dict, *, bias_correction, lazy_hessian: int,
                 n_samples: int, seed: int, hessian_power_scheduler, backend: str,
                 process_group=None, sync_gradients: bool = False, nonfinite: str = "skip",
                 grad_reduce: str = "mean", capturable: Optional[bool] = None,
                 skip_check_interval: int = 100, max_consecutive_skips: Optional[int] = 100,
                 curvature_floor: float = 0.0, hessian_estimator: str = "autograd",
                 fd_scheme: str = "one_sided", fd_eps: Optional[float] = None,
                 schedule=None):
        # Before the parameters are read, as torch's optimizers do.
        check_options(defaults, lazy_hessian=lazy_hessian, n_samples=n_samples, seed=seed,
                      backend=backend, process_group=process_group,
                      sync_gradients=sync_gradients, nonfinite=nonfinite,
                      grad_reduce=grad_reduce, capturable=capturable,
                      skip_check_interval=skip_check_interval,
                      max_consecutive_skips=max_consecutive_skips,
                      curvature_floor=curvature_floor)
        self._estimator = estimators.make(hessian_estimator, fd_scheme, fd_eps)
        self.hessian_estimator = hessian_estimator
        self._schedule = LazySchedule(lazy_hessian) if schedule is None else schedule
        self._bias_correction = bias_correction
        self._hyperparameters = tuple(defaults)  # its own group keys (wrappers add others)
        self.sync_gradients = sync_gradients
        self.nonfinite = nonfinite
        self.capturable = capturable
        self.curvature_floor = float(curvature_floor)  # see hessian/curvature_floor.py
        self.grad_reduce = grad_reduce.lower()
        self._averager = Averager(process_group, mean=self.grad_reduce == "mean")
        self._checks = NonfiniteCheck(nonfinite, self._averager)
        # The parameters and skip flag of the step last captured in a CUDA graph.
        self._captured: Tuple[List[Tensor], Optional[Tensor]] = ([], None)
        self.n_samples = n_samples
        self.seed = seed
        self.hessian_power_scheduler = hessian_power_scheduler
        self.hessian_power_t: Optional[float] = None
        self._rademacher = self._estimator.probe_source(seed)
        self._dispatch = Dispatch(backend)
        self._backward_record = BackwardRecord()
        self._averaged_ahead = passes.AveragedAhead()
        super().__init__(params, defaults)
        # Decided once, from the first parameter: where counters and skip flags live.
        self._path = path_for(capturable, self._home_device, skip_check_interval,
                              max_consecutive_skips)

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            check_group(type(self).__name__, group)
            if dtensor.any_dtensor(group["params"]):
                for p in group["params"]:
                    if dtensor.is_dtensor(p):
                        dtensor.check_placements(p)
                self._dispatch.take_dtensors()
            self._dispatch.prepare(group["params"])
        except (ValueError, TypeError, RuntimeError):
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
    def lazy_hessian(self) -> int:
        """Steps between two Hessian estimates (the schedule's)."""
        return self._schedule.lazy_hessian

    @lazy_hessian.setter
    def lazy_hessian(self, value: int) -> None:
        self._schedule.lazy_hessian = value

    @property
    def backend(self) -> str:
        return self._dispatch.backend

    @property
    def device_path(self) -> bool:
        """Whether steps keep their skip decision, counters and norms on the device (no host
        sync, capturable in a CUDA graph): ``capturable``, or, when None, a CUDA parameter."""
        return self._path.on_device

    def ops(self, device: torch.device, dtype: torch.dtype):
        return self._dispatch.ops(device, dtype)  # the backend ops for such parameters

    @property
    def backends_in_use(self):
        """``{device: backend name}`` for every device of its parameters; a device whose
        dtypes use different backends gets one ``"device dtype"`` key each."""
        return self._dispatch.in_use()

    @property
    def _home_device(self) -> torch.device:
        """Where the step's flags and norms meet: the first parameter's device."""
        return self.param_groups[0]["params"][0].device

    def _global_norm(self, params: List[Tensor], tensors: List[Tensor], weighted: bool) -> Tensor:
        return self._dispatch.global_norm(params, tensors, weighted, self._home_device)

    @property
    def skipped_steps(self) -> int:
        """Iterations skipped for inf/NaN gradients or Hessian estimates (on the device
        path, reading it waits for the device)."""
        return self._path.skips.count

    @property
    def nonfinite_updates(self) -> int:
        """Applied updates that wrote inf or NaN (``NonfiniteUpdateWarning``; read as above)."""
        return self._path.skips.written_count

    def check_skipped_steps(self) -> None:
        """Read the skip counts now and warn (``SkippedStepWarning``) or raise as ``step()``
        does every ``skip_check_interval`` steps on the device path."""
        self._path.skips.check(self._skip_cause, self._locate_nonfinite)

    def _state_of(self, p: Tensor, fresh: dict) -> dict:
        """The parameter's state, created when missing (``fresh``: the counters the states
        created by one step share on the device path, see ``step.counters``)."""
        state = self.state[p]
        if "step" not in state:
            state["step"], correction = self._path.new_counters(p.device, fresh)
            self._schedule.init_state(state)
            for key in STATE_TENSOR_KEYS:
                state[key] = torch.zeros_like(p, dtype=compute_dtype(p.dtype),
                                              memory_format=torch.preserve_format)
            if self._bias_correction.has_second:
                state["bias_correction2"] = correction
        return state

    @property
    def hessian_due(self) -> bool:
        """Whether the next step estimates a Hessian for some parameter, i.e. whether the
        backward pass that precedes it needs ``create_graph=True`` (with
        ``hessian_estimator="finite_difference"``: whether ``hessian_probes()`` runs)."""
        return any([self._hessian_due_for(p) for p in self.get_params()])  # reads every key

    def _hessian_due_for(self, p: Tensor) -> bool:
        return self._schedule.due(self.state.get(p))

    def hessian_probes(self, rng_state: Optional["finite_difference.RNGState"] = None):
        """With ``hessian_estimator="finite_difference"``, the gradient evaluations the
        Hessian estimate needs, for a loop of one's own (docs/estimators.md)::

            for _ in opt.hessian_probes(rng_state):
                loss_fn(model(x), y).backward()

        Call it once the gradients of the point to estimate at are in ``.grad`` (SASSHA:
        the perturbed pass, before ``unperturb()``; M-SASSHA: its one pass). Each iteration
        moves the weights to w + eps*z (central: then w - eps*z), freezes BatchNorm
        statistics and replays ``rng_state`` (``sassha_fast.capture_rng_state()`` taken
        before that pass's forward); the body runs the same loss on the same batch and
        calls ``backward()``. Afterwards weights and ``.grad`` are as before. On steps where
        the Hessian is not due it yields nothing."""
        yield from self._estimator.probes(self, rng_state)

    def zero_hessian(self) -> None:
        """Drop the estimates ``set_hessian()`` summed since the last step."""
        self._estimator.zero()

    @torch.no_grad()
    def set_hessian(self) -> None:
        """Add this backward pass's Hessian estimate (parameters whose lazy interval is over)
        to the one the next ``step()`` uses, after each micro-batch's
        ``backward(create_graph=True)``: summed (scale the micro-batch losses as for the
        gradients), each with fresh Rademacher vectors, the gradients detached. Without a
        call ``step()`` estimates it itself (docs/production.md)."""
        self._estimator.add(self)

    def _before_hessian(self) -> None:
        """Hook run before the Hessian-vector product (SASSHA leaves the perturbed point)."""

    def _abandon_step(self) -> None:
        """Hook run when a step is skipped (SASSHA leaves the perturbed point)."""

    def _next_hessian_power(self) -> Optional[float]:
        """The scheduler's power for this step, or None to use each group's constant."""
        if self.hessian_power_scheduler is None and self.hessian_power_t is None:
            return None
        return self._step_power_scheduler()

    @torch.compiler.disable  # eager: torch.compile drops attribute writes on an optimizer
    def _step_power_scheduler(self) -> Optional[float]:  # (pytorch/pytorch#171590)
        scheduler = self.hessian_power_scheduler
        self.hessian_power_t = None if scheduler is None else check_hessian_power(scheduler.step())
        return self.hessian_power_t

    @torch.no_grad()
    @torch.compiler.disable  # the Hessian estimate, as in a Hessian step (estimators)
    def average_gradients(self) -> None:
        """Average across ranks now, rather than in ``step()``, what the step would average
        itself: the gradients DistributedDataParallel could not (a ``create_graph`` pass run
        under ``model.no_sync()``; with ``sync_gradients=True``, every gradient) and the
        Hessian estimate, taken now from their graphs as ``step()`` would take it. Call it
        after the iteration's last backward pass (SASSHA: after ``unperturb()``), before
        whatever reads the gradients ahead of ``step()``: clipping then sees the global
        gradient, as one process over the whole batch would, not each rank's own (averaging
        gradients clipped by different factors is not that). ``step()`` then averages
        nothing again; a second call before it does nothing. Does nothing in a single
        process (there ``step()`` is the same either way)."""
        if self._averaged_ahead.plan is not None:
            if self._backward_record.accumulated:
                self._averaged_ahead.take(accumulated_since=True)  # refused
            return  # averaged already, and nothing accumulated since
        if not self._averager.active:
            return
        plan = self._schedule.plan(self._estimator, self)
        carrying_graph = passes.release_graphs(plan, self.get_params())
        passes.average_for_update(plan, carrying_graph, self._averager, self.sync_gradients,
                                  self._estimator.needs_graph)
        self._backward_record.accumulated = False  # what is in .grad now is averaged
        self._averaged_ahead.plan = (plan, carrying_graph)

    @torch.no_grad()
    def _step_from_gradients(self, scaler=None) -> bool:
        """The step from the gradients present: the Hessian estimate (eager, see
        ``estimators``), the update, then the host's bookkeeping. False when the step is
        known on the host to be skipped (on the device path the ops skip it on the device)."""
        amp.refuse_scaler_step(self)
        ahead = self._averaged_ahead.take(self._backward_record.accumulated)
        self._backward_record.accumulated = False  # what is in .grad now is this step's
        if ahead is None:
            plan = self._schedule.plan(self._estimator, self)
            # Not in _update: dynamo cannot read a gradient's autograd graph (a Hessian step's).
            carrying_graph = passes.release_graphs(plan, self.get_params())
        else:
            plan, carrying_graph = ahead
        # One call: after a Hessian step's break dynamo runs this frame eagerly, tracing its calls.
        applied, found_inf = self._update(plan, carrying_graph, scaler, ahead is not None)
        if applied:
            self._finish_iteration(plan.params(), found_inf)
        return applied

    def _update(self, plan: Plan, carrying_graph: List[Tensor], scaler,
                averaged: bool = False) -> Tuple[bool, Optional[Tensor]]:
        """Averaging (unless ``average_gradients()`` did it), unscaling, the finite check,
        the update: (applied, device skip flag)."""
        grads, hessians, unscaled_found_inf = passes.gradients_for_update(
            plan, carrying_graph, self._averager, self.sync_gradients,
            self._estimator.needs_graph, scaler, averaged)
        params = plan.params()
        found_inf = self._checks.found_inf(
            lambda: (self._global_norm(params, grads, False),
                     self._global_norm(list(plan.hessians), hessians, False)),
            unscaled_found_inf, self._home_device, scaler, self)
        if self._path.reads_flags(self._checks.raises(scaler)):
            if found_inf is not None and self._path.read(found_inf):
                self._skip(plan, scaler)
                return False, None
            found_inf = None
            self._path.skips.record(False)
        elif found_inf is not None:
            self._path.skips.record(found_inf)
        written = self._checks.update_flags()
        self._apply_update(self._commit(plan), self._next_hessian_power(), found_inf, written)
        self._checks.after_update(written, self._home_device, self._path,
                                  self._checks.raises(scaler), self._locate_nonfinite)
        return True, found_inf

    def _skip(self, plan: Plan, scaler) -> None:
        """Undo an iteration known on the host to hold inf/NaN: the parameters leave the
        perturbed point, the generator rewinds and no state moves; raise or count it."""
        if plan.rademacher_before is not None:
            self._rademacher.load_state_dict(plan.rademacher_before)
        self._abandon_step()
        self._checks.name_origin(self.param_groups, plan.params(), plan.hessians)
        if self._checks.raises(scaler):
            raise FloatingPointError(self._checks.origin)
        self._path.skips.record(True)
        self._path.skips.tick(self._skip_cause, self._locate_nonfinite)

    def _skip_cause(self, stopping: bool) -> str:  # the device path reads only to stop a run
        return diagnostics.skip_cause(self, self._checks.origin,
                                      read_state=stopping or not self.device_path)

    def _locate_nonfinite(self) -> str:  # reads the state: to report a non-finite update
        return nonfinite_state_message(self.param_groups, self.state)

    def _commit(self, plan: Plan) -> Plan:
        """The plan with each parameter's state (created when missing)."""
        groups = []
        for group, entries in plan.groups:
            fresh: dict = {}
            committed = [Entry(entry.param, self._state_of(entry.param, fresh), entry.hessian_now)
                         for entry in entries]
            self._path.unshare([e.state for e in committed],
                               [self.state[p] for p in group["params"] if p in self.state])
            groups.append((group, committed))
        return plan._replace(groups=groups)

    def _finish_iteration(self, params: List[Tensor], found_inf: Optional[Tensor]) -> None:
        """The host's bookkeeping of an iteration that was applied, or, on the device path,
        attempted: the Hessian schedule's counters and the skip report. While a CUDA graph
        is captured nothing runs, so it is left to each replay (see ``cuda_graphs``)."""
        if capturing():
            self._captured = (params, found_inf)
            return
        for p in params:
            self._schedule.applied(self.state[p])
        self._path.skips.tick(self._skip_cause, self._locate_nonfinite)

    def _apply_update(self, plan: Plan, hessian_power: Optional[float],
                      found_inf: Optional[Tensor], written: UpdateFlags) -> None:
        """The update, given the ops' skip flag (device path) and ``wrote_nonfinite`` flags."""
        raise NotImplementedError

    def _update_buckets(self, plan: Plan, entries: List[Entry], beta2: float, power: float,
                        found_inf: Optional[Tensor], written: UpdateFlags,
                        extra=lambda p: None) -> Iterator[Bucket]:
        return update_buckets(plan, entries, self._path, self._dispatch.ops,
                              self._bias_correction.stored(beta2, power), beta2,
                              self.curvature_floor, found_inf, written, extra)

    def diagnostics(self) -> dict:
        """What to look at when training misbehaves, computed now from the state (no cost
        during ``step()``): skipped steps and, per group, the hyper-parameters, the bias
        corrections and how much of D is zero or below ``eps``, the weights without a
        curvature estimate, and the largest last update relative to its tensor. Every key:
        ``step.diagnostics.report``, docs/troubleshooting.md."""
        return diagnostics.report(self, self._bias_correction.as_used, self._path.reported)

    def _check_closure(self, closure) -> None:
        if closure is not None and self._averaged_ahead.plan is not None:
            raise RuntimeError("step(closure) after average_gradients(): the closure's passes "
                               "would replace the gradients averaged for this step; call "
                               "step() without a closure")
        passes.check_closure(closure, self._backward_record, self.get_params())

    def _closure_pass(self, closure, scaler, create_graph: bool, capture_rng: bool = False):
        return passes.closure_pass(closure, scaler, create_graph, self._estimator.needs_graph,
                                   list(self.get_params()), capture_rng)

    def _gradient_pass(self, closure, scaler, hessian_due: bool):
        """The pass whose gradient the update uses, with what the Hessian estimate needs:
        its graph (double backward) or the probes around it (finite difference)."""
        probing = hessian_due and not self._estimator.needs_graph
        loss, rng = self._closure_pass(closure, scaler, hessian_due and not probing,
                                       capture_rng=probing)
        if probing:
            for _ in self.hessian_probes(rng):
                self._closure_pass(closure, scaler, False)
        return loss
