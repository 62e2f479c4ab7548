"""The update ops' ``wrote_nonfinite`` flag on every backend, against the reference and a
hand expectation: set when a value an update stores (a parameter in its own dtype, a
moment, D) is inf or NaN, found by the fused kernels in the pass that writes it; not set
by a finite update, by a skipped one, or by a value at the edge of its dtype's range that
rounds to a finite one; never cleared."""
import pytest
import torch

from sassha_fast.backends import reference
from sassha_fast.backends.reference import compute_dtype

from backend_params import backend_device_params, ops_for
from tensor_lists import clone

pytestmark = pytest.mark.parametrize("backend,device", backend_device_params())

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
# Odd sizes, an empty tensor, and one long enough for the kernels' vector body and tail.
SHAPES = [(7,), (0,), (3, 5), (1,), (2049,)]
# (tensor, element) of the poisoned value: a scalar tail, a vector body, the first element.
PLACES = {"tail": (4, 2048), "body": (4, 1000), "first": (0, 0)}
HYPER = dict(lr=0.05, weight_decay=1e-2, beta1=0.9, bias_correction1=1 - 0.9 ** 3,
             bias_correction2=0.25, hessian_power=0.5, eps=1e-4)


def inputs(dtype, device):
    state = compute_dtype(dtype)

    def make(dtype_, scale=1.0, positive=False):
        out = [torch.randn(s, dtype=torch.float64) * scale for s in SHAPES]
        return [(t.abs() if positive else t).to(device=device, dtype=dtype_) for t in out]

    return dict(params=make(dtype), grads=make(dtype), exp_avgs=make(state, 0.1),
                exp_hessians=make(state, positive=True), hessians=make(dtype),
                perturbations=make(dtype, 0.01))


def flags_of_updates(ops, values, device, found_inf=None, preset=0.0, **changes):
    """Each update op's flag (a float) on copies of ``values``, given a flag set to
    ``preset`` beforehand."""
    hyper = dict(HYPER, **changes)
    skip = {} if found_inf is None else {"found_inf": torch.tensor(found_inf, device=device)}
    flags = {}

    def flag():
        return torch.tensor(preset, dtype=torch.float32, device=device)

    for leave in (False, True):
        f = flag()
        ops.sassha_update(clone(values["params"]), values["grads"], clone(values["exp_avgs"]),
                          values["exp_hessians"],
                          values["perturbations"] if leave else None, **hyper, **skip,
                          wrote_nonfinite=f)
        flags[f"sassha_update-{leave}"] = f.item()
    f = flag()
    ops.msassha_update(clone(values["params"]), values["grads"], clone(values["exp_avgs"]),
                       values["exp_hessians"], norm_factor=0.3, **hyper, **skip,
                       wrote_nonfinite=f)
    flags["msassha_update"] = f.item()
    f = flag()
    ops.hessian_ema(clone(values["exp_hessians"]), values["hessians"], 0.99, **skip,
                    wrote_nonfinite=f)
    flags["hessian_ema"] = f.item()
    return flags


def both(ops, values, device, **kwargs):
    """The backend's flags, after checking that the reference's are the same."""
    got = flags_of_updates(ops, values, device, **kwargs)
    assert got == flags_of_updates(reference, values, device, **kwargs)
    return got


@pytest.mark.parametrize("dtype", DTYPES)
def test_finite_updates_leave_the_flag_alone(backend, device, dtype):
    ops = ops_for(backend, device, dtype)
    values = inputs(dtype, device)
    assert set(both(ops, values, device).values()) == {0.0}
    assert set(both(ops, values, device, preset=1.0).values()) == {1.0}  # never cleared


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("place", PLACES.values(), ids=PLACES.keys())
@pytest.mark.parametrize("poison", ["exp_avgs-inf", "exp_avgs-nan", "exp_hessians-nan",
                                    "hessians-inf", "lr-inf"])
def test_a_nonfinite_input_sets_the_flag_of_the_updates_that_store_it(backend, device, dtype,
                                                                        place, poison):
    ops = ops_for(backend, device, dtype)
    values = inputs(dtype, device)
    what, value = poison.split("-")
    changes = {}
    if what == "lr":
        changes["lr"] = float(value)
    else:
        tensor, element = place
        values[what][tensor].view(-1)[element] = float(value)
    flags = both(ops, values, device, **changes)
    # The Hessian estimate reaches D only; D and lr reach p and m; m reaches p and m.
    expected_updates = 0.0 if what == "hessians" else 1.0
    assert flags == {"sassha_update-False": expected_updates,
                     "sassha_update-True": expected_updates,
                     "msassha_update": expected_updates,
                     "hessian_ema": 1.0 if what in ("hessians", "exp_hessians") else 0.0}
    # A skipped step stores none of it.
    assert set(both(ops, values, device, found_inf=1.0, **changes).values()) == {0.0}


def edge_update(dtype, device, overflows: bool):
    """A step that lands on the edge of the parameters' dtype: p = -largest, g chosen so
    that p - g (computed exactly: lr = bias corrections = D = 1, eps = weight decay = beta1
    = 0) is the midpoint between -largest and the next step, which rounds to -inf, or just
    short of it, which rounds back to -largest."""
    info = torch.finfo(dtype)
    if dtype in (torch.float32, torch.float64):
        g = info.max if overflows else 1.0
    else:
        half_step = 2.0 ** torch.tensor(info.max).log2().floor().item() * info.eps / 2
        g = half_step if overflows else half_step / 2
    state = compute_dtype(dtype)
    values = dict(params=[torch.full((9,), -info.max, dtype=dtype, device=device)],
                  grads=[torch.full((9,), g, dtype=dtype, device=device)],
                  exp_avgs=[torch.zeros(9, dtype=state, device=device)],
                  exp_hessians=[torch.ones(9, dtype=state, device=device)],
                  hessians=[torch.ones(9, dtype=dtype, device=device)],
                  perturbations=[torch.zeros(9, dtype=dtype, device=device)])
    hyper = dict(lr=1.0, weight_decay=0.0, beta1=0.0, bias_correction1=1.0,
                 bias_correction2=1.0, hessian_power=1.0, eps=0.0)
    return values, hyper


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("overflows", [True, False], ids=["overflows", "stays-finite"])
def test_a_step_that_overflows_the_parameters_dtype_sets_the_flag(backend, device, dtype,
                                                                  overflows):
    """The flag judges the value as stored: in float16 and bfloat16 the fp32 result is
    finite, the stored one is not (negative control: half as far, it rounds back)."""
    ops = ops_for(backend, device, dtype)
    values, hyper = edge_update(dtype, device, overflows)
    p = clone(values["params"])
    flag = torch.zeros((), dtype=torch.float32, device=device)
    ops.sassha_update(p, values["grads"], clone(values["exp_avgs"]), values["exp_hessians"],
                      None, **hyper, wrote_nonfinite=flag)
    assert torch.isfinite(p[0]).all().item() is not overflows  # the stored value decides
    assert flag.item() == float(overflows)
    assert flags_of_updates(ops, values, device, **hyper) == \
        flags_of_updates(reference, values, device, **hyper)


def test_a_flag_that_is_not_a_one_element_fp32_tensor_is_refused(backend, device):
    """Refused by name, and before the op writes anything."""
    ops = ops_for(backend, device, torch.float32)
    values = inputs(torch.float32, device)
    for bad in (torch.zeros(2, device=device), torch.zeros((), dtype=torch.float64,
                                                           device=device)):
        exp_hessians = clone(values["exp_hessians"])
        with pytest.raises((RuntimeError, ValueError), match="wrote_nonfinite"):
            ops.hessian_ema(exp_hessians, values["hessians"], 0.99, wrote_nonfinite=bad)
        # Refused before anything was written.
        assert all(torch.equal(a, b) for a, b in zip(exp_hessians, values["exp_hessians"]))
