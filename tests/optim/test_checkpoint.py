"""Checkpoints: across backends and devices, bit-exact resume, and the authors' format."""
import copy
import io

import pytest
import torch

import sassha_fast
from sassha_fast import MSASSHA, SASSHA, functional
from sassha_fast.optim.bias_correction import last_hessian_step
from sassha_fast.step.authors_format import generator_states_for
from tiny import LOSS, PAPER_SETTINGS, assert_identical, make_model, snapshot, whole_batch

LAZY = 3


def backends_for(device: torch.device):
    names = []
    for name, availability in sassha_fast.available_backends().items():
        if availability.available:
            try:
                functional.resolve(name, device)
            except RuntimeError:
                continue
            names.append(name)
    return names


CPU_BACKENDS = backends_for(torch.device("cpu"))
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA device in this machine")


def saved_and_loaded(obj, map_location=None):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, map_location=map_location)


def iterate(model, opt, x, y, steps):
    for _ in range(steps):
        opt.step(lambda: LOSS(model(x), y))


def start(optimizer, backend="auto", device="cpu", dtype=torch.float32):
    model = make_model(dtype).to(device)
    x, y = (t.to(device) for t in whole_batch(dtype))
    return model, x, y, optimizer(model.parameters(), lazy_hessian=LAZY, n_samples=2,
                                  backend=backend, **PAPER_SETTINGS[optimizer])


def resumed(model, opt, optimizer, backend="auto", device="cpu", map_location=None):
    """A fresh model and optimizer loaded from checkpoints of ``model`` and ``opt``."""
    checkpoint = saved_and_loaded({"model": model.state_dict(), "optimizer": opt.state_dict()},
                                  map_location)
    new_model = make_model(next(model.parameters()).dtype).to(device)
    new_model.load_state_dict(checkpoint["model"])
    new_opt = optimizer(new_model.parameters(), lazy_hessian=LAZY, n_samples=2,
                        backend=backend, **PAPER_SETTINGS[optimizer])
    new_opt.load_state_dict(checkpoint["optimizer"])
    return new_model, new_opt


@pytest.mark.parametrize("optimizer", [SASSHA, MSASSHA])
def test_a_resumed_run_matches_the_uninterrupted_one_bit_for_bit(optimizer):
    model, x, y, opt = start(optimizer)
    iterate(model, opt, x, y, 2)  # mid lazy interval: the next Hessian step is the 4th
    new_model, new_opt = resumed(model, opt, optimizer)
    iterate(model, opt, x, y, 4)
    iterate(new_model, new_opt, x, y, 4)
    assert_identical(snapshot(new_model, new_opt), snapshot(model, opt))


# The state does not depend on the backend: every backend to and from the reference one.
BACKEND_PAIRS = sorted({(a, b) for a in CPU_BACKENDS for b in CPU_BACKENDS
                        if a != b and "reference" in (a, b)})


@pytest.mark.parametrize("saved_with,loaded_with", BACKEND_PAIRS)
@pytest.mark.parametrize("optimizer", [SASSHA, MSASSHA])
def test_a_checkpoint_moves_between_backends(optimizer, saved_with, loaded_with):
    model, x, y, opt = start(optimizer, saved_with)
    iterate(model, opt, x, y, 2)
    new_model, new_opt = resumed(model, opt, optimizer, loaded_with)
    assert_identical(new_opt.state_dict(), opt.state_dict())
    reference_model, reference_opt = resumed(model, opt, optimizer, "reference")
    iterate(new_model, new_opt, x, y, 3)
    iterate(reference_model, reference_opt, x, y, 3)
    for p, q in zip(new_model.parameters(), reference_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert new_opt.backends_in_use == {"cpu": functional.resolve(loaded_with,
                                                               torch.device("cpu")).name}


def test_map_location_cpu_loads_and_keeps_fp32_state_for_bf16_parameters():
    model, x, y, opt = start(SASSHA, dtype=torch.bfloat16)
    iterate(model, opt, x, y, 2)
    new_model, new_opt = resumed(model, opt, SASSHA, map_location="cpu")
    for p in new_model.parameters():
        assert new_opt.state[p]["exp_avg"].dtype == torch.float32
    iterate(model, opt, x, y, 2)
    iterate(new_model, new_opt, x, y, 2)
    assert_identical(snapshot(new_model, new_opt), snapshot(model, opt))


@needs_cuda
@pytest.mark.parametrize("source,target", [("cpu", "cuda"), ("cuda", "cpu")])
def test_a_checkpoint_moves_between_cpu_and_cuda(source, target):
    model, x, y, opt = start(SASSHA, device=source)
    iterate(model, opt, x, y, 2)
    new_model, new_opt = resumed(model, opt, SASSHA, device=target, map_location=target)
    for p in new_model.parameters():
        assert new_opt.state[p]["exp_avg"].device == p.device
    iterate(model, opt, x, y, 1)  # a non-Hessian step: same numbers on both devices
    iterate(new_model, new_opt, x.to(target), y.to(target), 1)
    for p, q in zip(new_model.parameters(), model.parameters()):
        torch.testing.assert_close(p.cpu(), q.cpu(), rtol=1e-5, atol=1e-6)


def test_generator_states_follow_the_devices_of_the_parameters():
    state = torch.Generator().get_state()
    assert generator_states_for({"cuda:0": state}, [torch.device("cuda", 1)]) == \
        {"cuda:1": state}
    assert generator_states_for({"cpu": state}, [torch.device("cpu")]) == {"cpu": state}
    with pytest.warns(UserWarning, match="restart from the seed"):
        assert generator_states_for({"cuda:0": state}, [torch.device("cpu")]) == {}


# -- the authors' format --------------------------------------------------------------


def authors_sassha_state_dict(opt, dtype):
    """What the authors' SASSHA writes: their key names, state in the parameter dtype,
    settings in every group, no hessian_power, nothing of this package's."""
    ours = copy.deepcopy(opt.state_dict())
    state = {}
    for index, s in ours["state"].items():
        state[index] = {"step": s["step"], "hessian step": s["hessian_step"],
                        "exp_avg": s["exp_avg"].to(dtype),
                        "exp_hessian_diag": s["exp_hessian_diag"].to(dtype),
                        "bias_correction2": s["bias_correction2"]}
    groups = []
    for g in ours["param_groups"]:
        group = {k: v for k, v in g.items() if k != "hessian_power"}
        group.update(lazy_hessian=LAZY, n_samples=2, adaptive=False, seed=0)
        groups.append(group)
    return {"state": state, "param_groups": groups}


def authors_msassha_state_dict(opt):
    ours = copy.deepcopy(opt.state_dict())
    state = {index: {"step": s["step"], "hessian_step": s["hessian_step"],
                     "grad_momentum": s["exp_avg"], "hess_momentum": s["exp_hessian_diag"]}
             for index, s in ours["state"].items()}
    groups = []
    for g in ours["param_groups"]:
        group = {k: v for k, v in g.items() if k != "hessian_power"}
        group.update(norm_factor=[g["norm_factor"]], maximize=False)
        groups.append(group)
    return {"state": state, "param_groups": groups}


def test_an_authors_sassha_checkpoint_loads_and_continues():
    model, x, y, opt = start(SASSHA)
    iterate(model, opt, x, y, 2)  # the next step does not estimate the Hessian
    authors = authors_sassha_state_dict(opt, torch.float32)
    new_model, _ = resumed(model, opt, SASSHA)
    new_opt = SASSHA(new_model.parameters(), lazy_hessian=LAZY, n_samples=2,
                     hessian_power=0.5, rho=0.05)
    new_opt.load_state_dict(saved_and_loaded(authors))
    converted = new_opt.state_dict()
    assert_identical(converted["state"], opt.state_dict()["state"])
    assert converted["param_groups"] == opt.state_dict()["param_groups"]
    iterate(model, opt, x, y, 1)
    iterate(new_model, new_opt, x, y, 1)
    assert_identical(snapshot(new_model, new_opt)["params"], snapshot(model, opt)["params"])


def test_an_authors_checkpoint_in_bf16_gets_fp32_state():
    model, x, y, opt = start(SASSHA, dtype=torch.bfloat16)
    iterate(model, opt, x, y, 1)
    new_opt = SASSHA(make_model(torch.bfloat16).parameters(), lazy_hessian=LAZY, rho=0.05)
    new_opt.load_state_dict(authors_sassha_state_dict(opt, torch.bfloat16))
    for s in new_opt.state.values():
        assert s["exp_avg"].dtype == s["exp_hessian_diag"].dtype == torch.float32
        assert "hessian_step" in s and "hessian step" not in s


def test_an_authors_checkpoint_with_other_settings_warns():
    model, x, y, opt = start(SASSHA)
    iterate(model, opt, x, y, 1)
    other = SASSHA(make_model().parameters(), lazy_hessian=5, n_samples=2, rho=0.05)
    with pytest.warns(UserWarning, match="lazy_hessian=3"):
        other.load_state_dict(authors_sassha_state_dict(opt, torch.float32))
    assert other.lazy_hessian == 5


def test_an_authors_msassha_checkpoint_loads_at_the_clean_point():
    model, x, y, opt = start(MSASSHA)
    iterate(model, opt, x, y, 2)
    with opt.evaluation():  # the authors' script saves at the clean point
        authors = authors_msassha_state_dict(opt)
        new_model, _ = resumed(model, opt, MSASSHA)
    new_opt = MSASSHA(new_model.parameters(), lazy_hessian=LAZY, n_samples=2, hessian_power=0.5)
    new_opt.load_state_dict(authors)
    assert_identical(new_opt.state_dict()["state"], opt.state_dict()["state"])
    assert new_opt.param_groups[0]["norm_factor"] == opt.param_groups[0]["norm_factor"]
    assert not new_opt.at_perturbed_point
    new_opt.move_up_to_momentumAscent()  # as the authors' loop does at an epoch's start
    iterate(model, opt, x, y, 1)
    iterate(new_model, new_opt, x, y, 1)  # the same step, up to the moves' rounding
    for p, q in zip(new_model.parameters(), model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_the_msassha_bias_correction_is_rebuilt_from_the_step():
    assert [last_hessian_step(t, 3) for t in range(8)] == [0, 1, 1, 1, 4, 4, 4, 7]
