"""The frontend's public behaviour: constructor checks, backends, both iteration styles,
BatchNorm freezing, plain loops, M-SASSHA's evaluation point and checkpoints."""
import copy

import pytest
import torch
from torch import nn

import sassha_fast
from sassha_fast import MSASSHA, SASSHA
from sassha_fast.optim import passes

from tiny import PAPER_SETTINGS

OPTIMIZERS = [SASSHA, MSASSHA]


def small_model(batchnorm: bool = False) -> nn.Module:
    torch.manual_seed(1)
    layers = [nn.Linear(5, 8)] + ([nn.BatchNorm1d(8)] if batchnorm else []) + \
        [nn.Tanh(), nn.Linear(8, 3)]
    return nn.Sequential(*layers)


def batch():
    generator = torch.Generator().manual_seed(2)
    return torch.randn(12, 5, generator=generator), torch.randint(0, 3, (12,), generator=generator)


def loss_of(model):
    x, y = batch()
    return nn.functional.cross_entropy(model(x), y)


def snapshot(model, opt):
    params = [p.detach().clone() for p in model.parameters()]
    state = {i: {k: (v.clone() if torch.is_tensor(v) else v) for k, v in opt.state[p].items()}
             for i, p in enumerate(model.parameters())}
    return params, state


def assert_same_run(a, b, **tolerance):
    (params_a, state_a), (params_b, state_b) = a, b
    for x, y in zip(params_a, params_b):
        torch.testing.assert_close(x, y, **tolerance)
    assert state_a.keys() == state_b.keys()
    for i in state_a:
        assert state_a[i].keys() == state_b[i].keys()
        for key in state_a[i]:
            if torch.is_tensor(state_a[i][key]):
                torch.testing.assert_close(state_a[i][key], state_b[i][key], **tolerance)
            else:
                assert state_a[i][key] == state_b[i][key], key


# -- bad input ------------------------------------------------------------------------

BAD_VALUES = [
    ("lr", -0.1, "Invalid learning rate: -0.1"),
    ("eps", -1e-3, "Invalid epsilon value: -0.001"),
    ("betas", (1.0, 0.999), "Invalid beta parameter at index 0: 1.0"),
    ("betas", (0.9, -0.5), "Invalid beta parameter at index 1: -0.5"),
    ("weight_decay", -1.0, "Invalid weight_decay value: -1.0"),
    ("rho", -0.05, "Invalid rho value: -0.05"),
    ("lazy_hessian", 0, "Invalid lazy_hessian value: 0"),
    ("lazy_hessian", 2.5, "Invalid lazy_hessian value: 2.5"),
    ("n_samples", 0, "Invalid n_samples value: 0"),
    ("hessian_power", 1.5, "Invalid hessian_power value: 1.5"),
    ("hessian_power", -0.5, "Invalid hessian_power value: -0.5"),
    ("lr", float("nan"), "Invalid learning rate: nan"),
]


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("name,value,message", BAD_VALUES)
def test_invalid_hyperparameter_is_named_in_the_error(optimizer, name, value, message):
    with pytest.raises(ValueError, match=f"^{message}".replace("(", r"\(").replace(".", r"\.")):
        optimizer(small_model().parameters(), **{name: value})


def test_invalid_perturb_eps_and_bad_group_value():
    with pytest.raises(ValueError, match="Invalid perturb_eps value: -1"):
        SASSHA(small_model().parameters(), perturb_eps=-1)
    model = small_model()
    with pytest.raises(ValueError, match="Invalid learning rate: -2"):
        SASSHA([{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": -2}])


def test_bad_group_leaves_the_optimizer_unchanged():
    model = small_model()
    opt = SASSHA(model[0].parameters(), rho=0.05)
    with pytest.raises(ValueError, match="Invalid rho value"):
        opt.add_param_group({"params": model[2].parameters(), "rho": -1.0})
    assert len(opt.param_groups) == 1


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_sparse_gradients_are_refused(optimizer):
    embedding = nn.Embedding(10, 4, sparse=True)
    opt = optimizer(embedding.parameters(), **PAPER_SETTINGS[optimizer])
    embedding(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        opt.step()


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_complex_parameters_are_refused_at_construction(optimizer):
    with pytest.raises(ValueError, match="complex"):
        optimizer([nn.Parameter(torch.zeros(3, dtype=torch.complex64))])


def test_unknown_and_unusable_backends():
    with pytest.raises(ValueError, match="Invalid backend: 'fastest'"):
        SASSHA(small_model().parameters(), backend="fastest")
    report = sassha_fast.available_backends()
    for name, availability in report.items():
        if not availability.available:
            with pytest.raises(RuntimeError, match=f"backend '{name}' is unavailable"):
                SASSHA(small_model().parameters(), backend=name)


def test_available_backends_lists_every_backend_with_a_reason():
    report = sassha_fast.available_backends()
    assert set(report) == {"reference", "foreach", "cpu", "triton", "cuda"}
    assert report["reference"].available and report["foreach"].available
    for availability in report.values():
        assert isinstance(availability.reason, str) and availability.reason
        assert (availability.reason == "available") == availability.available


def test_auto_picks_a_fused_backend_on_cpu():
    model = small_model()
    opt = SASSHA(model.parameters(), rho=0.05)
    opt.step(lambda: loss_of(model))
    expected = "cpu" if sassha_fast.available_backends()["cpu"].available else "foreach"
    assert opt.backends_in_use == {"cpu": expected}


# -- the two iteration styles ---------------------------------------------------------

def method_level_iteration(model, opt):
    loss = loss_of(model)
    loss.backward()
    opt.perturb_weights(zero_grad=True)
    with sassha_fast.frozen_batchnorm_stats():
        loss_of(model).backward(create_graph=opt.hessian_due)
    opt.unperturb()
    opt.step()
    opt.zero_grad()
    return loss


@pytest.mark.parametrize("backend", ["reference", "foreach"])
@pytest.mark.parametrize("batchnorm", [False, True])
def test_one_call_and_method_level_agree(backend, batchnorm):
    runs = []
    for style in ("method", "closure"):
        model = small_model(batchnorm)
        opt = SASSHA(model.parameters(), lr=0.05, lazy_hessian=3, backend=backend, rho=0.05)
        losses = []
        for _ in range(8):
            if style == "method":
                losses.append(method_level_iteration(model, opt).item())
            else:
                losses.append(opt.step(lambda: loss_of(model)).item())
        runs.append((losses, snapshot(model, opt), copy.deepcopy(model.state_dict())))
    (losses_a, snap_a, buffers_a), (losses_b, snap_b, buffers_b) = runs
    assert losses_a == pytest.approx(losses_b, rel=1e-6)
    assert_same_run(snap_a, snap_b, rtol=1e-6, atol=1e-7)
    for key in buffers_a:
        torch.testing.assert_close(buffers_a[key], buffers_b[key], rtol=1e-6, atol=1e-7)


def test_create_graph_only_when_the_hessian_is_due(monkeypatch):
    calls = []
    original = passes.backward

    def recording_backward(loss, create_graph):
        calls.append(create_graph)
        original(loss, create_graph)

    monkeypatch.setattr(passes, "backward", recording_backward)
    model = small_model()
    opt = SASSHA(model.parameters(), lazy_hessian=3, rho=0.05)
    due = []
    for _ in range(7):
        due.append(opt.hessian_due)
        opt.step(lambda: loss_of(model))
    assert due == [True, False, False, True, False, False, True]
    # Two passes per iteration; only the second asks for a graph, and only when due.
    assert calls[0::2] == [False] * 7
    assert calls[1::2] == due
    assert all(p.grad is None or p.grad.grad_fn is None for p in model.parameters())


def test_one_call_returns_the_first_pass_loss():
    model = small_model()
    opt = SASSHA(model.parameters(), rho=0.05)
    expected = loss_of(model).item()
    assert opt.step(lambda: loss_of(model)).item() == pytest.approx(expected, rel=1e-7)


def test_batchnorm_statistics_are_frozen_in_the_perturbed_pass():
    model = small_model(batchnorm=True)
    bn = model[1]
    reference = copy.deepcopy(model)
    loss_of(reference)  # one training-mode forward: the statistics one pass produces
    opt = SASSHA(model.parameters(), rho=0.5)
    opt.step(lambda: loss_of(model))
    torch.testing.assert_close(bn.running_mean, reference[1].running_mean, rtol=0, atol=0)
    torch.testing.assert_close(bn.running_var, reference[1].running_var, rtol=0, atol=0)
    assert bn.momentum == 0.1 and bn.num_batches_tracked.item() == 1


@pytest.mark.parametrize("returned", [None, 1.0, "loss"])
def test_closure_must_return_the_loss_without_backward(returned):
    model = small_model()
    opt = SASSHA(model.parameters(), rho=0.05)

    def closure():
        loss = loss_of(model)
        if returned == "loss":
            loss.backward()
            return loss
        return returned

    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="closure"):
        opt.step(closure)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert opt.state_dict()["state"] == {}


def test_failed_perturbed_pass_leaves_the_weights_unperturbed():
    model = small_model()
    before = [p.detach().clone() for p in model.parameters()]
    opt = SASSHA(model.parameters(), rho=0.5)
    calls = []

    def closure():
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return loss_of(model)

    with pytest.raises(KeyboardInterrupt):
        opt.step(closure)
    # w + e - e: back to w up to the rounding of the two additions.
    for p, q in zip(model.parameters(), before):
        torch.testing.assert_close(p.detach(), q, rtol=0, atol=1e-6)
    assert all(p.grad is None for p in model.parameters())
    assert opt.state_dict()["state"] == {}


# -- plain single-backward loops --------------------------------------------------------

@pytest.mark.parametrize("backend", ["reference", "foreach"])
def test_step_without_perturbation_is_sassha_with_rho_zero(backend):
    runs = []
    for style in ("plain", "rho0"):
        model = small_model()
        opt = SASSHA(model.parameters(), rho=0.05 if style == "plain" else 0.0, lazy_hessian=2,
                     backend=backend)
        for _ in range(5):
            if style == "plain":
                opt.zero_grad()
                loss_of(model).backward(create_graph=opt.hessian_due)
                opt.step()
            else:
                opt.step(lambda: loss_of(model))
        runs.append(snapshot(model, opt))
    assert_same_run(*runs, rtol=0, atol=0)


def test_hessian_due_without_a_graph_says_what_to_do():
    model = small_model()
    opt = SASSHA(model.parameters(), rho=0.05)
    loss_of(model).backward()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(RuntimeError, match="create_graph=True"):
        opt.step()
    for p, q in zip(model.parameters(), before):
        assert torch.equal(p, q)
    assert all(state.get("hessian_step", 0) == 0 for state in opt.state.values())


def test_frozen_parameters_and_parameters_without_gradients_are_untouched():
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    unused = nn.Linear(2, 2)
    model[0].bias.requires_grad_(False)
    frozen, idle = model[0].bias.detach().clone(), unused.weight.detach().clone()
    opt = SASSHA(list(model.parameters()) + list(unused.parameters()), lazy_hessian=2, rho=0.05)
    for _ in range(3):
        opt.step(lambda: loss_of(model))
    assert torch.equal(model[0].bias, frozen) and torch.equal(unused.weight, idle)
    assert model[0].bias not in opt.state and unused.weight not in opt.state
    assert opt.state[model[0].weight]["step"] == 3


# -- M-SASSHA ------------------------------------------------------------------------

def test_msassha_evaluation_context_moves_to_the_clean_point_and_back():
    model = small_model()
    opt = MSASSHA(model.parameters(), rho=0.3)
    for _ in range(3):
        opt.step(lambda: loss_of(model))
    perturbed = [p.detach().clone() for p in model.parameters()]
    nf = opt.param_groups[0]["norm_factor"]
    clean = [p + nf * opt.state[p]["exp_avg"] for p in model.parameters()]
    with opt.evaluation():
        assert not opt.at_perturbed_point
        for p, c in zip(model.parameters(), clean):
            torch.testing.assert_close(p.detach(), c, rtol=0, atol=1e-7)
        opt.move_back_from_momentumAscent()  # idempotent inside the block
    assert opt.at_perturbed_point
    for p, q in zip(model.parameters(), perturbed):
        torch.testing.assert_close(p.detach(), q, rtol=0, atol=1e-7)


def test_msassha_step_taken_at_the_clean_point_matches_one_taken_at_the_perturbed_point():
    runs = []
    for leave_first in (False, True):
        model = small_model()
        opt = MSASSHA(model.parameters(), lazy_hessian=2)
        for i in range(4):
            if leave_first and i == 2:
                opt.move_back_from_momentumAscent()
                # The gradient is taken at the perturbed point in both runs.
                opt.move_up_to_momentumAscent()
            opt.step(lambda: loss_of(model))
        runs.append(snapshot(model, opt))
    assert_same_run(*runs, rtol=1e-6, atol=1e-7)


# -- checkpoints ---------------------------------------------------------------------

@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("backend", ["reference", "foreach"])
def test_resume_in_the_middle_of_a_lazy_interval_is_bit_for_bit(optimizer, backend):
    kwargs = dict(lazy_hessian=3, n_samples=2, seed=5, backend=backend)
    model = small_model()
    opt = optimizer(model.parameters(), **kwargs, **PAPER_SETTINGS[optimizer])
    for _ in range(4):  # Hessian at 1 and 4; the next one is due at 7
        opt.step(lambda: loss_of(model))
    saved = copy.deepcopy((model.state_dict(), opt.state_dict()))
    for _ in range(5):
        opt.step(lambda: loss_of(model))
    uninterrupted = snapshot(model, opt)

    resumed_model = small_model()
    resumed_model.load_state_dict(saved[0])
    resumed = optimizer(resumed_model.parameters(), **dict(kwargs, seed=99),
                        **PAPER_SETTINGS[optimizer])
    resumed.load_state_dict(saved[1])
    for _ in range(5):
        resumed.step(lambda: loss_of(resumed_model))
    assert_same_run(uninterrupted, snapshot(resumed_model, resumed), rtol=0, atol=0)


def test_state_lives_in_the_state_dict_not_on_parameters():
    model = small_model()
    attributes_before = [set(vars(p)) for p in model.parameters()]
    opt = SASSHA(model.parameters(), rho=0.05)
    opt.step(lambda: loss_of(model))
    assert [set(vars(p)) for p in model.parameters()] == attributes_before
    state = opt.state_dict()
    entry = state["state"][0]
    assert {"step", "hessian_step", "exp_avg", "exp_hessian_diag", "bias_correction2"} <= set(entry)
    assert "rademacher" in state["sassha_fast"]


def test_low_precision_parameters_keep_fp32_state_through_a_checkpoint():
    model = small_model().to(torch.bfloat16)
    x, y = batch()
    opt = SASSHA(model.parameters(), rho=0.05)
    opt.step(lambda: nn.functional.cross_entropy(model(x.bfloat16()).float(), y))
    fresh = SASSHA(model.parameters(), rho=0.05)
    fresh.load_state_dict(opt.state_dict())
    for p in model.parameters():
        for key in ("exp_avg", "exp_hessian_diag"):
            assert fresh.state[p][key].dtype == torch.float32
            assert torch.equal(fresh.state[p][key], opt.state[p][key])
