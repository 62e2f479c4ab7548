"""FSDP2 (``fully_shard``): two gloo processes, each holding half of every parameter as a
DTensor shard and fed half of the batch, match one process fed the whole batch, with the
finite-difference Hessian estimator (a double backward cannot run through FSDP2's
reduce-scatter) on every CPU backend, SASSHA and M-SASSHA, Hessian and non-Hessian steps."""
import pytest
import torch

from sassha_fast import MSASSHA, SASSHA
from gloo_ranks import rank_results
from tiny import LOSS, PAPER_SETTINGS, make_model, whole_batch

STEPS = 4
LAZY = 2  # steps 1 and 3 estimate the Hessian, 2 and 4 do not
BACKENDS = ("reference", "foreach", "cpu")
OPTIMIZERS = {"sassha": SASSHA, "msassha": MSASSHA}
# The shards' gradients are averaged by FSDP's reduce-scatter in another order than one
# process sums the whole batch, and the finite difference divides that round-off by its step
# (the same bound as the DDP finite-difference runs in test_distributed.py).
FD_TOLERANCE = dict(rtol=1e-2, atol=1e-3)


def train(optimizer: str, backend: str, x, y, shard: bool):
    model = make_model()
    if shard:
        from torch.distributed.fsdp import fully_shard
        for layer in model:
            if any(True for _ in layer.parameters()):
                fully_shard(layer)
        fully_shard(model)
    cls = OPTIMIZERS[optimizer]
    opt = cls(model.parameters(), lazy_hessian=LAZY, lr=0.05, backend=backend,
              hessian_estimator="finite_difference", **PAPER_SETTINGS[cls])
    for _ in range(STEPS):
        opt.step(lambda: LOSS(model(x), y))
    params = list(model.parameters())
    full = (lambda t: t.full_tensor()) if shard else (lambda t: t)
    return {"params": [full(p.detach()).clone() for p in params],
            "exp_avg": [full(opt.state[p]["exp_avg"]).clone() for p in params],
            "exp_hessian_diag": [full(opt.state[p]["exp_hessian_diag"]).clone()
                                 for p in params],
            "shard_shapes": [tuple(p.to_local().shape) if shard else None for p in params]}


def autograd_estimator_error(x, y) -> str:
    from torch.distributed.fsdp import fully_shard
    model = make_model()
    fully_shard(model)
    opt = SASSHA(model.parameters(), rho=0.05)
    try:
        opt.step(lambda: LOSS(model(x), y))
    except RuntimeError as exc:
        return str(exc)
    return ""


def run_all(x, y) -> dict:
    results = {(name, backend): train(name, backend, x, y, shard=True)
               for name in OPTIMIZERS for backend in BACKENDS}
    results["autograd_error"] = autograd_estimator_error(x, y)
    return results


@pytest.fixture(scope="module")
def ranks():
    return rank_results(run_all)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_fully_sharded_ranks_match_one_process_on_the_whole_batch(ranks, name, backend):
    x, y = whole_batch()
    single = train(name, backend, x, y, shard=False)
    for rank in ranks:
        got = rank[(name, backend)]
        for key in ("params", "exp_avg", "exp_hessian_diag"):
            for a, b in zip(got[key], single[key]):
                torch.testing.assert_close(a, b, **FD_TOLERANCE)
        # The parameters really were sharded: every rank held a strict part of the first layer.
        assert got["shard_shapes"][0][0] < single["params"][0].shape[0]


def test_the_ranks_agree_exactly(ranks):
    for key in ranks[0]:
        if key == "autograd_error":
            continue
        for a, b in zip(ranks[0][key]["params"], ranks[1][key]["params"]):
            assert torch.equal(a, b)


def test_the_default_estimator_says_to_use_finite_differences(ranks):
    for rank in ranks:
        assert "hessian_estimator='finite_difference'" in rank["autograd_error"]
