"""Where a step's Hessian-diagonal estimate comes from (``hessian_estimator=``).

One interface, ``HessianEstimator``, three implementations:

* ``DoubleBackward``: Hutchinson's estimate through the graph of a ``create_graph``
  backward pass (``hutchinson.hutchinson``);
* ``FiniteDifference``: the same estimate from first-order gradients, gathered by
  ``hessian_probes()`` after the pass (``finite_difference.estimate``);
* ``Summed``: the estimates ``set_hessian()`` adds up over micro-batches, each a
  ``DoubleBackward`` one; a step with none takes a fresh ``DoubleBackward`` estimate.

The optimizer holds one, made by ``make``, and asks it for the source of its Rademacher
vectors once (``probe_source``), for the step's ``Plan`` (``plan``), for what
``hessian_probes()``, ``set_hessian()`` and ``zero_hessian()`` do, and whether the
gradient pass must keep its graph (``needs_graph``); it never asks which estimator it holds.
The lazy schedule (which parameters are due) stays the optimizer's.
"""
from typing import List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from ..step.capture import capturing
from ..distributed.dtensor import any_dtensor
from ..step.plan import Entry, Plan
from ..step import errors
from . import finite_difference
from .hutchinson import PackedSigns, RademacherSource, hutchinson

# An estimate for the due parameters, and the Rademacher generator states before its draws
# (None while a CUDA graph is captured); a skipped step rewinds the generator to them.
Estimate = Tuple[List[Tensor], Optional[dict]]


def entries(opt) -> Tuple[list, List[Tensor]]:
    """Per group, the parameters with a gradient (each marked with whether its Hessian is
    due), and the due ones in order."""
    groups, due = [], []
    for group in opt.param_groups:
        group_entries = []
        for p in opt._params_with_grad(group):
            now = opt._hessian_due_for(p)
            if now:
                due.append(p)
            group_entries.append(Entry(p, None, now))
        groups.append((group, group_entries))
    return groups, due


class HessianEstimator:
    """The interface: what the optimizer asks of an estimator."""

    # Whether the gradient pass of a Hessian step must keep its graph (backward with
    # create_graph=True). Such gradients are not reduced by DDP (it fails on them), so the
    # step averages their estimate itself; a closure that calls backward() cannot keep it.
    needs_graph = True

    def probe_source(self, seed: int) -> RademacherSource:
        """Where the optimizer's Rademacher vectors come from: the authors' draws, so that
        a seeded double-backward run reproduces theirs."""
        return RademacherSource(seed)

    def plan(self, opt) -> Plan:
        """The plan of the step now being taken, with an estimate for the due parameters.
        Leaves the perturbed point first (``opt._before_hessian()``) when one is needed."""
        groups, due = entries(opt)
        hessians, before = {}, None
        if due:
            estimate, before = self._estimate_eagerly(opt, due)
            hessians = dict(zip(due, estimate))
        return Plan(groups, hessians, before)

    @torch.compiler.disable
    def _estimate_eagerly(self, opt, due: List[Tensor]) -> Estimate:
        """``opt._before_hessian()``, then ``estimate``; never traced by torch.compile: dynamo
        cannot trace the Hessian-vector product (autograd through the gradients' graph) nor
        the Rademacher generators, and breaking wherever it fails would split the step at
        places that differ from estimator to estimator. So a Hessian step breaks the graph
        here only, and the update after it is traced (``HessianOptimizer._update``)."""
        opt._before_hessian()
        return self.estimate(opt, due)

    def estimate(self, opt, params: List[Tensor]) -> Estimate:
        """The estimate for ``params``, all due, at the point where their gradients are."""
        raise NotImplementedError

    def probes(self, opt, rng_state: Optional[finite_difference.RNGState]):
        """The gradient evaluations of ``opt.hessian_probes()`` (a generator)."""
        raise RuntimeError("hessian_probes() belongs to "
                           "hessian_estimator='finite_difference'; this optimizer uses "
                           "the double backward (backward(create_graph=True))")

    def add(self, opt) -> None:
        """``opt.set_hessian()``."""
        raise NotImplementedError

    def zero(self) -> None:
        """``opt.zero_hessian()``: drop the estimates gathered for the next step."""

    def reset(self) -> None:
        """Forget everything gathered for the next step (a checkpoint was loaded)."""
        self.zero()


class DoubleBackward(HessianEstimator):
    """Hutchinson's estimate, z * (H z) with H z from the gradients' graph."""

    def estimate(self, opt, params: List[Tensor], signed: bool = False) -> Estimate:
        """``signed``: return z * Hz, as a sum of estimates needs (a lone one may keep Hz:
        the same |h|)."""
        # Not while a CUDA graph is captured (replays advance the generator themselves).
        before = None if capturing() else opt._rademacher.state_dict()
        if any_dtensor(params) and not any(p.grad.requires_grad for p in params):
            raise errors.dtensor_double_backward_error()
        try:
            if opt._backward_record.create_graph and \
                    not any(p.grad.requires_grad for p in params):
                # A create_graph pass whose gradients do not depend on the parameters.
                return [torch.zeros_like(p) for p in params], before
            with torch.enable_grad():
                estimate = hutchinson([p.grad for p in params], params, opt._rademacher,
                                      opt.n_samples, signed=signed)
        except RuntimeError as exc:
            if before is not None:
                opt._rademacher.load_state_dict(before)
            clearer = errors.double_backward_error(exc)
            if clearer is None:
                raise
            raise clearer from exc
        return estimate, before


class Probed(NamedTuple):
    """What ``hessian_probes()`` left for the step."""
    params: List[Tensor]
    estimate: List[Tensor]
    rademacher_before: dict


class FiniteDifference(HessianEstimator):
    """The estimate from gradients at moved weights (``sassha_fast.finite_difference``),
    taken by ``hessian_probes()`` once the gradient pass is done and used by the next step."""

    needs_graph = False

    def __init__(self, settings: finite_difference.FiniteDifferenceSettings):
        self.settings = settings
        self.probed: Optional[Probed] = None

    def probe_source(self, seed: int) -> RademacherSource:
        """Packed draws: no authors' run to match, and on a CPU the authors' serial draw
        cost more than the difference itself (docs/estimators.md)."""
        return RademacherSource(seed, PackedSigns())

    def probes(self, opt, rng_state: Optional[finite_difference.RNGState]):
        self.probed = None
        _, params = entries(opt)  # in the order the step's plan will ask for them
        if not params:
            return
        before = opt._rademacher.state_dict()
        try:
            estimate = yield from finite_difference.estimate(
                self.settings, params, opt._rademacher, opt.n_samples,
                lambda ps: opt._global_norm(ps, ps, False), rng_state)
        except BaseException:
            opt._rademacher.load_state_dict(before)
            raise
        self.probed = Probed(params, estimate, before)

    def plan(self, opt) -> Plan:
        try:
            return super().plan(opt)
        finally:
            self.probed = None  # probes serve the step that follows them only

    def estimate(self, opt, params: List[Tensor]) -> Estimate:
        probed = self.probed
        if probed is None or [id(p) for p in probed.params] != [id(p) for p in params]:
            if probed is not None:
                opt._rademacher.load_state_dict(probed.rademacher_before)
            raise RuntimeError(
                "the Hessian is due at this step, but hessian_probes() did not run for the "
                "parameters that have gradients now:" + (errors.framework_advice() or
                " after the backward pass of the point to estimate at, run `for _ in "
                "optimizer.hessian_probes(rng_state): loss_fn(model(x), y).backward()`, or "
                "let the optimizer run the iteration with optimizer.step(closure)"))
        return probed.estimate, probed.rademacher_before

    def add(self, opt) -> None:
        raise RuntimeError("set_hessian() sums double-backward estimates; with "
                           "hessian_estimator='finite_difference' the estimate comes from "
                           "hessian_probes() (or step(closure)) and step() folds it in")

    def reset(self) -> None:
        self.probed = None


class Summed(HessianEstimator):
    """The estimates ``set_hessian()`` adds up until the next step (each with fresh
    Rademacher vectors, signed so that they sum); a step without any estimates afresh."""

    def __init__(self, single: DoubleBackward):
        self.single = single
        self.sum: Optional[Plan] = None

    def plan(self, opt) -> Plan:
        if self.sum is None:
            return self.single.plan(opt)
        plan, self.sum = self.sum, None
        return plan

    def add(self, opt) -> None:
        groups, due = entries(opt)
        previous = self.sum
        hessians = dict(previous.hessians) if previous else {}
        rademacher_before = previous.rademacher_before if previous else None
        graph_params = set(previous.graph_params) if previous else set()
        if due:
            estimate, before_this = self.single.estimate(opt, due, signed=True)
            if rademacher_before is None:
                rademacher_before = before_this
            for p, h in zip(due, estimate):
                hessians[p] = hessians[p].add_(h) if p in hessians else h
        # The next micro-batch's graph must be the only one its estimate goes through.
        for _, group_entries in groups:
            for entry in group_entries:
                if entry.param.grad.grad_fn is not None:
                    graph_params.add(entry.param)
                    entry.param.grad = entry.param.grad.detach()
        self.sum = Plan(groups, hessians, rademacher_before, frozenset(graph_params))

    def zero(self) -> None:
        if self.sum is not None:
            self.sum = self.sum._replace(hessians={})

    def reset(self) -> None:
        self.sum = None


def make(name: str, scheme: str, eps: Optional[float]) -> HessianEstimator:
    """The estimator of ``hessian_estimator=name`` (``fd_scheme``, ``fd_eps``: see
    ``finite_difference.make_settings``, which checks all three)."""
    settings = finite_difference.make_settings(name, scheme, eps)
    if settings is None:
        return Summed(DoubleBackward())
    return FiniteDifference(settings)
