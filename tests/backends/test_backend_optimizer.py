"""Whole optimizers on every fused backend against the reference backend: several parameter
groups, a frozen parameter, a parameter without gradient, Hessian and non-Hessian steps,
low-precision and float64 parameters (docs/algorithm.md section 6: within 1e-4 relative after 100 steps
in fp32; float64 runs compute in double and stay within 1e-9)."""
import pytest
import torch
from torch import nn

from sassha_fast import MSASSHA, SASSHA
from sassha_fast.backends import load_module

from backend_params import backend_device_params
from scaled_tolerance import assert_scaled_close, scaled_close
from tiny import PAPER_SETTINGS

STEPS = 100
FINAL_TOLERANCE = {
    torch.float32: dict(rtol=1e-4, atol=1e-5),
    # Low-precision weights may round a step apart; the fp32 state keeps them close.
    torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
    torch.float16: dict(rtol=5e-3, atol=5e-3),
    torch.float64: dict(rtol=1e-9, atol=1e-11),
}
# The state is fp32 whatever the parameters: its entries are bounded relative to the largest
# entry of each tensor (D's entries are all below 3e-3 here, under any fixed atol above).
LOW_PRECISION_STATE_RELATIVE = {torch.bfloat16: 2e-2, torch.float16: 5e-3}
FIRST_STEP_TOLERANCE = {torch.float32: dict(rtol=1e-5, atol=1e-6),
                        torch.float64: dict(rtol=1e-12, atol=1e-14)}


class TwoBranchNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(6, 9)
        self.head = nn.Linear(9, 3)
        self.frozen = nn.Linear(6, 9)
        self.frozen.requires_grad_(False)
        self.unused = nn.Linear(4, 4)  # in the optimizer, never receives a gradient

    def forward(self, x):
        return self.head(torch.tanh(self.body(x) + 0.1 * self.frozen(x)))


def make_run(optimizer, backend, device, dtype):
    torch.manual_seed(3)
    model = TwoBranchNet().to(device=device, dtype=dtype)
    groups = [
        {"params": [model.body.weight, model.frozen.weight, model.unused.weight]},
        {"params": [model.body.bias, model.head.weight, model.head.bias, model.frozen.bias,
                    model.unused.bias], "lr": 0.02, "weight_decay": 0.0, "rho": 0.02},
    ]
    opt = optimizer(groups, lr=0.05, weight_decay=1e-3, lazy_hessian=3, backend=backend,
                    **PAPER_SETTINGS[optimizer])
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(32, 6, generator=generator).to(device=device, dtype=dtype)
    y = torch.randint(0, 3, (32,), generator=generator).to(device)

    loss_dtype = torch.promote_types(dtype, torch.float32)  # fp32, or float64 for float64

    def closure():
        return nn.functional.cross_entropy(model(x).to(loss_dtype), y)

    return model, opt, closure


@pytest.mark.parametrize("optimizer", [SASSHA, MSASSHA])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64],
                         ids=["fp32", "bf16", "fp16", "fp64"])
@pytest.mark.parametrize("backend,device", backend_device_params())
def test_backend_follows_reference(optimizer, dtype, backend, device):
    if not load_module(backend).supports_dtype(dtype):
        # Refused when the optimizer is built, which resolves the ops of its parameters.
        with pytest.raises(RuntimeError, match=f"{backend!r} does not run with {dtype}"):
            make_run(optimizer, backend, device, dtype)
        pytest.skip(f"backend {backend!r} does not run {dtype} parameters (and refuses them)")
    ref_model, ref_opt, ref_closure = make_run(optimizer, "reference", device, dtype)
    model, opt, closure = make_run(optimizer, backend, device, dtype)
    frozen = model.frozen.weight.detach().clone()
    unused = model.unused.weight.detach().clone()
    steps = STEPS if dtype == torch.float32 else 20
    for step in range(steps):
        ref_opt.step(ref_closure)
        opt.step(closure)
        if step == 0 and dtype in FIRST_STEP_TOLERANCE:  # one step: the per-step contract
            for p, q in zip(model.parameters(), ref_model.parameters()):
                torch.testing.assert_close(p, q, **FIRST_STEP_TOLERANCE[dtype])
    assert opt.backends_in_use == {str(device): backend}
    for p, q in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, **FINAL_TOLERANCE[dtype])
        if p in ref_opt.state:
            for key in ("exp_avg", "exp_hessian_diag"):
                assert opt.state[p][key].dtype == (torch.float64 if dtype == torch.float64
                                                   else torch.float32)
                check_state(opt.state[p][key], ref_opt.state[q][key], dtype)
            assert opt.state[p]["hessian_step"] == ref_opt.state[q]["hessian_step"] == steps
    assert torch.equal(model.frozen.weight, frozen) and torch.equal(model.unused.weight, unused)
    assert model.unused.weight not in opt.state and model.frozen.weight not in opt.state


def check_state(got, want, dtype):
    if dtype not in LOW_PRECISION_STATE_RELATIVE:
        torch.testing.assert_close(got, want, **FINAL_TOLERANCE[dtype])
        return
    rel = LOW_PRECISION_STATE_RELATIVE[dtype]
    assert_scaled_close(got, want, rel)
    # Negative controls: a zeroed state or one twice the size (both within the parameters'
    # fixed atol, which is larger than every D entry) fails.
    assert bool(want.abs().max() > 0)
    assert not scaled_close([(torch.zeros_like(want), want, None)], rel)
    assert not scaled_close([(2 * want, want, None)], rel)
