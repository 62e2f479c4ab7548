"""Where the finite-difference rows' time goes, on the training suite's SDPA GPT.

    python -m bench.studies.fd_cost [--batches 4,16] [--rounds 6] [--threads N] [--smoke]

The cost model of docs/estimators.md counts forward-backward passes: SASSHA-fd
(2 + 1/k) against SAM-AdamW's 2, M-SASSHA-fd (1 + 1/k) against AdamW's 1 (k: the lazy
Hessian interval). It leaves out what costs per parameter rather than per token, which
weighs most when the batch is small for the model. This study measures both, per batch
size and in one process:

* each method's training iteration (``bench.methods.train_iteration``, the train suite's),
  timed in turns, one lazy-Hessian period per method and round, split into the Hessian
  iteration and the median of the others;
* on the same weights and gradients, timed in turns (``bench.harness.timing``): one
  forward-backward pass, AdamW's fused step, M-SASSHA's step without a Hessian estimate,
  and the parts of a finite-difference Hessian step that are not a pass: its Rademacher
  draw (``PackedSigns``, 64 signs per generator word), the authors' draw beside it
  (``authors_signs``, serial on a CPU, which the double backward keeps) and the difference
  of the gradients with its resolution floor;
* the two steps again from an emptied cache (``cold_steps``), as they run in an iteration.

It prints the measured ratios beside the pass model's, and M-SASSHA-fd's time over AdamW's
split into the extra pass (P / k), the optimizer's step against AdamW's, and the rest of
the Hessian iteration (over k). Timings: run it on a quiet machine (``uptime``)."""
import argparse
import statistics
import time
from typing import Callable, Dict, List, Optional

import torch

from sassha_fast import MSASSHA
from sassha_fast.hessian import finite_difference as fd
from sassha_fast.hessian.hutchinson import RademacherSource

from ..harness import config
from ..harness.meta import collect
from ..harness.timing import Budget, measure_all, timed_iterations
from ..methods import ADAMW, PAPER_SETTINGS, SASSHA_TRAIN, train_iteration
from ..workloads.models import build_model

LAZY_HESSIAN = 10  # the train suite's (bench/harness/config.py)
METHODS = ("adamw", "msassha-fd", "sam-adamw", "sassha-fd")
BASELINE = {"msassha-fd": "adamw", "sassha-fd": "sam-adamw"}
PASS_MODEL = {"adamw": 1.0, "sam-adamw": 2.0, "msassha-fd": 1 + 1 / LAZY_HESSIAN,
              "sassha-fd": 2 + 1 / LAZY_HESSIAN}
DEVICE = torch.device("cpu")
CACHE_BYTES = 64 * 2**20  # above the last-level cache of the CPUs this runs on (32 MiB here)


def gpt_spec(batch: int, smoke: bool) -> dict:
    """The train suite's eager SDPA GPT of its CPU ``--quick`` profile (``--smoke``: of its
    smoke profile), at ``batch``."""
    models = config.profile("smoke" if smoke else "quick", DEVICE, 1.0).train_models
    gpt = next(m for m in models if m.model_kwargs.get("attention") == "sdpa" and not m.compile)
    return dict(model=gpt.model, model_kwargs=gpt.model_kwargs, batch=batch)


def _fresh(spec: dict):
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    return build_model(spec, DEVICE, generator)


def iteration_times(spec: dict, rounds: int, warmup: int) -> Dict[str, Dict[str, float]]:
    """Per method: mean ms per iteration over whole periods, the Hessian iteration's
    median and the median of the others. Hessian steps are the iterations whose count
    (from 0, warm-up included) is a multiple of k."""
    iterations = {}
    for method in METHODS:
        model, x, y, loss_fn = _fresh(spec)
        iterations[method], _ = train_iteration(method, model, x, y, loss_fn, LAZY_HESSIAN)
    for iteration in iterations.values():
        timed_iterations(iteration, DEVICE, warmup)
    times: Dict[str, List[float]] = {m: [] for m in METHODS}
    for _ in range(rounds):
        for method, iteration in iterations.items():
            times[method] += timed_iterations(iteration, DEVICE, LAZY_HESSIAN)
    first_hessian = (-warmup) % LAZY_HESSIAN
    result = {}
    for method, ts in times.items():
        hessian = ts[first_hessian::LAZY_HESSIAN]
        others = [t for i, t in enumerate(ts) if i % LAZY_HESSIAN != first_hessian]
        result[method] = dict(mean=1e3 * statistics.fmean(ts),
                              hessian=1e3 * statistics.median(hessian),
                              others=1e3 * statistics.median(others))
    return result


def part_times(spec: dict, budget: Budget) -> Dict[str, float]:
    """ms per call of the parts, timed in turns on one model's weights and gradients."""
    model, x, y, loss_fn = _fresh(spec)
    params = list(model.parameters())

    def gradient_pass():
        for p in params:
            p.grad = None
        loss_fn(model(x), y).backward()

    gradient_pass()
    grads = [p.grad.clone() for p in params]
    adamw_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    msassha_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    for copies in (adamw_params, msassha_params):
        for p, g in zip(copies, grads):
            p.grad = g.clone()
    adamw = torch.optim.AdamW(adamw_params, fused=True, **ADAMW)
    # k so large that no step after the first (which sets the state up) estimates.
    msassha = MSASSHA(msassha_params, lazy_hessian=10**9, **SASSHA_TRAIN,
                      hessian_estimator="finite_difference", **PAPER_SETTINGS["MSASSHA"])
    for _ in msassha.hessian_probes():
        for p, g in zip(msassha_params, grads):
            p.grad = g.clone()
    msassha.step()
    fd_draws, authors_draws = msassha._estimator.probe_source(0), RademacherSource(0)
    span = torch.tensor(1e-4)
    uppers = [g.clone() for g in grads]

    def difference_and_floor():
        for u, g in zip(uppers, grads):
            u.copy_(g).mul_(1.5)
        estimate = fd._difference(params, uppers, grads, span)
        fd.floor_at_resolution_(estimate, grads, span)

    parts = dict(gradient_pass=gradient_pass, adamw_step=adamw.step, msassha_step=msassha.step,
                 draw=lambda: fd_draws.draw(params),
                 draw_authors=lambda: authors_draws.draw(params),
                 difference_and_floor=difference_and_floor)
    timings = measure_all(list(parts.values()), DEVICE, budget)
    result = {name: 1e3 * t.median_s for name, t in zip(parts, timings)}
    result.update(cold_steps({"adamw_step_cold": adamw.step, "msassha_step_cold": msassha.step},
                             max(budget.min_reps, 5)))
    return result


def cold_steps(steps: Dict[str, Callable[[], object]], rounds: int) -> Dict[str, float]:
    """ms per call of each step with the caches emptied first (untimed), in turns: inside an
    iteration a step starts after the backward pass has evicted its tensors, so its bytes
    come from memory, which a step timed in a loop of its own does not see."""
    evict = torch.ones(2 * CACHE_BYTES // 4)
    times: Dict[str, List[float]] = {name: [] for name in steps}
    for _ in range(rounds + 1):  # the first round warms up
        for name, step in steps.items():
            evict.add_(1.0)
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(ts[1:]) for name, ts in times.items()}


def _markdown(headers: List[str], rows: List[List[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |",
             "| :--- | " + " | ".join("---:" for _ in headers[1:]) + " |"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def report(batch: int, iters: Dict[str, Dict[str, float]], parts: Dict[str, float]) -> str:
    rows = []
    for method in METHODS:
        base = BASELINE.get(method, method)
        ratio = iters[method]["mean"] / iters[base]["mean"]
        model = PASS_MODEL[method] / PASS_MODEL[base]
        rows.append([method, f"{iters[method]['mean']:.1f}", f"{iters[method]['others']:.1f}",
                     f"{iters[method]['hessian']:.1f}", base, f"{ratio:.2f}x", f"{model:.2f}x"])
    table = _markdown(["method", "ms/iter", "others ms", "Hessian iter ms", "against",
                       "measured", "pass model"], rows)
    k = LAZY_HESSIAN
    excess = iters["msassha-fd"]["mean"] - iters["adamw"]["mean"]
    extra_pass = parts["gradient_pass"] / k
    step_gap = parts["msassha_step_cold"] - parts["adamw_step_cold"]
    hessian_rest = (iters["msassha-fd"]["hessian"] - iters["msassha-fd"]["others"]
                    - parts["gradient_pass"]) / k
    parts_line = ", ".join(f"{name} {ms:.2f} ms" for name, ms in parts.items())
    return "\n".join([
        f"### batch {batch}", "", table, "",
        f"parts (timed alone, medians): {parts_line}", "",
        f"msassha-fd over adamw: {excess:+.2f} ms/iter = extra pass P/k {extra_pass:.2f} + step "
        f"against AdamW's (cold cache) {step_gap:+.2f} + the Hessian iteration's rest / k "
        f"{hessian_rest:.2f} (of it: draw {parts['draw'] / k:.2f}, difference and floor "
        f"{parts['difference_and_floor'] / k:.2f}) + unexplained "
        f"{excess - extra_pass - step_gap - hessian_rest:+.2f}; the authors' draw would add "
        f"{(parts['draw_authors'] - parts['draw']) / k:+.2f}", ""])


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="4,16", help="comma-separated batch sizes")
    parser.add_argument("--rounds", type=int, default=6,
                        help="lazy-Hessian periods timed per method (in turns)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--smoke", action="store_true", help="a tiny GPT, one round")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rounds, warmup = (1, 1) if args.smoke else (args.rounds, 3)
    budget = (Budget(warmup=1, min_reps=2, max_reps=2, target_s=0.0, min_rep_s=0.0)
              if args.smoke else
              Budget(warmup=2, min_reps=10, max_reps=60, target_s=1.0, min_rep_s=0.005))
    meta = collect(DEVICE)
    print(f"# Finite-difference cost on the SDPA GPT ({meta['device_name']}, "
          f"{torch.get_num_threads()} torch threads, torch {torch.__version__}, commit "
          f"{meta['commit'][:7]}, k = {LAZY_HESSIAN})\n")
    for batch in (int(b) for b in args.batches.split(",")):
        spec = gpt_spec(batch, args.smoke)
        print(report(batch, iteration_times(spec, rounds, warmup), part_times(spec, budget)),
              flush=True)


if __name__ == "__main__":
    main()
