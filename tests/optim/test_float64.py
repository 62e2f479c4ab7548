"""float64 parameters through the frontend: accepted, float64 state (also after
load_state_dict), Rademacher draws in the parameter's dtype, the backend each device gets
for them, and parameters of several dtypes in one optimizer."""
import pytest
import torch
from torch import nn

from sassha_fast import MSASSHA, SASSHA, available_backends
from sassha_fast.functional import resolve
from sassha_fast.hessian.hutchinson import RademacherSource

from tiny import PAPER_SETTINGS


def quadratic(params):
    return lambda: sum((p.double() - 1.0).square().sum() * (i + 1) for i, p in enumerate(params))


def test_float64_parameters_are_accepted_and_other_dtypes_still_refused():
    SASSHA([nn.Parameter(torch.zeros(3, dtype=torch.float64))])
    with pytest.raises(ValueError, match="supports float32, float64, bfloat16 and float16 "
                       "parameters, got torch.float8_e4m3fn"):
        SASSHA([nn.Parameter(torch.zeros(3).to(torch.float8_e4m3fn))])
    with pytest.raises(ValueError, match="does not support complex parameters"):
        MSASSHA([nn.Parameter(torch.zeros(3, dtype=torch.complex128))])


def test_rademacher_draws_are_in_the_parameters_dtype():
    zs = RademacherSource(0).draw([torch.zeros(5, dtype=torch.float64), torch.zeros(5)])
    assert [z.dtype for z in zs] == [torch.float64, torch.float32]
    assert torch.equal(zs[0].abs(), torch.ones(5, dtype=torch.float64))


@pytest.mark.parametrize("optimizer", [SASSHA, MSASSHA])
def test_state_is_float64_and_stays_float64_through_a_checkpoint(optimizer):
    p64 = nn.Parameter(torch.randn(4, dtype=torch.float64))
    p32 = nn.Parameter(torch.randn(3))
    opt = optimizer([p64, p32], lr=0.1, lazy_hessian=1, **PAPER_SETTINGS[optimizer])
    opt.step(quadratic([p64, p32]))
    for p, dtype in ((p64, torch.float64), (p32, torch.float32)):
        assert opt.state[p]["exp_avg"].dtype == opt.state[p]["exp_hessian_diag"].dtype == dtype
    saved = opt.state_dict()
    fresh = optimizer([p64, p32], lr=0.1, lazy_hessian=1, **PAPER_SETTINGS[optimizer])
    fresh.load_state_dict(saved)
    for p in (p64, p32):
        for key in ("exp_avg", "exp_hessian_diag"):
            assert fresh.state[p][key].dtype == p.dtype
            assert torch.equal(fresh.state[p][key], opt.state[p][key])
    # A float32 model's checkpoint loaded into float64 parameters: the state widens.
    wide = nn.Parameter(p32.detach().double())
    widened = optimizer([p64, wide], lr=0.1, lazy_hessian=1, **PAPER_SETTINGS[optimizer])
    widened.load_state_dict(saved)
    assert widened.state[wide]["exp_avg"].dtype == torch.float64
    assert torch.equal(widened.state[wide]["exp_avg"], opt.state[p32]["exp_avg"].double())


def test_backend_choice_for_float64():
    cpu = torch.device("cpu")
    expected = "cpu" if available_backends()["cpu"].available else "foreach"
    assert resolve("auto", cpu, torch.float64).name == expected
    # On a CUDA device "auto" takes no backend without float64 kernels (resolution only:
    # nothing runs, so no GPU is needed).
    assert resolve("auto", torch.device("cuda"), torch.float64).name == "foreach"
    if available_backends()["triton"].available:
        with pytest.raises(RuntimeError, match=r"'triton' does not run with torch.float64 "
                           r"parameters; use backend='auto' or one of .*'foreach'"):
            resolve("triton", cpu, torch.float64)


@pytest.mark.parametrize("optimizer", [SASSHA, MSASSHA])
@pytest.mark.parametrize("backend", [b for b in ("foreach", "cpu")
                                     if available_backends()[b].available])
def test_float64_and_float32_parameters_in_one_optimizer_follow_the_reference(optimizer,
                                                                              backend):
    def run(backend_name):
        torch.manual_seed(0)
        params = [nn.Parameter(torch.randn(7, dtype=torch.float64)),
                  nn.Parameter(torch.randn(2, 3)),
                  nn.Parameter(torch.randn(300, dtype=torch.float64))]
        opt = optimizer(params, lr=0.05, weight_decay=1e-2, lazy_hessian=2,
                        backend=backend_name, **PAPER_SETTINGS[optimizer])
        for _ in range(5):  # Hessian steps 1, 3, 5; the others reuse D
            opt.step(quadratic(params))
        return params, opt

    got, opt = run(backend)
    want, _ = run("reference")
    assert opt.backends_in_use == {"cpu": backend}
    for p, q in zip(got, want):
        # Five steps of 1-ulp differences, amplified by D^-1/2 (float32 would miss by 1e-7).
        tolerance = dict(rtol=1e-9, atol=1e-11) if p.dtype == torch.float64 else \
            dict(rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(p, q, **tolerance)
