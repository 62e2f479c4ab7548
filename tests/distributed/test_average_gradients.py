"""``opt.average_gradients()``: what DDP could not average (a create_graph pass under
``no_sync()``; with ``sync_gradients=True``, every gradient) averaged before ``step()``, so
that clipping sees the global gradient. Two gloo processes on CPU, each fed half of a batch,
match one process fed the whole batch and clipping it; without the call each rank clips its
own gradient, which the comparison tells apart."""
import contextlib

import pytest
import torch
from torch.nn.parallel import DistributedDataParallel

from sassha_fast import MSASSHA, SASSHA
from sassha_fast.lm import SASSHA as LanguageModelSASSHA
from gloo_ranks import rank_results
from scaled_tolerance import scaled_close
from tiny import LOSS, PAPER_SETTINGS, assert_identical, make_model, whole_batch

# The spawned pair of processes, with their imports: about 10 s on an idle 2-core machine.
pytestmark = pytest.mark.timeout(300)

STEPS = 4
LAZY = 2  # steps 1 and 3 estimate the Hessian
MAX_NORM = 0.1  # below every step's gradient norm here (0.47-0.69): every step is clipped
KEYS = ("params", "exp_avg", "exp_hessian_diag")
FD = dict(hessian_estimator="finite_difference", fd_eps=1e-2)


def sassha_loop(model, opt, x, y, ddp: bool, average: bool) -> float:
    """The documented DDP loop: the create_graph pass under no_sync, the finite difference's
    probes as plain passes (a bare model with sync_gradients: every pass local)."""
    LOSS(model(x), y).backward()
    opt.perturb_weights(zero_grad=True)
    create_graph = opt.hessian_estimator == "autograd" and opt.hessian_due
    with model.no_sync() if ddp and create_graph else contextlib.nullcontext():
        LOSS(model(x), y).backward(create_graph=create_graph)
    for _ in opt.hessian_probes() if opt.hessian_estimator != "autograd" else ():
        LOSS(model(x), y).backward()
    opt.unperturb()
    return clip_and_step(model, opt, average)


def msassha_loop(model, opt, x, y, ddp: bool, average: bool) -> float:
    due = opt.hessian_due
    with model.no_sync() if ddp and due else contextlib.nullcontext():
        LOSS(model(x), y).backward(create_graph=due)
    return clip_and_step(model, opt, average)


def clip_and_step(model, opt, average: bool) -> float:
    if average:
        opt.average_gradients()
    norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM))
    opt.step()
    opt.zero_grad()
    return norm


# name: (optimizer, options, DDP-wrapped, loop)
CONFIGS = {
    "sassha-ddp": (SASSHA, {}, True, sassha_loop),
    "msassha-ddp": (MSASSHA, {}, True, msassha_loop),
    "sassha-bare-fd": (SASSHA, dict(FD, sync_gradients=True), False, sassha_loop),
}


def train(name: str, x, y, distributed: bool, average: bool = True) -> dict:
    optimizer, options, ddp, loop = CONFIGS[name]
    model = make_model()
    opt = optimizer(model.parameters(), lazy_hessian=LAZY, lr=0.05,
                    **{**PAPER_SETTINGS[optimizer], **options,
                       "sync_gradients": options.get("sync_gradients", False) and distributed})
    runner = DistributedDataParallel(model) if ddp and distributed else model
    norms = [loop(runner, opt, x, y, ddp and distributed, average) for _ in range(STEPS)]
    params = list(model.parameters())
    return {"params": [p.detach().clone() for p in params],
            "exp_avg": [opt.state[p]["exp_avg"].clone() for p in params],
            "exp_hessian_diag": [opt.state[p]["exp_hessian_diag"].clone() for p in params],
            "norms": norms}


def misuse(x, y) -> dict:
    """The messages of what average_gradients() refuses, and whether a second call changes
    anything."""
    model = DistributedDataParallel(make_model())
    opt = SASSHA(model.parameters(), **PAPER_SETTINGS[SASSHA])
    messages = {}
    for what in ("backward after", "closure after"):
        with model.no_sync():
            LOSS(model(x), y).backward(create_graph=True)
        opt.average_gradients()
        try:
            if what == "backward after":
                LOSS(model(x), y).backward()
                opt.step()
            else:
                opt.step(lambda: LOSS(model(x), y))
        except RuntimeError as exc:
            messages[what] = str(exc)
        if what == "closure after":
            opt.step()  # what the refusal says to do, with the gradients averaged
        opt.zero_grad()
    with model.no_sync():
        LOSS(model(x), y).backward(create_graph=True)
    opt.average_gradients()
    averaged = [p.grad.clone() for p in model.parameters()]
    opt.average_gradients()
    messages["second call changed the gradients"] = not all(
        torch.equal(p.grad, g) for p, g in zip(model.parameters(), averaged))
    return messages


def run_all(x, y) -> dict:
    results = {name: train(name, x, y, distributed=True) for name in CONFIGS}
    results["clipping-each-rank"] = train("sassha-ddp", x, y, distributed=True, average=False)
    results["misuse"] = misuse(x, y)
    return results


@pytest.fixture(scope="module")
def ranks():
    return rank_results(run_all)


@pytest.fixture(scope="module")
def single():
    x, y = whole_batch()
    return {name: train(name, x, y, distributed=False) for name in CONFIGS}


# Bounds on max |two ranks - one process| / max |one process|, per tensor, as in
# test_distributed.py (measured worst here: 1.5e-7, finite difference 7.4e-5); each rank
# clipping its own gradient is 2.1e-3 (D) to 4.7e-2 (exp_avg) away.
RELATIVE = {"sassha-ddp": 1e-5, "msassha-ddp": 1e-5, "sassha-bare-fd": 2e-3}


def close(got: dict, want: dict, rel: float, keys=KEYS) -> bool:
    return scaled_close([(a, b, None) for key in keys for a, b in zip(got[key], want[key])],
                        rel)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_two_ranks_clip_and_step_as_one_process_on_the_whole_batch(ranks, single, name):
    want = single[name]
    assert min(want["norms"]) > MAX_NORM  # every step was clipped
    for rank in ranks:
        assert close(rank[name], want, RELATIVE[name])
        torch.testing.assert_close(torch.tensor(rank[name]["norms"]),
                                   torch.tensor(want["norms"]), rtol=1e-5, atol=0)
    for key in KEYS:
        assert_identical(ranks[1][name][key], ranks[0][name][key], key)


def test_clipping_before_averaging_is_told_apart(ranks, single):
    """Negative control: without average_gradients() each rank clips its own create_graph
    gradient by its own factor; the ranks agree, with other numbers."""
    got = ranks[0]["clipping-each-rank"]
    assert_identical(ranks[1]["clipping-each-rank"]["params"], got["params"])
    assert not close(got, single["sassha-ddp"], RELATIVE["sassha-ddp"])
    assert ranks[0]["clipping-each-rank"]["norms"] != ranks[1]["clipping-each-rank"]["norms"]


def test_a_backward_or_closure_after_averaging_is_refused_and_a_second_call_is_a_no_op(ranks):
    messages = ranks[0]["misuse"]
    assert "accumulated gradients after average_gradients()" in messages["backward after"]
    assert "step(closure) after average_gradients()" in messages["closure after"]
    assert messages["second call changed the gradients"] is False


@pytest.mark.parametrize("name", list(CONFIGS))
def test_in_one_process_it_changes_nothing(single, name):
    x, y = whole_batch()
    assert_identical(train(name, x, y, distributed=False, average=False), single[name])


def test_the_language_model_variant_refuses_it():
    opt = LanguageModelSASSHA(make_model().parameters())
    with pytest.raises(RuntimeError, match="_sync_gradient"):
        opt.average_gradients()
