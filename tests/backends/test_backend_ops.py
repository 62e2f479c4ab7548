"""Every fused backend's ops against the reference backend (docs/algorithm.md section 6), op by op: every
dtype (float64 where the backend runs it), scalars given as numbers or 0-d tensors, and
iterations skipped through ``found_inf``."""
import inspect
import math
from typing import List

import pytest
import torch

from sassha_fast.backends import reference
from sassha_fast.backends.reference import compute_dtype

from backend_params import backend_device_params, ops_for
from tensor_lists import STORED_TOLERANCE, assert_lists_close, clone, state_tolerance

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
SHAPE_SETS = {
    "empty-list": [],
    "empty-tensor": [(0,), (3,)],
    "one-element": [(1,)],
    "odd-sizes": [(7,), (3, 5), (131,), (2, 3, 5, 7)],
    "large": [(100_003,)],
    "many": [(1 + (i * 37) % 301,) for i in range(60)] + [(5_000,)],
}

pytestmark = pytest.mark.parametrize("backend,device", backend_device_params())


def tensors(shapes, dtype, device, positive=False, scale=1.0) -> List[torch.Tensor]:
    out = []
    for shape in shapes:
        t = torch.randn(shape, dtype=torch.float64) * scale
        out.append((t.abs() if positive else t).to(device=device, dtype=dtype))
    return out


def scalar(value: float, as_tensor: bool, device, dtype=torch.float32):
    """A per-step scalar: the number, or a 0-d tensor of the parameters' compute dtype."""
    return torch.tensor(value, dtype=compute_dtype(dtype), device=device) if as_tensor else value


def close(got: torch.Tensor, want: torch.Tensor, dtype) -> bool:
    rel = 1e-12 if dtype == torch.float64 else 1e-5
    return math.isclose(got.item(), want.item(), rel_tol=rel, abs_tol=rel / 10)


@pytest.mark.parametrize("shapes", SHAPE_SETS.values(), ids=SHAPE_SETS.keys())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weighted", [False, True])
def test_global_norm(backend, device, shapes, dtype, weighted):
    ops = ops_for(backend, device, dtype)
    ts = tensors(shapes, dtype, device)
    ws = tensors(shapes, dtype, device) if weighted else None
    got = ops.global_norm(ts, ws)
    want = reference.global_norm([t.cpu() for t in ts], [w.cpu() for w in ws] if ws else None)
    assert got.dim() == 0 and got.dtype == (compute_dtype(dtype) if ts else torch.float32)
    assert close(got, want, dtype)


@pytest.mark.parametrize("shapes", SHAPE_SETS.values(), ids=SHAPE_SETS.keys())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("tensor_scale", [False, True])
def test_perturb(backend, device, shapes, dtype, adaptive, tensor_scale):
    ops = ops_for(backend, device, dtype)
    params, grads = tensors(shapes, dtype, device), tensors(shapes, dtype, device)
    want_p, want_g = clone(params), clone(grads)
    reference.perturb(want_p, want_g, 0.037, adaptive)
    ops.perturb(params, grads, scalar(0.037, tensor_scale, device, dtype), adaptive)
    assert_lists_close(grads, want_g, **STORED_TOLERANCE[dtype])
    assert_lists_close(params, want_p, **STORED_TOLERANCE[dtype])


def update_inputs(shapes, dtype, device):
    state = compute_dtype(dtype)
    return dict(params=tensors(shapes, dtype, device), grads=tensors(shapes, dtype, device),
                exp_avgs=tensors(shapes, state, device, scale=0.1),
                exp_hessians=tensors(shapes, state, device, positive=True))


HYPER = dict(lr=0.05, weight_decay=1e-2, beta1=0.9, bias_correction1=1 - 0.9 ** 3,
             eps=1e-4)


@pytest.mark.parametrize("shapes", SHAPE_SETS.values(), ids=SHAPE_SETS.keys())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hessian_power", [0.5, 1.0, 0.7])
@pytest.mark.parametrize("perturbed", [False, True], ids=["plain", "leaves-perturbation"])
def test_sassha_update(backend, device, shapes, dtype, hessian_power, perturbed):
    ops = ops_for(backend, device, dtype)
    inputs = update_inputs(shapes, dtype, device)
    perturbations = tensors(shapes, dtype, device, scale=0.01) if perturbed else None
    expected = {k: clone(v) for k, v in inputs.items()}
    hyper = dict(HYPER, hessian_power=hessian_power,
                 bias_correction2=(1 - 0.999 ** 3) ** hessian_power)
    reference.sassha_update(*expected.values(), perturbations, **hyper)
    ops.sassha_update(*inputs.values(), perturbations, **hyper)
    assert_lists_close(inputs["exp_avgs"], expected["exp_avgs"], **state_tolerance(dtype))
    assert_lists_close(inputs["params"], expected["params"], **STORED_TOLERANCE[dtype])


@pytest.mark.parametrize("shapes", SHAPE_SETS.values(), ids=SHAPE_SETS.keys())
@pytest.mark.parametrize("dtype", DTYPES)
def test_hessian_ema(backend, device, shapes, dtype):
    ops = ops_for(backend, device, dtype)
    exp_hessians = tensors(shapes, compute_dtype(dtype), device, positive=True)
    estimates = tensors(shapes, dtype, device)
    expected = clone(exp_hessians)
    reference.hessian_ema(expected, estimates, 0.99)
    ops.hessian_ema(exp_hessians, estimates, 0.99)
    assert_lists_close(exp_hessians, expected, **state_tolerance(dtype))


@pytest.mark.parametrize("shapes", SHAPE_SETS.values(), ids=SHAPE_SETS.keys())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tensor_factor", [False, True])
def test_msassha_update(backend, device, shapes, dtype, tensor_factor):
    ops = ops_for(backend, device, dtype)
    inputs = update_inputs(shapes, dtype, device)
    expected = {k: clone(v) for k, v in inputs.items()}
    hyper = dict(HYPER, hessian_power=0.5, bias_correction2=(1 - 0.999 ** 3) ** 0.5)
    want_sq = reference.msassha_update(*expected.values(), norm_factor=0.3, **hyper)
    got_sq = ops.msassha_update(
        *inputs.values(), norm_factor=scalar(0.3, tensor_factor, device, dtype), **hyper)
    assert_lists_close(inputs["exp_avgs"], expected["exp_avgs"], **state_tolerance(dtype))
    assert_lists_close(inputs["params"], expected["params"], **STORED_TOLERANCE[dtype])
    assert got_sq.dim() == 0
    assert got_sq.dtype == (compute_dtype(dtype) if shapes else torch.float32)
    assert close(got_sq, want_sq, dtype)


@pytest.mark.parametrize("shapes", SHAPE_SETS.values(), ids=SHAPE_SETS.keys())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tensor_alpha", [False, True])
def test_add_scaled(backend, device, shapes, dtype, tensor_alpha):
    ops = ops_for(backend, device, dtype)
    params = tensors(shapes, dtype, device)
    momenta = tensors(shapes, compute_dtype(dtype), device)
    expected = clone(params)
    reference.add_scaled(expected, momenta, -0.25)
    ops.add_scaled(params, momenta, scalar(-0.25, tensor_alpha, device, dtype))
    assert_lists_close(params, expected, **STORED_TOLERANCE[dtype])


@pytest.mark.parametrize("shapes", [SHAPE_SETS["odd-sizes"], SHAPE_SETS["many"]],
                         ids=["odd-sizes", "many"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_updates_take_every_step_scalar_as_a_tensor(backend, device, shapes, dtype):
    """lr and both bias corrections (and norm_factor) as 0-d tensors give the step that the
    same numbers give."""
    ops = ops_for(backend, device, dtype)
    inputs = update_inputs(shapes, dtype, device)
    perturbations = tensors(shapes, dtype, device, scale=0.01)
    numbers = dict(HYPER, hessian_power=0.5, bias_correction2=0.25)
    as_tensors = dict(numbers, **{k: scalar(numbers[k], True, device, dtype)
                                  for k in ("lr", "bias_correction1", "bias_correction2")})
    expected = {k: clone(v) for k, v in inputs.items()}
    ops.sassha_update(*expected.values(), perturbations, **numbers)
    want_sq = ops.msassha_update(*expected.values(), norm_factor=0.3, **numbers)
    got = {k: clone(v) for k, v in inputs.items()}
    ops.sassha_update(*got.values(), perturbations, **as_tensors)
    got_sq = ops.msassha_update(*got.values(), norm_factor=scalar(0.3, True, device, dtype),
                                **as_tensors)
    assert close(got_sq, want_sq, dtype)
    assert_lists_close(got["exp_avgs"], expected["exp_avgs"], **state_tolerance(dtype))
    assert_lists_close(got["params"], expected["params"], **STORED_TOLERANCE[dtype])


def found_inf_tensor(flag: str, device):
    return torch.tensor({"zero": 0.0, "one": 1.0, "nan": float("nan")}[flag], device=device)


def assert_lists_equal(actual, expected):
    assert len(actual) == len(expected)
    assert all(a.dtype == e.dtype and torch.equal(a.cpu(), e.cpu())
               for a, e in zip(actual, expected))


def run_flagged_ops(ops, inputs, perturbations, found_inf):
    """Every op taking found_inf, on copies of ``inputs``; what each wrote or returned."""
    hyper = dict(HYPER, hessian_power=0.5, bias_correction2=0.25, found_inf=found_inf)
    out = {}
    p, e = clone(inputs["params"]), clone(inputs["grads"])
    ops.perturb(p, e, 0.037, True, found_inf=found_inf)
    out["perturb"] = (p, e)
    for leave in (False, True):
        p, m, d = clone(inputs["params"]), clone(inputs["exp_avgs"]), clone(inputs["exp_hessians"])
        ops.sassha_update(p, inputs["grads"], m, d, perturbations if leave else None, **hyper)
        out[f"sassha_update-{leave}"] = (p, m, d)
    d = clone(inputs["exp_hessians"])
    ops.hessian_ema(d, inputs["grads"], 0.99, found_inf=found_inf)
    out["hessian_ema"] = (d,)
    p, m, d = clone(inputs["params"]), clone(inputs["exp_avgs"]), clone(inputs["exp_hessians"])
    sq = ops.msassha_update(p, inputs["grads"], m, d, norm_factor=0.3, **hyper)
    out["msassha_update"] = (p, m, d, sq)
    return out


@pytest.mark.parametrize("shapes", SHAPE_SETS.values(), ids=SHAPE_SETS.keys())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("flag", ["zero", "one", "nan"])
def test_found_inf(backend, device, shapes, dtype, flag):
    """found_inf zero: the step runs, as with found_inf=None. Nonzero (NaN included): each
    op writes only what the contract says (exactly), in the reference as in the backend."""
    ops = ops_for(backend, device, dtype)
    if "found_inf" not in inspect.signature(ops.perturb).parameters:
        pytest.skip(f"backend {backend!r} predates the found_inf contract (OP_CONTRACT 2)")
    inputs = update_inputs(shapes, dtype, device)
    perturbations = tensors(shapes, dtype, device, scale=0.01)
    flagged = found_inf_tensor(flag, device)
    got = run_flagged_ops(ops, inputs, perturbations, flagged)
    if flag == "zero":
        expected = run_flagged_ops(reference, inputs, perturbations, None)
    else:
        expected = skipped_iteration(inputs, perturbations)
        assert_same_results(run_flagged_ops(reference, inputs, perturbations, flagged),
                            expected, exact=True, dtype=dtype)
    assert_same_results(got, expected, exact=flag != "zero", dtype=dtype)


def skipped_iteration(inputs, perturbations):
    """What a skipped iteration leaves: no perturbation (e = 0), no state moved, p moved
    only off the perturbed point by sassha_update given perturbations."""
    p, m, d = inputs["params"], inputs["exp_avgs"], inputs["exp_hessians"]
    left = [(x.to(m[i].dtype) - e.to(m[i].dtype)).to(x.dtype)
            for i, (x, e) in enumerate(zip(p, perturbations))]
    squares = sum((t.double().square().sum() for t in m), torch.zeros((), dtype=torch.float64))
    return {"perturb": (p, [torch.zeros_like(g) for g in inputs["grads"]]),
            "sassha_update-False": (p, m, d), "sassha_update-True": (left, m, d),
            "hessian_ema": (d,), "msassha_update": (p, m, d, squares)}


def assert_same_results(got, expected, exact, dtype):
    for key, want in expected.items():
        for a, b in zip(got[key], want):
            if not isinstance(a, list):  # msassha_update's sum of squares
                assert close(a, b.to(a.dtype), dtype), key
            elif exact:
                assert_lists_equal(a, b)
            elif a:  # parameters, perturbations or state: each rounded to its own dtype
                assert_lists_close(a, b, **STORED_TOLERANCE[a[0].dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_sum_of_squares_beyond_fp32_is_inf_not_an_error(backend, device, dtype):
    """Finite values whose norm overflows fp32 (a gradient of 3e38s): inf, as the
    reference's fp32 sum gives, so that the inf/NaN check skips the step."""
    ops = ops_for(backend, device, dtype)
    huge = [torch.full((9,), 3e38, dtype=dtype, device=device)]
    assert ops.global_norm(huge).item() == reference.global_norm(huge).item() == float("inf")
    state = [torch.full((9,), 3e38, device=device), torch.ones(9, device=device)]
    squares = ops.msassha_update(clone(huge), huge, clone(state[:1]), state[1:],
                                 norm_factor=0.0, **dict(HYPER, beta1=1.0, hessian_power=1.0,
                                                         bias_correction2=1.0))
    assert squares.item() == float("inf")
