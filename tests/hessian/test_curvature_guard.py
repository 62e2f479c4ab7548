"""The opt-in curvature floor: a unit dead on the Hessian batch (exactly zero Hessian
entries) blows its weights up within a few steps by default, and the floor prevents it."""
import pytest
import torch
from torch import nn

import sassha_fast
from sassha_fast.hessian.curvature_floor import floor_hessian_

from backend_params import backend_device_params
from tiny import PAPER_SETTINGS

LOSS = nn.CrossEntropyLoss()


def dead_unit_model() -> nn.Module:
    """2 -> 3 ReLU -> 2; unit 0 sees x0 + x1, so it is dead on inputs with both negative."""
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 1.0], [0.5, -0.3], [-0.4, 0.6]]))
        model[0].bias.copy_(torch.tensor([0.0, 3.0, 3.0]))
        model[2].weight.copy_(torch.tensor([[0.3, -0.2, 0.1], [-0.1, 0.4, -0.3]]))
        model[2].bias.zero_()
    return model


def batches():
    generator = torch.Generator().manual_seed(0)
    dead = -1.0 - torch.rand(8, 2, generator=generator)   # unit 0 dead: the Hessian batch
    alive = 1.0 + torch.rand(8, 2, generator=generator)   # unit 0 alive: the steps after
    labels = torch.randint(0, 2, (8,), generator=generator)
    return (dead, labels), (alive, labels)


def train(optimizer_class, steps: int, backend: str = "auto", device="cpu", **kwargs):
    model = dead_unit_model().to(device)
    opt = optimizer_class(model.parameters(), backend=backend, **kwargs,
                          **PAPER_SETTINGS[optimizer_class])
    (x_dead, y), (x_alive, _) = [(x.to(device), y.to(device)) for x, y in batches()]
    start = [p.detach().clone() for p in model.parameters()]
    for i in range(steps):
        x = x_dead if i == 0 else x_alive
        opt.step(lambda: LOSS(model(x), y))
    moved = max(float((p.detach() - s).abs().max()) for p, s in zip(model.parameters(), start))
    return model, opt, moved


@pytest.mark.parametrize("optimizer_class", [sassha_fast.SASSHA, sassha_fast.MSASSHA])
def test_dead_unit_blows_up_by_default_and_the_floor_prevents_it(optimizer_class):
    _, opt, blown_up = train(optimizer_class, steps=4)
    assert opt.diagnostics()["groups"][0]["hessian_zero_fraction"] > 0
    assert blown_up > 100  # weights of size ~1 moved by lr * m / eps
    _, opt, guarded = train(optimizer_class, steps=4, curvature_floor=0.01)
    assert guarded < blown_up / 100
    assert opt.diagnostics()["groups"][0]["hessian_zero_fraction"] == 0


@pytest.mark.parametrize("backend,device", backend_device_params())
@pytest.mark.parametrize("optimizer_class", [sassha_fast.SASSHA, sassha_fast.MSASSHA])
def test_floor_matches_the_reference_on_every_backend(optimizer_class, backend, device):
    want, _, _ = train(optimizer_class, steps=5, curvature_floor=0.01, backend="reference",
                       lazy_hessian=2)
    got, _, _ = train(optimizer_class, steps=5, curvature_floor=0.01, backend=backend,
                      device=device, lazy_hessian=2)
    for g, w in zip(got.parameters(), want.parameters()):
        torch.testing.assert_close(g.cpu(), w, rtol=1e-5, atol=1e-6)


def test_floor_is_relative_to_each_tensors_mean():
    d = [torch.tensor([0.0, 1.0, 3.0]), torch.tensor([[0.0, 10.0]]), torch.empty(0)]
    floor_hessian_(d, 0.5)
    assert torch.equal(d[0], torch.tensor([2 / 3, 1.0, 3.0]))
    assert torch.equal(d[1], torch.tensor([[2.5, 10.0]]))
    floor_hessian_(d, 0.0)  # off: unchanged
    assert torch.equal(d[0], torch.tensor([2 / 3, 1.0, 3.0]))


def test_default_is_off_and_identical_to_no_floor():
    plain, _, _ = train(sassha_fast.SASSHA, steps=3)
    off, _, _ = train(sassha_fast.SASSHA, steps=3, curvature_floor=0.0)
    for a, b in zip(plain.parameters(), off.parameters()):
        assert torch.equal(a, b)
    assert sassha_fast.SASSHA([torch.zeros(1, requires_grad=True)]).curvature_floor == 0.0


@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan"), True, "0.01"])
def test_invalid_floor_is_refused(value):
    with pytest.raises(ValueError, match="Invalid curvature_floor value"):
        sassha_fast.SASSHA([torch.zeros(1, requires_grad=True)], curvature_floor=value)


def test_language_model_variant_takes_the_floor_and_reports_diagnostics():
    from sassha_fast.lm import SASSHA as LMSASSHA

    (x_dead, y), (x_alive, _) = batches()
    moved = {}
    for floor in (0.0, 0.01):
        model = dead_unit_model()
        start = [p.detach().clone() for p in model.parameters()]
        opt = LMSASSHA(model.parameters(), curvature_floor=floor)
        for i in range(4):
            LOSS(model(x_dead if i == 0 else x_alive), y).backward(create_graph=i == 0)
            if i == 0:
                opt.set_hessian()
            opt.step(i)
            opt.zero_grad()
        moved[floor] = max(float((p.detach() - s).abs().max())
                           for p, s in zip(model.parameters(), start))
        group = opt.diagnostics()["groups"][0]
        assert group["bias_correction1"] == group["bias_correction2"] == 1.0
        assert (group["hessian_zero_fraction"] > 0) == (floor == 0.0)
    assert moved[0.0] > 10 * moved[0.01]  # no bias correction: every step is large here
