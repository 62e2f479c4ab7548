"""FSDP2 (``fully_shard``): two gloo processes, each holding half of every parameter as a
DTensor shard and fed half of the batch, match one process fed the whole batch, with the
finite-difference Hessian estimator (a double backward cannot run through FSDP2's
reduce-scatter) on every CPU backend, SASSHA and M-SASSHA, Hessian and non-Hessian steps.

What is compared is what a rank holds: each rank's local shards of the parameters and the
state, against the matching slice of the single-process run (the shards must tile every
tensor exactly once), and what every rank keeps whole (counters, norm factor, the
Rademacher generator), across the ranks, exactly. Nothing is gathered by FSDP before the
comparison (a ``full_tensor()`` is the same all-gather on both ranks)."""
import pytest
import torch

from sassha_fast import MSASSHA, SASSHA
from gloo_ranks import rank_results
from scaled_tolerance import assert_scaled_close, scaled_close
from test_distributed import FD_EPS, FD_RELATIVE
from tiny import LOSS, PAPER_SETTINGS, assert_identical, make_model, whole_batch

STEPS = 4
LAZY = 2  # steps 1 and 3 estimate the Hessian, 2 and 4 do not
BACKENDS = ("reference", "foreach", "cpu")
OPTIMIZERS = {"sassha": SASSHA, "msassha": MSASSHA}
KEYS = ("params", "exp_avg", "exp_hessian_diag")
# The shards' gradients are averaged by FSDP's reduce-scatter in another order than one
# process sums the whole batch, and the finite difference divides that round-off by its
# step: the step (FD_EPS, larger than the default for a tighter comparison) and the bounds
# relative to each tensor's largest entry (FD_RELATIVE, per key) are the DDP tests'.


def train(optimizer: str, backend: str, x, y, shard: bool, seed: int = 0):
    model = make_model()
    if shard:
        from torch.distributed.fsdp import fully_shard
        for layer in model:
            if any(True for _ in layer.parameters()):
                fully_shard(layer)
        fully_shard(model)
    cls = OPTIMIZERS[optimizer]
    opt = cls(model.parameters(), lazy_hessian=LAZY, lr=0.05, backend=backend, seed=seed,
              hessian_estimator="finite_difference", fd_eps=FD_EPS, **PAPER_SETTINGS[cls])
    for _ in range(STEPS):
        opt.step(lambda: LOSS(model(x), y))
    params = list(model.parameters())
    tensors = {"params": [p.detach() for p in params],
               "exp_avg": [opt.state[p]["exp_avg"] for p in params],
               "exp_hessian_diag": [opt.state[p]["exp_hessian_diag"] for p in params]}
    if not shard:
        return {key: [t.clone() for t in ts] for key, ts in tensors.items()}
    return {key: [(t.to_local().clone(), where(t)) for t in ts] for key, ts in tensors.items()} \
        | {"whole": kept_whole(opt)}


def where(t) -> tuple:
    """(start, stop) per dimension: the part of the whole tensor that this rank's shard of
    DTensor ``t`` holds (plain ints: a result file is loaded with weights_only)."""
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
    shape, offset = compute_local_shape_and_global_offset(t.shape, t.device_mesh,
                                                          t.placements)
    return tuple((int(o), int(o) + int(n)) for o, n in zip(offset, shape))


def part(whole, bounds):
    return whole[tuple(slice(start, stop) for start, stop in bounds)]


def kept_whole(opt) -> dict:
    """Everything of the optimizer that is not sharded: each rank has its own copy."""
    def plain(value):
        from torch.distributed.tensor import DTensor
        return not isinstance(value, DTensor)
    return {"groups": [{k: v for k, v in g.items() if k != "params" and plain(v)}
                       for g in opt.param_groups],
            "counters": [{k: v for k, v in opt.state[p].items() if plain(v)}
                         for g in opt.param_groups for p in g["params"]],
            "rademacher": opt._rademacher.state_dict(),
            "skipped_steps": opt.skipped_steps}


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


@pytest.fixture(scope="module")
def single():
    """The single-process runs on the whole batch, and (a deliberately wrong estimate) the
    same with another seed: other Rademacher draws."""
    x, y = whole_batch()
    return {(name, backend, seed): train(name, backend, x, y, shard=False, seed=seed)
            for name in OPTIMIZERS for backend in BACKENDS for seed in (0, 1)}


def shards_against(rank_result, whole_results, key):
    """(shard, the matching slice of the whole tensor, the whole tensor's largest entry)."""
    for (local, bounds), whole in zip(rank_result[key], whole_results[key]):
        yield local, part(whole, bounds), float(whole.abs().max())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_each_rank_s_shards_match_one_process_on_the_whole_batch(ranks, single, name,
                                                                  backend):
    want = single[(name, backend, 0)]
    for key in KEYS:
        tiled = [torch.zeros(t.shape, dtype=torch.int64) for t in want[key]]
        for rank in ranks:
            for i, (local, expected, scale) in enumerate(
                    shards_against(rank[(name, backend)], want, key)):
                assert_scaled_close(local, expected, FD_RELATIVE[key], scale)
                part(tiled[i], rank[(name, backend)][key][i][1]).add_(1)
        assert all(bool((count == 1).all()) for count in tiled), key
    # The parameters really were sharded: every rank held a strict part of the first layer.
    for rank in ranks:
        local, _ = rank[(name, backend)]["params"][0]
        assert local.shape[0] < want["params"][0].shape[0]


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_the_tolerance_rejects_a_zeroed_hessian_and_a_wrong_estimate(ranks, single, name):
    """Negative controls: had rank 0 ended with an all-zero D, or with the D (or the
    parameters) of other Rademacher draws, the comparison above would fail."""
    rank = ranks[0][(name, "reference")]
    right, wrong = single[(name, "reference", 0)], single[(name, "reference", 1)]
    zeroed = {"exp_hessian_diag": [torch.zeros_like(t) for t in right["exp_hessian_diag"]]}
    for key, replacement in (("exp_hessian_diag", zeroed), ("exp_hessian_diag", wrong),
                             ("params", wrong)):
        triples = [(part(instead, bounds), part(whole, bounds), float(whole.abs().max()))
                   for (_, bounds), whole, instead
                   in zip(rank[key], right[key], replacement[key])]
        assert not scaled_close(triples, FD_RELATIVE[key]), key


def test_what_every_rank_keeps_whole_is_identical_across_ranks(ranks):
    """Counters, M-SASSHA's norm factor (a sum over every rank's shards) and the Rademacher
    generator (each rank draws whole vectors and keeps its shard): one rank computing them
    from its own shards only would differ here."""
    for key in ranks[0]:
        if key == "autograd_error":
            continue
        assert_identical(ranks[1][key]["whole"], ranks[0][key]["whole"], str(key))


def test_the_default_estimator_says_to_use_finite_differences(ranks):
    for rank in ranks:
        assert "hessian_estimator='finite_difference'" in rank["autograd_error"]
