"""Checkpoints that do not fit are refused before anything is replaced: another optimizer's
(named), a state tensor of the wrong shape or kind, inf/NaN or negative curvature in the
state, missing keys, another model's groups. Each refusal names the tensor and leaves the
optimizer bit for bit as it was, for SASSHA, M-SASSHA, the language-model variant and the
authors' format."""
import copy

import pytest
import torch

from sassha_fast import MSASSHA, SASSHA, CheckpointError
from sassha_fast.lm import LanguageModelSASSHA
from tiny import LOSS, PAPER_SETTINGS, assert_identical, make_model, whole_batch

OPTIMIZERS = [SASSHA, MSASSHA, LanguageModelSASSHA]


def trained(optimizer, steps=3, **kwargs):
    model = make_model()
    x, y = whole_batch()
    if optimizer is LanguageModelSASSHA:
        opt = LanguageModelSASSHA(model.parameters(), lazy_hessian=2, **kwargs)
        for it in range(steps):
            LOSS(model(x), y).backward(create_graph=it % 2 == 0)
            if it % 2 == 0:
                opt.set_hessian()
            opt.step(it)
            opt.zero_grad()
        return model, opt
    opt = optimizer(model.parameters(), lazy_hessian=2, **PAPER_SETTINGS[optimizer], **kwargs)
    for _ in range(steps):
        opt.step(lambda: LOSS(model(x), y))
    return model, opt


def everything(opt):
    """What a refused load must leave untouched: the state dict and the groups."""
    return {"state_dict": copy.deepcopy(opt.state_dict()),
            "groups": [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups],
            "ids": [[id(p) for p in g["params"]] for g in opt.param_groups]}


def refused(opt, state_dict, match):
    before = everything(opt)
    with pytest.raises(CheckpointError, match=match):
        opt.load_state_dict(state_dict)
    assert_identical(everything(opt), before)


def first_state(state_dict):
    return state_dict["state"][next(iter(state_dict["state"]))]


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_a_state_tensor_of_another_shape_is_refused_by_name(optimizer):
    _, opt = trained(optimizer)
    bad = copy.deepcopy(opt.state_dict())
    first_state(bad)["exp_avg"] = torch.zeros(3, 3)
    refused(opt, bad, r"parameter 0 of group 0 \(shape \[8, 5\]\): exp_avg has shape \[3, 3\]")


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("key", ["exp_avg", "exp_hessian_diag"])
def test_nonfinite_state_is_refused_and_the_opt_out_is_named(optimizer, key):
    _, opt = trained(optimizer)
    bad = copy.deepcopy(opt.state_dict())
    first_state(bad)[key][0, 0] = float("nan")
    refused(opt, bad, f"{key} holds inf or NaN.*nonfinite='ignore'")
    _, ignoring = trained(optimizer, nonfinite="ignore")
    ignoring.load_state_dict(bad)  # the named opt-out loads it
    assert torch.isnan(first_state(ignoring.state_dict())[key]).any()


def test_negative_curvature_is_refused():
    _, opt = trained(SASSHA)
    bad = copy.deepcopy(opt.state_dict())
    first_state(bad)["exp_hessian_diag"][0, 0] = -1.0
    refused(opt, bad, "exp_hessian_diag holds negative values")


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("other,name", [(torch.optim.AdamW, "AdamW"), (torch.optim.SGD, "SGD"),
                                        (torch.optim.RMSprop, "RMSprop")])
def test_another_optimizers_checkpoint_is_named(optimizer, other, name):
    model, opt = trained(optimizer)
    theirs = other(model.parameters(), lr=0.1, **({"momentum": 0.9} if name == "SGD" else {}))
    LOSS(model(whole_batch()[0]), whole_batch()[1]).backward()
    theirs.step()
    refused(opt, theirs.state_dict(), f"another optimizer \\(torch.optim.[^)]*{name}")


def test_sassha_and_msassha_checkpoints_are_not_interchangeable():
    _, sassha = trained(SASSHA)
    _, msassha = trained(MSASSHA)
    refused(msassha, sassha.state_dict(), "group 0 of the checkpoint lacks 'norm_factor'")
    refused(sassha, msassha.state_dict(), "group 0 of the checkpoint lacks 'perturb_eps'")


@pytest.mark.parametrize("optimizer", [SASSHA, MSASSHA])
def test_a_missing_key_or_a_bad_counter_is_named(optimizer):
    _, opt = trained(optimizer)
    bad = copy.deepcopy(opt.state_dict())
    del first_state(bad)["exp_hessian_diag"]
    refused(opt, bad, "parameter 0 of group 0 .* lacks 'exp_hessian_diag'")
    bad = copy.deepcopy(opt.state_dict())
    first_state(bad)["bias_correction2"] = 1.5
    refused(opt, bad, "bias_correction2 is outside")
    bad = copy.deepcopy(opt.state_dict())
    first_state(bad)["step"] = float("inf")
    refused(opt, bad, "step is inf")


def test_an_integer_state_tensor_and_a_bad_group_value_are_refused():
    _, opt = trained(SASSHA)
    bad = copy.deepcopy(opt.state_dict())
    first_state(bad)["exp_avg"] = first_state(bad)["exp_avg"].long()
    refused(opt, bad, "exp_avg has dtype torch.int64")
    bad = copy.deepcopy(opt.state_dict())
    bad["param_groups"][0]["lr"] = float("nan")
    refused(opt, bad, "parameter group 0 of the checkpoint: Invalid learning rate: nan")


def test_another_models_groups_are_refused():
    _, opt = trained(SASSHA)
    bad = copy.deepcopy(opt.state_dict())
    bad["param_groups"][0]["params"] = bad["param_groups"][0]["params"][:2]
    refused(opt, bad, "group 0 of the checkpoint has 2 parameters, this optimizer's 4")


@pytest.mark.parametrize("optimizer", [SASSHA, MSASSHA])
def test_the_authors_format_is_checked_after_conversion(optimizer):
    _, opt = trained(optimizer)
    authors = copy.deepcopy(opt.state_dict())
    del authors["sassha_fast"]
    renamed = {"exp_avg": "exp_avg", "exp_hessian_diag": "exp_hessian_diag"} \
        if optimizer is SASSHA else {"exp_avg": "grad_momentum",
                                     "exp_hessian_diag": "hess_momentum"}
    for state in authors["state"].values():
        for ours, theirs in renamed.items():
            state[theirs] = state.pop(ours)
        state["hessian step"] = state.pop("hessian_step")
        if optimizer is MSASSHA:
            del state["bias_correction2"]  # the authors keep it in a module global
    good = copy.deepcopy(authors)
    first_state(authors)[renamed["exp_avg"]] = torch.zeros(2)
    refused(opt, authors, "exp_avg has shape \\[2\\]")
    opt.load_state_dict(good)  # the same checkpoint, intact, loads


def test_a_good_checkpoint_still_loads_and_resumes_identically():
    model, opt = trained(SASSHA)
    saved = copy.deepcopy(opt.state_dict())
    _, fresh = trained(SASSHA, steps=1)
    fresh.load_state_dict(saved)
    assert_identical(fresh.state_dict(), saved)


def test_a_key_an_lr_scheduler_added_is_not_required():
    # LambdaLR writes initial_lr into every group; a checkpoint saved before one existed
    # (or without one) still loads, as into torch's own optimizers.
    _, plain = trained(SASSHA)
    saved = copy.deepcopy(plain.state_dict())
    _, scheduled = trained(SASSHA, steps=1)
    torch.optim.lr_scheduler.LambdaLR(scheduled, lambda step: 1.0)
    assert "initial_lr" in scheduled.param_groups[0]
    scheduled.load_state_dict(saved)
    assert_identical(scheduled.state_dict()["state"], saved["state"])
