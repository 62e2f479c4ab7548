"""hessian_estimator="finite_difference": the estimate against the exact Hessian-vector
product, trajectories against the double backward's, the APIs (one call, method-level
probes, torch-style closures) and what it makes trainable (SDPA, activation checkpointing,
a fully compiled model). DDP: tests/distributed/test_distributed.py."""
import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

import sassha_fast
from bench.studies import hvp_accuracy
from bench.workloads.models import GPT, GPTConfig
from sassha_fast import MSASSHA, SASSHA
from sassha_fast.hessian import finite_difference
from sassha_fast.hessian.finite_difference import DEFAULT_EPS, FiniteDifferenceSettings
from tiny import (LOSS, PAPER_SETTINGS, assert_identical, make_model, snapshot, whole_batch,
                  with_finite_difference_draws)

FD = "finite_difference"
OPTIMIZERS = [SASSHA, MSASSHA]
# Measured 3.1% and 0.53% with the resolution floor and the finite difference's packed
# draws (with the authors' draws: 2.2% and 1.2%; M-SASSHA before the floor: 0.063%, issue
# 23; this tiny model's least-curved entries sit below the floor); an estimate 2x too large:
# 23% and 20% (test_a_wrong_estimate_leaves_that_trajectory). Seeded: the same each run.
TRAJECTORY_GAP = {SASSHA: 0.035, MSASSHA: 0.02}


def problem(name):
    """One of bench/studies/hvp_accuracy.py's problems (a 2-layer GPT)."""
    return next(p for p in hvp_accuracy.problems(torch.device("cpu"), quick=True)
                if p.name.startswith(name))


# Bounds on ||Hz_fd - Hz|| / ||Hz|| at the default steps, about 4x what
# `python -m bench.studies.hvp_accuracy` prints (docs/estimators.md).
BOUNDS = {("mlp", "one_sided"): 4e-3, ("mlp", "central"): 1e-3,
          ("cnn_batchnorm_gelu", "one_sided"): 1e-2, ("cnn_batchnorm_gelu", "central"): 2e-3,
          ("gpt", "one_sided"): 1e-2, ("gpt", "central"): 1e-3}


@pytest.mark.parametrize("name,scheme", list(BOUNDS))
def test_the_estimate_is_close_to_the_exact_product(name, scheme):
    case = problem(name)
    exact = hvp_accuracy.exact_product(case)
    estimate = hvp_accuracy.fd_product(case, FiniteDifferenceSettings(scheme, DEFAULT_EPS[scheme]))
    error = hvp_accuracy.relative_error(estimate, exact)
    assert error < BOUNDS[(name, scheme)]
    # Not the exact product by accident: a wrong step is visibly worse.
    wrong = hvp_accuracy.fd_product(case, FiniteDifferenceSettings(scheme, 1e-7))
    assert hvp_accuracy.relative_error(wrong, exact) > error


@pytest.mark.parametrize("scheme,n_samples", [("one_sided", 1), ("central", 1),
                                               ("one_sided", 3)])
def test_the_optimizer_folds_the_same_estimate_as_the_double_backward(scheme, n_samples):
    """One Hessian step at rho = 0 (both estimators at the same point, the same draws):
    the EMA of |h|."""
    x, y = whole_batch()
    states = []
    for options in ({}, {"hessian_estimator": FD, "fd_scheme": scheme}):
        model = make_model()
        opt = SASSHA(model.parameters(), rho=0.0, n_samples=n_samples, **options)
        if not options:
            with_finite_difference_draws(opt)
        opt.step(lambda: LOSS(model(x), y))
        states.append([opt.state[p]["exp_hessian_diag"] for p in model.parameters()])
    exact, estimate = states
    assert hvp_accuracy.relative_error(estimate, exact) < 2e-2


def train(optimizer, steps, estimator, model_fn=make_model, fd_draws=False, **options):
    x, y = whole_batch()
    model = model_fn()
    opt = optimizer(model.parameters(), lr=0.05, lazy_hessian=2,
                    hessian_estimator=estimator, **options, **PAPER_SETTINGS[optimizer])
    if fd_draws:
        with_finite_difference_draws(opt)
    for _ in range(steps):
        opt.step(lambda: LOSS(model(x), y))
    return model, opt


def trajectory_gap(optimizer) -> float:
    """The distance between the two estimators' weights after 30 steps, over the distance
    the double backward's travelled (both drawing the same z)."""
    exact, _ = train(optimizer, 30, "autograd", fd_draws=True)
    estimated, _ = train(optimizer, 30, FD)
    travelled = distance(exact, make_model())
    gap = distance(estimated, exact)
    print(f"{optimizer.__name__}: travelled {travelled:.3e}, gap {gap:.3e} "
          f"({gap / travelled:.2%})")
    return gap / travelled


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_thirty_steps_follow_the_double_backward_trajectory(optimizer):
    """SASSHA's autograd product mixes points (docs/algorithm.md section 1), the finite difference is
    taken at w + e: the trajectories differ by that and by the estimate's error (with
    the resolution floor, which raises this tiny model's least-curved entries)."""
    assert trajectory_gap(optimizer) < TRAJECTORY_GAP[optimizer]


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_a_wrong_estimate_leaves_that_trajectory(optimizer, monkeypatch):
    """The negative control: an estimate 2x too large (a step-scale error) breaks the
    bound (measured: see TRAJECTORY_GAP)."""
    difference = finite_difference._difference
    monkeypatch.setattr(finite_difference, "_difference",
                        lambda *args: [2 * h for h in difference(*args)])
    assert trajectory_gap(optimizer) > TRAJECTORY_GAP[optimizer]


def distance(a, b):
    return torch.linalg.vector_norm(torch.cat([(p - q).flatten() for p, q in
                                               zip(a.parameters(), b.parameters())])).item()


def test_the_default_estimator_is_unchanged():
    """Golden files cover the numbers; here: no probe runs and the argument is optional."""
    a, opt_a = train(SASSHA, 3, "autograd")
    x, y = whole_batch()
    b = make_model()
    opt_b = SASSHA(b.parameters(), lr=0.05, lazy_hessian=2, rho=0.05)
    for _ in range(3):
        opt_b.step(lambda: LOSS(b(x), y))
    assert_identical(snapshot(b, opt_b), snapshot(a, opt_a))


def dropout_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Dropout(0.3), nn.Linear(16, 3))


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_method_level_probes_equal_the_one_call_step(optimizer):
    """The custom loop with hessian_probes(rng_state) is step(closure) bit for bit, dropout
    masks included, and leaves the global RNG where step(closure) does."""
    x, y = whole_batch()

    def one_call():
        torch.manual_seed(5)
        model = dropout_model()
        opt = optimizer(model.parameters(), lazy_hessian=2, hessian_estimator=FD,
                        **PAPER_SETTINGS[optimizer])
        for _ in range(3):
            opt.step(lambda: LOSS(model(x), y))
        return snapshot(model, opt), torch.get_rng_state()

    def method_level():
        torch.manual_seed(5)
        model = dropout_model()
        opt = optimizer(model.parameters(), lazy_hessian=2, hessian_estimator=FD,
                        **PAPER_SETTINGS[optimizer])
        for _ in range(3):
            if optimizer is SASSHA:
                LOSS(model(x), y).backward()
                opt.perturb_weights(zero_grad=True)
                with sassha_fast.frozen_batchnorm_stats():
                    rng = sassha_fast.capture_rng_state()
                    LOSS(model(x), y).backward()
                    for _ in opt.hessian_probes(rng):
                        LOSS(model(x), y).backward()
                opt.unperturb()
            else:
                rng = sassha_fast.capture_rng_state()
                LOSS(model(x), y).backward()
                for _ in opt.hessian_probes(rng):
                    LOSS(model(x), y).backward()
            opt.step()
            opt.zero_grad()
        return snapshot(model, opt), torch.get_rng_state()

    (want, want_rng), (got, got_rng) = one_call(), method_level()
    assert_identical(got, want)
    assert torch.equal(got_rng, want_rng)


def test_dropout_masks_are_replayed_in_the_probes():
    """Without the replay the probe sees other masks: the estimate is far off."""
    x, y = whole_batch()
    estimates = []
    for replay in (True, False):
        torch.manual_seed(5)
        model = dropout_model()
        opt = MSASSHA(model.parameters(), hessian_estimator=FD)
        rng = sassha_fast.capture_rng_state()
        LOSS(model(x), y).backward()
        for _ in opt.hessian_probes(rng if replay else None):
            LOSS(model(x), y).backward()
        estimates.append(opt._estimator.probed.estimate)
        # The exact product with the masks of the gradient's forward.
        torch.set_rng_state(rng.cpu)
        params = list(model.parameters())
        grads = torch.autograd.grad(LOSS(model(x), y), params, create_graph=True)
        zs = opt._estimator.probe_source(0).draw(params)  # the z the probes drew
        exact = torch.autograd.grad(grads, params, zs)
    replayed, not_replayed = (hvp_accuracy.relative_error(e, exact) for e in estimates)
    assert replayed < 1e-2 < 1.0 < not_replayed


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_a_closure_that_calls_backward_itself_works(optimizer):
    x, y = whole_batch()
    results = []
    for torch_style in (False, True):
        model = make_model()
        opt = optimizer(model.parameters(), lazy_hessian=2, hessian_estimator=FD,
                        **PAPER_SETTINGS[optimizer])

        def closure():
            loss = LOSS(model(x), y)
            if torch_style:
                opt.zero_grad()
                loss.backward()
            return loss
        losses = [opt.step(closure) for _ in range(3)]
        results.append((snapshot(model, opt), losses))
    assert_identical(results[1][0], results[0][0])
    assert [l.item() for l in results[1][1]] == [l.item() for l in results[0][1]]


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_a_grad_scaler_scales_the_probes_with_the_same_scale(optimizer):
    """A power-of-two scale is exact: the scaled run is the unscaled one."""
    x, y = whole_batch()
    results = []
    for scaler in (None, torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)):
        model = make_model()
        opt = optimizer(model.parameters(), lazy_hessian=2, hessian_estimator=FD,
                        **PAPER_SETTINGS[optimizer])
        for _ in range(3):
            opt.step(lambda: LOSS(model(x), y), scaler=scaler)
            if scaler is not None:
                scaler.update()
        results.append(snapshot(model, opt))
    for p, q in zip(results[1]["params"], results[0]["params"]):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_the_double_backward_still_refuses_a_closure_that_calls_backward():
    model = make_model()
    x, y = whole_batch()
    opt = SASSHA(model.parameters(), rho=0.05)

    def closure():
        loss = LOSS(model(x), y)
        loss.backward()
        return loss
    with pytest.raises(ValueError, match="ran backward\\(\\) itself.*'finite_difference'"):
        opt.step(closure)


def test_batchnorm_statistics_move_only_with_the_first_pass():
    x = torch.randn(16, 5)
    y = torch.randint(0, 3, (16,))
    buffers = []
    for estimator in ("autograd", FD):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3))
        opt = MSASSHA(model.parameters(), hessian_estimator=estimator)
        opt.step(lambda: LOSS(model(x), y))
        buffers.append({k: v.clone() for k, v in model[1].named_buffers()})
    assert buffers[0]["num_batches_tracked"].item() == 1
    for name in buffers[0]:
        assert torch.equal(buffers[1][name], buffers[0][name])


class SDPAAttentionGPT(GPT):
    """The bench GPT with its attention through F.scaled_dot_product_attention."""

    def __init__(self, config):
        super().__init__(config)
        for block in self.blocks:
            block.attn.forward = self._sdpa(block.attn)

    @staticmethod
    def _sdpa(attn):
        def forward(x):
            batch, length, width = x.shape
            q, k, v = attn.qkv(x).split(width, dim=2)
            q, k, v = (t.view(batch, length, attn.heads, -1).transpose(1, 2) for t in (q, k, v))
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return attn.proj(out.transpose(1, 2).reshape(batch, length, width))
        return forward


GPT_CONFIG = GPTConfig(layers=1, width=16, heads=2, vocab=32, context=8)


def gpt_batch():
    tokens = torch.randint(0, GPT_CONFIG.vocab, (4, GPT_CONFIG.context + 1),
                           generator=torch.Generator().manual_seed(0))
    return tokens[:, :-1], tokens[:, 1:]


def gpt_loss(model, x, y):
    return F.cross_entropy(model(x).reshape(-1, GPT_CONFIG.vocab), y.reshape(-1))


def test_the_estimate_through_sdpa_is_the_exact_product_of_the_same_function():
    """The exact product of the hand-written attention (SDPA has no double backward)
    against the estimate through SDPA, same weights."""
    x, y = gpt_batch()
    torch.manual_seed(0)
    hand_written = GPT(GPT_CONFIG)
    sdpa = SDPAAttentionGPT(GPT_CONFIG)
    sdpa.load_state_dict(hand_written.state_dict())
    exact = hvp_accuracy.exact_product(
        hvp_accuracy.Problem("gpt", hand_written, lambda m: gpt_loss(m, x, y)))
    estimate = hvp_accuracy.fd_product(
        hvp_accuracy.Problem("gpt", sdpa, lambda m: gpt_loss(m, x, y)),
        FiniteDifferenceSettings("one_sided", DEFAULT_EPS["one_sided"]))
    assert hvp_accuracy.relative_error(estimate, exact) < 1e-2


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_a_model_with_sdpa_trains(optimizer):
    x, y = gpt_batch()
    torch.manual_seed(0)
    model = SDPAAttentionGPT(GPT_CONFIG)
    opt = optimizer(model.parameters(), lr=0.003, lazy_hessian=2, hessian_estimator=FD,
                    **PAPER_SETTINGS[optimizer])
    losses = [opt.step(lambda: gpt_loss(model, x, y)).item() for _ in range(4)]
    assert losses[-1] < losses[0]
    assert all(opt.state[p]["exp_hessian_diag"].abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_sdpa_with_the_double_backward_names_the_way_out(optimizer):
    torch.manual_seed(0)
    model = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True)
    x = torch.randn(2, 4, 8)
    opt = optimizer(model.parameters(), **PAPER_SETTINGS[optimizer])
    with pytest.raises(RuntimeError, match="hessian_estimator='finite_difference'"):
        opt.step(lambda: model(x).square().mean())


def checkpointed_model():
    torch.manual_seed(0)
    inner = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Dropout(0.2), nn.Linear(16, 16))

    class Checkpointed(nn.Module):
        def __init__(self, use_checkpoint):
            super().__init__()
            self.inner, self.head = copy.deepcopy(inner), nn.Linear(16, 3)
            self.use_checkpoint = use_checkpoint

        def forward(self, x):
            if self.use_checkpoint:
                return self.head(checkpoint(self.inner, x, use_reentrant=False))
            return self.head(self.inner(x))
    return Checkpointed


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_activation_checkpointing_trains_like_the_plain_model(optimizer):
    x, y = whole_batch()
    cls = checkpointed_model()
    results = []
    for use_checkpoint in (True, False):
        torch.manual_seed(0)
        model = cls(use_checkpoint)
        opt = optimizer(model.parameters(), lazy_hessian=2, hessian_estimator=FD,
                        **PAPER_SETTINGS[optimizer])
        for _ in range(3):
            opt.step(lambda: LOSS(model(x), y))
        results.append(list(model.parameters()))
    for p, q in zip(*results):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_a_fully_compiled_model_trains_hessian_steps_included():
    """inductor on CPU, every pass through the compiled module (Hessian steps too). The
    compiled gradients differ from eager ones by round-off, which the difference quotient
    divides by eps: the estimates agree to about 1e-2, not bit for bit."""
    x, y = whole_batch()
    results = []
    for compile_ in (True, False):
        model = make_model()
        runner = torch.compile(model) if compile_ else model
        opt = SASSHA(model.parameters(), lazy_hessian=2, hessian_estimator=FD, rho=0.05)
        for _ in range(3):
            opt.step(lambda: LOSS(runner(x), y))
        results.append((list(model.parameters()),
                        [opt.state[p]["exp_hessian_diag"] for p in model.parameters()]))
    (compiled, compiled_hessian), (eager, eager_hessian) = results
    assert hvp_accuracy.relative_error(compiled_hessian, eager_hessian) < 5e-2
    for p, q in zip(compiled, eager):
        torch.testing.assert_close(p, q, rtol=1e-2, atol=2e-3)


def test_low_precision_parameters_need_a_larger_step():
    x, y = whole_batch(torch.bfloat16)
    model = make_model(torch.bfloat16)
    opt = SASSHA(model.parameters(), hessian_estimator=FD, rho=0.05)
    before = snapshot(model, opt)
    with pytest.raises(TypeError, match="bfloat16 parameters.*fd_eps=3e-2"):
        opt.step(lambda: LOSS(model(x), y))
    opt.zero_grad()
    assert_identical(snapshot(model, opt)["optimizer"], before["optimizer"])
    opt = SASSHA(model.parameters(), hessian_estimator=FD, fd_scheme="central",
                 fd_eps=3e-2, rho=0.05)
    opt.step(lambda: LOSS(model(x), y))
    assert all(opt.state[p]["exp_hessian_diag"].abs().sum() > 0 for p in model.parameters())


def test_an_autocast_forward_needs_a_larger_step():
    x, y = whole_batch()

    def closure():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return LOSS(model(x), y)
    model = make_model()
    opt = MSASSHA(model.parameters(), hessian_estimator=FD)
    with pytest.raises(RuntimeError, match="under cpu autocast.*fd_eps=3e-2"):
        opt.step(closure)
    opt = MSASSHA(model.parameters(), hessian_estimator=FD, fd_scheme="central", fd_eps=3e-2)
    opt.step(closure)
    assert all(opt.state[p]["exp_hessian_diag"].abs().sum() > 0 for p in model.parameters())


def test_a_due_hessian_without_probes_says_what_to_run():
    model = make_model()
    x, y = whole_batch()
    opt = MSASSHA(model.parameters(), hessian_estimator=FD)
    LOSS(model(x), y).backward()
    with pytest.raises(RuntimeError, match="hessian_probes"):
        opt.step()


def test_probes_belong_to_the_finite_difference_estimator():
    opt = SASSHA(make_model().parameters(), rho=0.05)
    with pytest.raises(RuntimeError, match="hessian_estimator='finite_difference'"):
        list(opt.hessian_probes())


def test_the_language_model_sassha_refuses_the_finite_difference():
    """It refreshes D from the sum of set_hessian() estimates only: probes would be ignored."""
    with pytest.raises(ValueError, match="does not apply"):
        sassha_fast.LanguageModelSASSHA(make_model().parameters(), hessian_estimator=FD)


def test_a_failed_probe_leaves_weights_gradients_and_generator_as_they_were():
    model = make_model()
    x, y = whole_batch()
    opt = MSASSHA(model.parameters(), hessian_estimator=FD)
    LOSS(model(x), y).backward()
    params = [p.detach().clone() for p in model.parameters()]
    grads = [p.grad.clone() for p in model.parameters()]
    generator = opt._rademacher.state_dict()
    with pytest.raises(KeyError):
        for _ in opt.hessian_probes():
            raise KeyError("the user's forward failed")
    for p, w, g in zip(model.parameters(), params, grads):
        torch.testing.assert_close(p.detach(), w, rtol=0, atol=1e-7)
        assert torch.equal(p.grad, g)
    assert_identical(opt._rademacher.state_dict(), generator)


@pytest.mark.parametrize("options,message", [
    ({"hessian_estimator": "exact"}, "Invalid hessian_estimator"),
    ({"hessian_estimator": FD, "fd_scheme": "backward"}, "Invalid fd_scheme"),
    ({"hessian_estimator": FD, "fd_eps": 0.0}, "Invalid fd_eps"),
    ({"fd_eps": 1e-3}, "apply to hessian_estimator='finite_difference' only"),
])
def test_invalid_estimator_arguments_are_refused(options, message):
    for optimizer in OPTIMIZERS:
        with pytest.raises(ValueError, match=message):
            optimizer(make_model().parameters(), **options)
