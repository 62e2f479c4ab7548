"""Every fused backend's ops against the reference backend (spec section 4), op by op."""
import math
from typing import List

import pytest
import torch

from sassha_fast.backends import reference, resolve

from backend_params import backend_device_params
from tensor_lists import STATE_TOLERANCE, STORED_TOLERANCE, assert_lists_close, clone

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
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
        t = torch.randn(shape, dtype=torch.float32) * scale
        out.append((t.abs() if positive else t).to(device=device, dtype=dtype))
    return out


def scalar(value: float, as_tensor: bool, device):
    return torch.tensor(value, dtype=torch.float32, device=device) if as_tensor else value


@pytest.mark.parametrize("shapes", SHAPE_SETS.values(), ids=SHAPE_SETS.keys())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weighted", [False, True])
def test_global_norm(backend, device, shapes, dtype, weighted):
    ts = tensors(shapes, dtype, device)
    ws = tensors(shapes, dtype, device) if weighted else None
    got = resolve(backend, device).global_norm(ts, ws)
    want = reference.global_norm([t.cpu() for t in ts], [w.cpu() for w in ws] if ws else None)
    assert got.dim() == 0 and got.dtype == torch.float32
    assert math.isclose(got.item(), want.item(), rel_tol=1e-5, abs_tol=1e-6)


@pytest.mark.parametrize("shapes", SHAPE_SETS.values(), ids=SHAPE_SETS.keys())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("tensor_scale", [False, True])
def test_perturb(backend, device, shapes, dtype, adaptive, tensor_scale):
    params, grads = tensors(shapes, dtype, device), tensors(shapes, dtype, device)
    want_p, want_g = clone(params), clone(grads)
    reference.perturb(want_p, want_g, 0.037, adaptive)
    resolve(backend, device).perturb(params, grads, scalar(0.037, tensor_scale, device), adaptive)
    assert_lists_close(grads, want_g, **STORED_TOLERANCE[dtype])
    assert_lists_close(params, want_p, **STORED_TOLERANCE[dtype])


def update_inputs(shapes, dtype, device):
    return dict(params=tensors(shapes, dtype, device), grads=tensors(shapes, dtype, device),
                exp_avgs=tensors(shapes, torch.float32, device, scale=0.1),
                exp_hessians=tensors(shapes, torch.float32, device, positive=True))


HYPER = dict(lr=0.05, weight_decay=1e-2, beta1=0.9, bias_correction1=1 - 0.9 ** 3,
             eps=1e-4)


@pytest.mark.parametrize("shapes", SHAPE_SETS.values(), ids=SHAPE_SETS.keys())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hessian_power", [0.5, 1.0, 0.7])
@pytest.mark.parametrize("perturbed", [False, True], ids=["plain", "leaves-perturbation"])
def test_sassha_update(backend, device, shapes, dtype, hessian_power, perturbed):
    inputs = update_inputs(shapes, dtype, device)
    perturbations = tensors(shapes, dtype, device, scale=0.01) if perturbed else None
    expected = {k: clone(v) for k, v in inputs.items()}
    hyper = dict(HYPER, hessian_power=hessian_power,
                 bias_correction2=(1 - 0.999 ** 3) ** hessian_power)
    reference.sassha_update(*expected.values(), perturbations, **hyper)
    resolve(backend, device).sassha_update(*inputs.values(), perturbations, **hyper)
    assert_lists_close(inputs["exp_avgs"], expected["exp_avgs"], **STATE_TOLERANCE)
    assert_lists_close(inputs["params"], expected["params"], **STORED_TOLERANCE[dtype])


@pytest.mark.parametrize("shapes", SHAPE_SETS.values(), ids=SHAPE_SETS.keys())
@pytest.mark.parametrize("dtype", DTYPES)
def test_hessian_ema(backend, device, shapes, dtype):
    exp_hessians = tensors(shapes, torch.float32, device, positive=True)
    estimates = tensors(shapes, dtype, device)
    expected = clone(exp_hessians)
    reference.hessian_ema(expected, estimates, 0.99)
    resolve(backend, device).hessian_ema(exp_hessians, estimates, 0.99)
    assert_lists_close(exp_hessians, expected, **STATE_TOLERANCE)


@pytest.mark.parametrize("shapes", SHAPE_SETS.values(), ids=SHAPE_SETS.keys())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tensor_factor", [False, True])
def test_msassha_update(backend, device, shapes, dtype, tensor_factor):
    inputs = update_inputs(shapes, dtype, device)
    expected = {k: clone(v) for k, v in inputs.items()}
    hyper = dict(HYPER, hessian_power=0.5, bias_correction2=(1 - 0.999 ** 3) ** 0.5)
    want_sq = reference.msassha_update(*expected.values(), norm_factor=0.3, **hyper)
    got_sq = resolve(backend, device).msassha_update(
        *inputs.values(), norm_factor=scalar(0.3, tensor_factor, device), **hyper)
    assert_lists_close(inputs["exp_avgs"], expected["exp_avgs"], **STATE_TOLERANCE)
    assert_lists_close(inputs["params"], expected["params"], **STORED_TOLERANCE[dtype])
    assert got_sq.dim() == 0
    assert math.isclose(got_sq.item(), want_sq.item(), rel_tol=1e-5, abs_tol=1e-6)


@pytest.mark.parametrize("shapes", SHAPE_SETS.values(), ids=SHAPE_SETS.keys())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tensor_alpha", [False, True])
def test_add_scaled(backend, device, shapes, dtype, tensor_alpha):
    params = tensors(shapes, dtype, device)
    momenta = tensors(shapes, torch.float32, device)
    expected = clone(params)
    reference.add_scaled(expected, momenta, -0.25)
    resolve(backend, device).add_scaled(params, momenta, scalar(-0.25, tensor_alpha, device))
    assert_lists_close(params, expected, **STORED_TOLERANCE[dtype])
