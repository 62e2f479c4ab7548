"""sassha_fast.functional: each op, called with ``backend=``, is that backend's op; "auto"
resolves per device and dtype; bad names are refused with the valid ones listed."""
import pytest
import torch

from sassha_fast import functional

from backend_params import backend_device_params


def lists(n=3, dtype=torch.float32, positive=False):
    g = torch.Generator().manual_seed(n)
    out = [torch.randn(2 * i + 1, generator=g, dtype=torch.float64).to(dtype) for i in range(n)]
    return [t.abs() for t in out] if positive else out


def clone(ts):
    return [t.clone() for t in ts]


STEP = dict(lr=0.1, weight_decay=1e-2, beta1=0.9, bias_correction1=0.19,
            bias_correction2=0.3, hessian_power=0.5, eps=1e-4)


def run_all(backend):
    """Every op once on fresh copies of the same lists; what each wrote or returned."""
    params, grads, hessians = lists(), lists(), lists()
    exp_avgs, exp_hess = lists(), lists(positive=True)
    out = {"norm": functional.global_norm(grads, params, backend=backend)}
    p, e = clone(params), clone(grads)
    functional.perturb(p, e, 0.05, True, backend=backend)
    out["perturb"] = p + e
    p, m, d = clone(params), clone(exp_avgs), clone(exp_hess)
    functional.sassha_update(p, grads, m, d, clone(grads), **STEP, backend=backend)
    out["sassha_update"] = p + m
    d = clone(exp_hess)
    functional.hessian_ema(d, hessians, 0.999, backend=backend)
    out["hessian_ema"] = d
    p, m = clone(params), clone(exp_avgs)
    out["msassha_sum"] = functional.msassha_update(p, grads, m, clone(exp_hess), norm_factor=0.2,
                                                   **STEP, backend=backend)
    out["msassha_update"] = p + m
    p = clone(params)
    functional.add_scaled(p, grads, -0.5, backend=backend)
    out["add_scaled"] = p
    return out


@pytest.mark.parametrize("backend,device", backend_device_params(device_types=("cpu",)))
def test_each_op_is_the_backends_and_agrees_with_the_reference(backend, device):
    got, want = run_all(backend), run_all("reference")
    for name in want:
        for a, b in zip(got[name] if isinstance(got[name], list) else [got[name]],
                        want[name] if isinstance(want[name], list) else [want[name]]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_the_named_backend_resolves_for_the_first_tensor(monkeypatch):
    asked = []
    real = functional.resolve
    monkeypatch.setattr(functional, "resolve", lambda *a: asked.append(a) or real(*a))
    functional.add_scaled(lists(dtype=torch.bfloat16), lists(), 1.0, backend="foreach")
    assert asked == [("foreach", torch.device("cpu"), torch.bfloat16)]


def test_auto_resolves_per_device_and_dtype():
    cpu = torch.device("cpu")
    expected = "cpu" if functional.backends.unavailable_reason("cpu") is None else "foreach"
    assert functional.resolve("auto", cpu, torch.float32).name == expected
    assert functional.resolve("reference", cpu, torch.float64).name == "reference"


def test_an_empty_list_is_no_work():
    assert functional.global_norm([], backend="auto").item() == 0.0
    functional.add_scaled([], [], 1.0, backend="reference")


def test_a_bad_backend_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="Invalid backend: 'fast'.*'reference'"):
        functional.global_norm(lists(), backend="fast")
