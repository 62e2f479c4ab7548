"""hessian_estimator="finite_difference" trains where the double backward does (issue 20).

The raw difference of two fp32 gradients rounds curvature below ulp(g) / eps to exactly 0,
and a zero curvature makes SASSHA's step lr * m / eps: the estimate is floored at the
difference's resolution (``finite_difference.floor_at_resolution_``). Here: the floor
itself (values, shards, no host read, every backend), the zeros it removes on the train
suite's quick GPT, and 8 seeds x 30 steps on a fixed batch at the train suite's
hyper-parameters (``bench/studies/fd_stability.py``, whose table docs/estimators.md quotes)
for the quick GPT with hand-written and SDPA attention, a CNN with BatchNorm and a small ViT
(patch embedding + SDPA), SASSHA and M-SASSHA."""
import functools
import pathlib
import sys

import pytest
import torch

from backend_params import backend_device_params
from bench.methods import set_floor
from bench.studies import fd_stability, hvp_accuracy
from gloo_ranks import rank_results
from sassha_fast import MSASSHA, SASSHA
from sassha_fast.hessian.finite_difference import (DEFAULT_EPS, RESOLUTION_FLOOR,
                                                   FiniteDifferenceSettings,
                                                   floor_at_resolution_, unit_roundoff)
from tiny import LOSS, PAPER_SETTINGS, make_model, whole_batch

# guard() is test_no_sync.py's, in tests/step/.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "step"))
from test_no_sync import guard  # noqa: E402

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These models are too small to gain from more threads, and on a shared machine
    extra threads wait on each other (the quality suite measured the same)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SEEDS = range(8)
STEPS = 30
CASES = fd_stability.cases()
FD = "finite_difference"


def test_the_floor_raises_only_what_the_difference_cannot_resolve():
    span = torch.tensor(1e-4)
    g = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0])
    h = torch.tensor([0.0, -1e-9, 3.0, -2.0, 5e-3, 0.0, float("nan")])
    resolution = 2 * 2.0 ** -24 / 1e-4
    floor_at_resolution_([h], [g], span, factor=1.0)
    want = torch.tensor([resolution, -resolution, 3.0, -2.0, 5e-3, 0.0, float("nan")])
    torch.testing.assert_close(h, want, equal_nan=True)
    # The default factor: that many fp32 roundings (a backward pass accumulates them).
    h = torch.zeros(2)
    floor_at_resolution_([h], [torch.ones(2)], span)
    torch.testing.assert_close(h, torch.full((2,), RESOLUTION_FLOOR * resolution))
    # bf16 gradients (fp32 arithmetic, one rounding to bf16): the bf16 rounding.
    assert unit_roundoff(torch.bfloat16) == 2.0 ** -8
    h16 = torch.zeros(2, dtype=torch.bfloat16)
    floor_at_resolution_([h16], [torch.ones(2, dtype=torch.bfloat16)], span)
    torch.testing.assert_close(h16, torch.full((2,), 2 * 2.0 ** -8 / 1e-4,
                                               dtype=torch.bfloat16))


def quick_gpt_problem(seed: int = 0) -> hvp_accuracy.Problem:
    """The train suite's quick GPT (hand-written attention) on the batch of ``seed``."""
    case = CASES["gpt"]
    model = case.build(seed, "manual")
    x, y = case.batch(torch.Generator().manual_seed(seed))
    return hvp_accuracy.Problem("gpt", model, lambda m: case.loss(m(x), y))


def test_the_raw_difference_rounds_small_curvature_to_zero_the_floor_does_not():
    """Issue 20's finding on the quick GPT: the raw difference gives exact zeros (15 at
    seed 0, 13 where the double backward's product is not 0: tokens.weight and MLP
    weights); the floor leaves none, changes nothing it can resolve, and one step's
    update moves to within the double backward's (whose own near-zero entries make its
    largest step the larger one)."""
    problem = quick_gpt_problem()
    weights = {k: v.clone() for k, v in problem.model.state_dict().items()}
    exact = hvp_accuracy.exact_product(problem)
    estimates = {}
    for floor in (False, True):
        problem.model.load_state_dict(weights)
        estimates[floor] = hvp_accuracy.fd_product(problem, FiniteDifferenceSettings(
            "one_sided", DEFAULT_EPS["one_sided"], RESOLUTION_FLOOR if floor else 0.0))
    curved_zeros = {floor: sum(int(((e == 0) & (x != 0)).sum()) for e, x in zip(est, exact))
                    for floor, est in estimates.items()}
    assert curved_zeros[False] >= 5
    assert curved_zeros[True] == 0
    changed = 0
    for raw, floored in zip(estimates[False], estimates[True]):
        moved = raw != floored
        assert (floored.abs()[moved] > raw.abs()[moved]).all()  # up, never down
        changed += int(moved.sum())
    # Only the few entries below the resolution (measured: 0.02% of 1.1M).
    assert changed < 1e-3 * sum(e.numel() for e in exact)
    raw_error, floor_error = (hvp_accuracy.relative_error(estimates[f], exact)
                              for f in (False, True))
    assert floor_error <= raw_error * 1.001
    problem.model.load_state_dict(weights)
    raw_view = hvp_accuracy.preconditioner_view(problem, "one_sided", 0.0)
    problem.model.load_state_dict(weights)
    floor_view = hvp_accuracy.preconditioner_view(problem, "one_sided", RESOLUTION_FLOOR)
    # Measured: 3.0 and 0.73.
    assert raw_view.update_error > 2.0 > 1.0 > floor_view.update_error


@functools.lru_cache(maxsize=None)
def run(model: str, optimizer: str, variant: str, seed: int) -> fd_stability.Run:
    # The double backward runs hand-written attention: SDPA models share its runs.
    if variant == "autograd" and model == "gpt-sdpa":
        model = "gpt"
    return fd_stability.run(CASES[model], optimizer, variant, seed, STEPS)


def _floor_on_shards(_x, _y):
    """Runs on each of two gloo ranks: the floor applied to Shard(0) DTensors."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor
    mesh = init_device_mesh("cpu", (2,))
    h, g = _floor_inputs()
    h_sharded, g_sharded = (distribute_tensor(t, mesh, [Shard(0)]) for t in (h, g))
    floor_at_resolution_([h_sharded], [g_sharded], torch.tensor(1e-4))
    return h_sharded.full_tensor()


def _floor_inputs():
    generator = torch.Generator().manual_seed(3)
    g = torch.randn(8, 5, generator=generator)
    h = torch.randn(8, 5, generator=generator) * 1e-3
    h[::2] = 0.0  # half the rows unresolved on each rank
    return h, g


def test_the_floor_on_dtensor_shards_is_the_floor_of_the_whole():
    h, g = _floor_inputs()
    floor_at_resolution_([h], [g], torch.tensor(1e-4))
    assert (h != 0).all()
    for full in rank_results(_floor_on_shards):
        assert torch.equal(full, h)


@pytest.mark.parametrize("backend,device", backend_device_params(
    ["reference", "foreach", "cpu", "triton"]))
@pytest.mark.parametrize("optimizer", [SASSHA, MSASSHA])
def test_every_backend_folds_the_floored_estimate(optimizer, backend, device):
    """The floor acts before the backend's ops: on each backend one Hessian step of the
    quick GPT leaves no zero in D where the double backward's product has none; the raw
    difference leaves some (the negative control). How closely the backends agree is
    tests/backends/test_backend_agreement.py's subject."""
    problem = quick_gpt_problem()
    exact = hvp_accuracy.exact_product(problem)
    weights = quick_gpt_problem().model.state_dict()
    for floor, zeros_wanted in ((0.0, True), (None, False)):
        problem.model.load_state_dict(weights)
        opt = optimizer(problem.model.parameters(), backend=backend, rho=0.0,
                        hessian_estimator=FD,
                        **{k: v for k, v in PAPER_SETTINGS[optimizer].items() if k != "rho"})
        if floor is not None:
            set_floor(opt, floor)
        opt.step(lambda: problem.loss(problem.model))
        zeros = sum(int(((opt.state[p]["exp_hessian_diag"] == 0) & (x != 0)).sum())
                    for p, x in zip(problem.model.parameters(), exact))
        assert (zeros > 0) == zeros_wanted, (floor, zeros)


@pytest.mark.parametrize("optimizer", [SASSHA, MSASSHA])
def test_the_floor_reads_nothing_on_the_host(optimizer):
    """The device path (capturable) with every tensor-to-host read raising: Hessian steps
    with the floor, and the step without a Hessian estimate."""
    model = make_model()
    x, y = whole_batch()
    opt = optimizer(model.parameters(), lazy_hessian=2, capturable=True, backend="foreach",
                    hessian_estimator=FD, skip_check_interval=1000, **PAPER_SETTINGS[optimizer])
    with guard():
        for _ in range(3):
            opt.step(lambda: LOSS(model(x), y))
    assert all(torch.isfinite(p).all() for p in model.parameters())


# The double backward's own spread: another Rademacher draw
# (bench/studies/fd_stability.py's "autograd-seed1") moves a seed's last loss by up to 32%
# (quick GPT), so a per-seed bound of 15% would judge the draw, not the estimator: 15%
# holds for the mean over the seeds, and each seed must stay within PER_SEED of the double
# backward's (a stalled or diverging run is many times it).
MEAN_BOUND = 0.15
PER_SEED = 2.0  # measured at most 1.69 (vit, M-SASSHA; 1.49 with the authors' draws)
STABILITY = [(model, optimizer) for model in ("gpt", "gpt-sdpa", "cnn", "vit")
             for optimizer in ("sassha", "msassha")]


@pytest.mark.parametrize("model,optimizer", STABILITY)
def test_finite_difference_trains_as_the_double_backward_does(model, optimizer):
    runs = [run(model, optimizer, "fd", seed) for seed in SEEDS]
    reference = [run(model, optimizer, "autograd", seed) for seed in SEEDS]
    summary = fd_stability.summary(runs, reference)
    print(f"{model} {optimizer}: {summary}")
    assert all(r.skipped == 0 for r in runs), summary
    assert all(r.trained for r in runs), summary
    # The double backward diverges on some seeds itself (quick GPT, SASSHA: 1 of 8).
    assert sum(r.trained for r in reference) >= 6, summary
    mean_ratio, worst = fd_stability.compare(runs, reference)
    assert abs(mean_ratio - 1) <= MEAN_BOUND, summary
    assert worst <= PER_SEED, summary


@pytest.mark.parametrize("optimizer,seed", [("sassha", 0), ("msassha", 2)])
def test_the_raw_difference_fails_that_check(optimizer, seed):
    """The negative control: without the floor the quick GPT diverges (SASSHA, seed 0: the
    loss reaches 1e10, then NaN, 24 steps skipped; M-SASSHA, seed 2: NaN, 24 steps skipped;
    with the packed draws the raw difference diverged on 7 and 5 of the 8 seeds)."""
    raw = run("gpt", optimizer, "fd-raw", seed)
    assert not raw.trained
    assert run("gpt", optimizer, "fd", seed).trained


def test_the_quality_suite_runs_the_estimators_rows(tmp_path):
    from bench import quality_suite
    quality_suite.main(["--profile", "smoke", "--methods", "sassha-fd,msassha-fd",
                        "--out", str(tmp_path)])
    text = (tmp_path / "quality.md").read_text()
    assert "| sassha-fd |" in text and "| msassha-fd |" in text
    assert "python -m bench.quality_suite --profile smoke" in text
