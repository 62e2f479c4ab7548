"""Optimizer-step suite: the optimizer's own work per iteration, no model.

Every method runs on the same parameter set with gradients already present, all methods of
a set timed in turns (bench/harness/timing.py):
  AdamW (for-loop, foreach, fused): ``step()``;
  SAM with AdamW / SGD as base (bench/baselines/sam.py): perturb with g1, then leave x + e and take
  the base step with g2;
  SASSHA per sassha_fast backend: ``perturb_weights()`` with g1, then ``step()`` with g2 (the
  update also leaves x + e) on a non-Hessian step, through the package's frontend, with
  ``nonfinite="ignore"`` (as AdamW, no inf/NaN check);
  plus, per backend, the extra work of a Hessian step (the ``hessian_ema`` op alone);
  SASSHA compiled, per backend (``capturable=True``, ``torch.compile`` of
  ``perturb_weights()`` and of ``step()``; compiled before the timing), beside the eager row;
  given the authors' code (bench/baselines/authors.py): their SASSHA in their loop
  (``perturb_weights()`` with g1, ``unperturb()`` and ``step()`` with g2), their M-SASSHA's
  ``step()``, and M-SASSHA per backend beside it, all on a non-Hessian step.
"""
from typing import Callable, List, NamedTuple, Optional

import torch
from torch import Tensor

from sassha_fast import MSASSHA, SASSHA
from sassha_fast import functional

from ..baselines.authors import AuthorsCode
from ..baselines.sam import SAM
from ..harness import traffic
from ..harness.results import AUTHORS
from ..harness.timing import Budget, measure_all
from ..methods import ADAMW, BETAS, HESSIAN_POWER, PAPER_SETTINGS, SAM_RHO, SASSHA_STEP, SGD
from ..workloads.shapes import ParamSet, random_tensors

Iteration = Callable[[], object]


class Tensors(NamedTuple):
    params: List[Tensor]
    g1: List[Tensor]  # gradient of the first pass
    g2: List[Tensor]  # gradient at the perturbed point


class Case(NamedTuple):
    method: str
    backend: str
    traffic: str
    build: Callable[[Tensors, torch.device], Iteration]


def materialize(param_set: ParamSet, device: torch.device, dtype: torch.dtype,
                seed: int = 0) -> Tensors:
    generator = torch.Generator().manual_seed(seed)
    params = random_tensors(param_set.shapes, device, dtype, 0.02, generator, requires_grad=True)
    g1 = random_tensors(param_set.shapes, device, dtype, 1e-3, generator)
    g2 = random_tensors(param_set.shapes, device, dtype, 1e-3, generator)
    return Tensors(params, g1, g2)


def set_grads(params: List[Tensor], grads: List[Tensor]) -> None:
    for p, g in zip(params, grads):
        p.grad = g


def _adamw(impl: dict) -> Callable[[Tensors, torch.device], Iteration]:
    def build(t: Tensors, device: torch.device) -> Iteration:
        opt = torch.optim.AdamW(t.params, **ADAMW, **impl)

        def iteration():
            # The other methods, timed in turns with this one, leave other gradients.
            set_grads(t.params, t.g2)
            opt.step()
        return iteration
    return build


def _two_pass(step: Callable[[], object], perturb: Callable[[], None], t: Tensors) -> Iteration:
    """g1 present -> perturb -> g2 present -> step (what SAM and SASSHA share)."""
    def iteration():
        set_grads(t.params, t.g1)
        perturb()
        set_grads(t.params, t.g2)
        step()
    return iteration


def _sam(base: type, base_kwargs: dict) -> Callable[[Tensors, torch.device], Iteration]:
    def build(t: Tensors, device: torch.device) -> Iteration:
        sam = SAM(t.params, base, rho=SAM_RHO, **base_kwargs)
        return _two_pass(sam.step, sam.perturb, t)
    return build


def seed_sassha_state(opt: SASSHA, beta2: float = BETAS[1]) -> None:
    """State as after a first Hessian step (D > 0), with the next Hessian never due. On the
    device path the counters are two float64 tensors that every parameter shares, as after
    a step that created them all (one op call per bucket, not per parameter)."""
    step, correction = 1, (1 - beta2) ** 0.5
    if opt.device_path:
        device = next(iter(opt.get_params())).device
        step, correction = (torch.tensor(float(v), dtype=torch.float64, device=device)
                            for v in (step, correction))
    for p in opt.get_params():
        opt.state[p].update(
            step=step, hessian_step=1, exp_avg=torch.zeros_like(p, dtype=torch.float32),
            exp_hessian_diag=torch.rand_like(p, dtype=torch.float32).add_(0.1),
            bias_correction2=correction)


def _sassha(backend: str) -> Callable[[Tensors, torch.device], Iteration]:
    def build(t: Tensors, device: torch.device) -> Iteration:
        # nonfinite="ignore": like AdamW without a GradScaler, no inf/NaN check (the default
        # "skip" adds one read of g2 and a host synchronisation per step).
        opt = SASSHA(t.params, **SASSHA_STEP,
                     **PAPER_SETTINGS["SASSHA"], backend=backend, nonfinite="ignore")
        seed_sassha_state(opt)
        return _two_pass(opt.step, opt.perturb_weights, t)
    return build


def _compiled_sassha(backend: str, compiler: str) -> Callable[[Tensors, torch.device], Iteration]:
    def build(t: Tensors, device: torch.device) -> Iteration:
        opt = SASSHA(t.params, **SASSHA_STEP, **PAPER_SETTINGS["SASSHA"], backend=backend,
                     nonfinite="ignore", capturable=True)
        seed_sassha_state(opt)
        iteration = _two_pass(torch.compile(opt.step, backend=compiler),
                              torch.compile(opt.perturb_weights, backend=compiler), t)
        for _ in range(2):  # compiles, then checks that nothing compiles again
            iteration()
        return iteration
    return build


def _msassha(backend: str) -> Callable[[Tensors, torch.device], Iteration]:
    def build(t: Tensors, device: torch.device) -> Iteration:
        opt = MSASSHA(t.params, **SASSHA_STEP,
                      **PAPER_SETTINGS["MSASSHA"], backend=backend, nonfinite="ignore")
        seed_sassha_state(opt)
        return _one_pass(opt, t)
    return build


def _one_pass(optimizer, t: Tensors) -> Iteration:
    def iteration():
        set_grads(t.params, t.g2)
        optimizer.step()
    return iteration


def _authors_sassha(authors: AuthorsCode) -> Callable[[Tensors, torch.device], Iteration]:
    def build(t: Tensors, device: torch.device) -> Iteration:
        opt = authors.sassha(t.params, HESSIAN_POWER, **SASSHA_STEP, **PAPER_SETTINGS["SASSHA"])
        authors.seed_sassha_state(opt, HESSIAN_POWER, BETAS[1])

        def iteration():  # their training loop, without the model
            set_grads(t.params, t.g1)
            opt.perturb_weights(zero_grad=True)
            set_grads(t.params, t.g2)
            opt.unperturb()
            opt.step()
        return iteration
    return build


def _authors_msassha(authors: AuthorsCode) -> Callable[[Tensors, torch.device], Iteration]:
    def build(t: Tensors, device: torch.device) -> Iteration:
        # Their constructor sets p.hess = 0.0 on every parameter; the authors' SASSHA, timed
        # on the same tensors, needs the estimate its seeded state holds there.
        estimates = {p: p.hess for p in t.params if isinstance(getattr(p, "hess", None), Tensor)}
        opt = authors.msassha(t.params, HESSIAN_POWER, **SASSHA_STEP)
        for p, estimate in estimates.items():
            p.hess = estimate
        authors.seed_msassha_state(opt, BETAS[1])
        return _one_pass(opt, t)
    return build


def _hessian_ema(backend: str) -> Callable[[Tensors, torch.device], Iteration]:
    def build(t: Tensors, device: torch.device) -> Iteration:
        ops = functional.resolve(backend, device)
        exp_hessians = [torch.rand_like(p, dtype=torch.float32) for p in t.params]
        return lambda: ops.hessian_ema(exp_hessians, t.g2, BETAS[1])
    return build


def cases(backends: List[str], authors: Optional[AuthorsCode] = None,
          compiler: Optional[str] = None) -> List[Case]:
    """The methods of one set; with ``compiler``, SASSHA's compiled rows too."""
    out = [Case("adamw-forloop", "torch", "adamw", _adamw(dict(foreach=False))),
           Case("adamw-foreach", "torch", "adamw", _adamw(dict(foreach=True))),
           Case("adamw-fused", "torch", "adamw", _adamw(dict(fused=True))),
           Case("sam-adamw", "per-tensor SAM", "sam_adamw", _sam(torch.optim.AdamW, ADAMW)),
           Case("sam-sgd", "per-tensor SAM", "sam_sgd", _sam(torch.optim.SGD, SGD))]
    out += [Case("sassha", name, "sassha", _sassha(name)) for name in backends]
    out += [Case("sassha-hessian-ema", name, "hessian_ema", _hessian_ema(name))
            for name in backends]
    if compiler is not None:
        out += [Case("sassha-compiled", name, "sassha", _compiled_sassha(name, compiler))
                for name in backends]
    if authors is not None:
        out.append(Case("sassha", AUTHORS, "sassha", _authors_sassha(authors)))
        out += [Case("msassha", name, "msassha", _msassha(name)) for name in backends]
        out.append(Case("msassha", AUTHORS, "msassha", _authors_msassha(authors)))
    return out


def run_set(param_set: ParamSet, tensors: Tensors, cases_: List[Case], device: torch.device,
            budget: Budget) -> List[dict]:
    """Every case on one set, timed in turns (all their optimizer states live at once)."""
    iterations = [case.build(tensors, device) for case in cases_]
    timings = measure_all(iterations, device, budget)
    dtype = tensors.params[0].dtype
    rows = []
    for case, timing in zip(cases_, timings):
        moved = traffic.traffic_bytes(case.traffic, param_set.numel, dtype)
        rows.append(dict(suite="step", workload=param_set.name, params=param_set.numel,
                         tensors=param_set.tensors, dtype=str(dtype).replace("torch.", ""),
                         method=case.method, backend=case.backend,
                         median_ms=timing.median_s * 1e3, min_ms=timing.min_s * 1e3,
                         max_ms=timing.max_s * 1e3, reps=timing.reps, bytes=moved,
                         gbps=moved / timing.median_s / 1e9))
    return rows
