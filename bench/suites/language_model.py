"""Language-model suite: the paper's GPT1-mini experiment (Table 3: a 4-layer GPT on
Wikitext-2) in small and on a corpus every machine has, the interpreter's standard library
read as bytes (bench/workloads/corpus.py). A byte-level 4-layer GPT
(bench/workloads/models.py) trains with each method for the same number of tokens; each
method's learning rate (and knob: rho, Sophia-H's gamma) is chosen from a grid by the
validation loss (seed 0), then trained with further seeds (initialisation and batch order)
and scored by its test loss in bits per byte. The protocol is the quality suite's
(bench/harness/protocol.py), with one budget rule: a profile with ``tune_on`` (the full
one) takes each method's point from that profile's grid, run first (seed 0 only), and
trains only the chosen points at its own size, every seed at that point.

SASSHA and M-SASSHA run twice: with the double backward, on the GPT with attention written
out by hand, and with ``hessian_estimator="finite_difference"`` on the GPT with
``F.scaled_dot_product_attention`` (which has no double backward). AdamW and SAM run on the
SDPA GPT too: the same function with the same initial weights, the fastest attention
available to a first-order method (bench/methods.py).

The equal-time view gives every method the training time SASSHA (double backward) used:
one more run per method (seed 0, its chosen learning rate) with the iterations that its
own measured time per iteration allows in SASSHA's time, the schedule stretched to them."""
import math
import pathlib
import statistics
import time
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.nn import functional as F

from ..harness import protocol
from ..harness.config import EQUAL_TIME_REFERENCE, LMProfile, lm_profile
from ..methods import LM_METHODS, Method, clean_point, make_iteration
from ..workloads.corpus import Corpus, evaluation_windows, load, random_batch
from ..workloads.models import GPT


class LMData(NamedTuple):
    train: Tensor                      # uint8 bytes (CPU); batches are drawn from it
    validation: Tuple[Tensor, Tensor]  # evaluation windows (inputs, targets) on the device
    test: Tuple[Tensor, Tensor]
    curve: Tuple[Tensor, Tensor]       # a subset of the validation windows, for the curves


def prepare(corpus: Corpus, profile: LMProfile, device: torch.device) -> LMData:
    def windows(split: str, count: int) -> Tuple[Tensor, Tensor]:
        x, y = evaluation_windows(corpus.streams[split], count, profile.context)
        return x.to(device), y.to(device)
    return LMData(corpus.streams["train"], windows("validation", profile.eval_windows),
                  windows("test", profile.eval_windows),
                  windows("validation", profile.curve_windows))


class LMRun(NamedTuple):
    val_loss: float              # nats per byte on the validation windows, after training
    test_loss: float             # the same on the test windows (nan when not finite)
    curve_iterations: List[int]  # where the curve's validation loss was measured
    curve_val_loss: List[float]  # nats per byte on the curve windows
    curve_elapsed_s: List[float]  # training time up to each point (evaluations excluded)
    train_s: float               # training time of the iterations done
    iterations: int              # done (fewer than planned when the run stopped early)
    tokens: int                  # planned iterations x batch x context
    finite: bool                 # False: it diverged (non-finite loss or weights) or stopped
    skipped_steps: int           # steps the optimizer skipped on inf/NaN (SASSHA's guard)
    stopped: str                 # why the run ended early, "" when it ran to the end


def schedule(iterations: int, warmup: float) -> Callable[[int], float]:
    """Linear warm-up, then a cosine to 0 at the last iteration."""
    warm = max(1, round(warmup * iterations))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, iterations - warm)))
    return factor


@torch.no_grad()
def mean_loss(model: GPT, opt, windows: Tuple[Tensor, Tensor], batch: int) -> float:
    """Cross-entropy in nats per predicted byte, at the clean point."""
    inputs, targets = windows
    total = 0.0
    model.eval()
    with clean_point(opt):
        for i in range(0, len(inputs), batch):
            logits = model(inputs[i:i + batch])
            total += F.cross_entropy(logits.flatten(0, 1), targets[i:i + batch].flatten(),
                                     reduction="sum").item()
    model.train()
    return total / targets.numel()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train(method: Method, point: protocol.Point, data: LMData, profile: LMProfile, seed: int,
          device: torch.device, iterations: Optional[int] = None) -> LMRun:
    iterations = iterations or profile.iterations
    torch.manual_seed(seed)
    model = GPT(profile.gpt(method.attention)).to(device).train()
    opt = method.build(list(model.parameters()), point.lr, **point.settings())
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, schedule(iterations, profile.warmup))
    iteration = make_iteration(
        method.kind, opt,
        lambda x, y: F.cross_entropy(model(x).flatten(0, 1), y.flatten()))
    batches = torch.Generator().manual_seed(seed)
    points = {round(iterations * (k + 1) / profile.curve_points)
              for k in range(profile.curve_points)}
    curve_at, curve_loss, curve_s = [], [], []
    train_s, done, stopped = 0.0, 0, ""
    for step in range(iterations):
        x, y = (t.to(device) for t in random_batch(data.train, profile.batch, profile.context,
                                                   batches))
        _sync(device)
        start = time.perf_counter()
        try:
            iteration(x, y)
        except FloatingPointError as exc:  # too many skipped steps in a row
            stopped = f"iteration {step + 1}: {exc}"
            break
        scheduler.step()
        _sync(device)
        train_s += time.perf_counter() - start
        done = step + 1
        if done in points:
            curve_at.append(done)
            curve_loss.append(mean_loss(model, opt, data.curve, profile.batch))
            curve_s.append(train_s)
            if not math.isfinite(curve_loss[-1]):
                stopped = f"iteration {done}: non-finite validation loss"
                break
    finite = not stopped and all(bool(torch.isfinite(p).all()) for p in model.parameters())
    val = mean_loss(model, opt, data.validation, profile.batch) if finite else math.nan
    test = mean_loss(model, opt, data.test, profile.batch) if finite else math.nan
    finite = finite and math.isfinite(val) and math.isfinite(test)
    return LMRun(val, test, curve_at, curve_loss, curve_s, train_s, done,
                 profile.tokens(iterations), finite, int(getattr(opt, "skipped_steps", 0)),
                 stopped)


def bits(nats: float) -> float:
    return nats / math.log(2)


def _grid(method: Method, profile: LMProfile) -> Sequence[protocol.Point]:
    return protocol.points(method, profile.grid)


def plan_size(profile: LMProfile, methods: Sequence[Method] = LM_METHODS,
              device: torch.device = torch.device("cpu")) -> int:
    """Training runs the profile makes: the grids and seeds (the tuning profile's grid and
    then every seed at the chosen points, with ``tune_on``), then the equal-time runs."""
    has_reference = any(m.name == EQUAL_TIME_REFERENCE for m in methods)
    equal_time = len(methods) - 1 if has_reference else 0
    if profile.tune_on:
        tuning = lm_profile(profile.tune_on, device)
        return (protocol.plan_size(methods, lambda m: _grid(m, tuning), 1)
                + len(methods) * profile.seeds + equal_time)
    return protocol.plan_size(methods, lambda m: _grid(m, profile), profile.seeds) + equal_time


def run(profile: LMProfile, device: torch.device, methods: Sequence[Method] = LM_METHODS,
        progress: Callable[[str], None] = lambda label: None,
        corpus: Optional[Corpus] = None) -> Tuple[List[dict], List[dict], dict]:
    """(one row per method, one validation curve per method, the corpus's description),
    on ``profile.threads`` torch threads on a CPU."""
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(profile.threads)
    try:
        corpus = corpus or load(train_bytes=profile.train_bytes)
        return _run(profile, device, methods, progress, corpus) + (corpus.info(),)
    finally:
        torch.set_num_threads(threads)


def _run(profile: LMProfile, device: torch.device, methods: Sequence[Method],
         progress: Callable[[str], None], corpus: Corpus) -> Tuple[List[dict], List[dict]]:
    def score(r: LMRun) -> float:
        return -r.val_loss

    def trainer(data: LMData, size: LMProfile):
        # ``train`` looked up at call time: the tests replace it
        return lambda m, point, seed: train(m, point, data, size, seed, device)

    data = prepare(corpus, profile, device)
    if profile.tune_on:
        tuning = lm_profile(profile.tune_on, device)
        # The same corpus under the tuning profile's cap on the training split.
        tuning_data = prepare(load(pathlib.Path(corpus.root), tuning.train_bytes), tuning,
                              device)
        grids = protocol.tune_then_repeat(methods, lambda m: _grid(m, tuning),
                                          trainer(tuning_data, tuning), score, seeds=1,
                                          progress=progress, prefix=f"{tuning.name} grid: ")
        tuned = protocol.tune_then_repeat(methods, lambda m: [grids[m.name].point],
                                          trainer(data, profile), score, profile.seeds,
                                          progress)
    else:
        tuning = profile
        tuned = grids = protocol.tune_then_repeat(methods, lambda m: _grid(m, profile),
                                                  trainer(data, profile), score,
                                                  profile.seeds, progress)
    equal = _equal_time(methods, tuned, data, profile, device, progress)
    rows = [_row(m, grids[m.name], tuning.name, tuned[m.name], equal.get(m.name), profile,
                 corpus) for m in methods]
    curves = [c for c in (_curve(m.name, tuned[m.name].runs) for m in methods) if c]
    return rows, curves


def seconds_per_iteration(runs: Sequence[LMRun]) -> float:
    """Median over runs of training time / iterations done (Hessian iterations included)."""
    per_run = [r.train_s / r.iterations for r in runs if r.iterations]
    return statistics.median(per_run) if per_run else math.nan


def _equal_time(methods: Sequence[Method], tuned: Dict[str, protocol.Tuned], data: LMData,
                profile: LMProfile, device: torch.device, progress: Callable[[str], None]
                ) -> Dict[str, LMRun]:
    """Per method, a seed-0 run at its chosen learning rate given the training time that
    the reference method's runs took (EQUAL_TIME_REFERENCE): iterations = planned x (the
    reference's s/iter / its own s/iter)."""
    name = EQUAL_TIME_REFERENCE
    if name not in tuned:
        return {}
    reference = seconds_per_iteration(tuned[name].runs)
    out = {name: tuned[name].runs[0]}
    for method in methods:
        if method.name == name:
            continue
        own = seconds_per_iteration(tuned[method.name].runs)
        if not (math.isfinite(own) and math.isfinite(reference)):
            continue
        iterations = max(1, round(profile.iterations * reference / own))
        point = tuned[method.name].point
        progress(f"{method.name} lr {point.label()} equal time: {iterations} iterations")
        out[method.name] = train(method, point, data, profile, 0, device, iterations)
    return out


def _finite(runs: Sequence[LMRun]) -> List[LMRun]:
    return [r for r in runs if r.finite]


def _row(method: Method, grid: protocol.Tuned, tuned_on: str, tuned: protocol.Tuned,
         equal: Optional[LMRun], profile: LMProfile, corpus: Corpus) -> dict:
    """``grid``: the tuning grid (on the profile ``tuned_on``) that chose the point;
    ``tuned``: the runs at that point with every seed, at this profile's size."""
    runs = tuned.runs
    good = _finite(runs)
    # A diverged seed has no score (None); the means are over the seeds that stayed finite.
    test_bpb = [bits(r.test_loss) if r.finite else None for r in runs]
    bpb_mean, bpb_std = protocol.mean_std([bits(r.test_loss) for r in good]) if good else (
        None, None)
    ppl_mean, ppl_std = protocol.mean_std([math.exp(r.test_loss) for r in good]) if good else (
        None, None)
    return dict(method=method.name, attention=method.attention,
                estimator=method.estimator or "-", lr=tuned.lr, knobs=tuned.point.settings(),
                chosen=tuned.point.label(), tuned_on=tuned_on, profile=profile.name,
                grid_val_bpb={k.label(): bits(v.val_loss) if v.finite else None
                              for k, v in grid.grid.items()},
                grid_skipped_steps={k.label(): v.skipped_steps for k, v in grid.grid.items()},
                grid_stopped={k.label(): v.stopped for k, v in grid.grid.items() if v.stopped},
                test_bpb_mean=bpb_mean, test_bpb_std=bpb_std, test_bpbs=test_bpb,
                test_ppl_mean=ppl_mean, test_ppl_std=ppl_std,
                val_bpb_mean=statistics.fmean(bits(r.val_loss) for r in good) if good else None,
                seeds=len(runs), diverged=len(runs) - len(good),
                skipped_steps=[r.skipped_steps for r in runs],
                stopped=[r.stopped for r in runs if r.stopped],
                s_per_iter=seconds_per_iteration(runs),
                train_s_mean=statistics.fmean(r.train_s for r in runs),
                iterations=profile.iterations, tokens=runs[0].tokens,
                equal_time_iterations=equal.iterations if equal else None,
                equal_time_train_s=equal.train_s if equal else None,
                equal_time_test_bpb=bits(equal.test_loss) if equal and equal.finite else None,
                equal_time_finite=equal.finite if equal else None,
                equal_time_skipped_steps=equal.skipped_steps if equal else None,
                corpus_sha256=corpus.sha256)


def _curve(name: str, runs: Sequence[LMRun]) -> Optional[dict]:
    """Mean over the seeds that stayed finite of the validation loss (bits per byte) and of
    the training time at each point; None when every seed diverged."""
    good = _finite(runs)
    if not good:
        return None
    return dict(method=name, iterations=good[0].curve_iterations,
                elapsed_s=protocol.pointwise_mean([r.curve_elapsed_s for r in good]),
                val_bpb=protocol.pointwise_mean([[bits(v) for v in r.curve_val_loss]
                                                 for r in good]),
                seeds=len(good))
