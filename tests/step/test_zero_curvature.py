"""A run stopped by skipped steps says why: the last offending tensor and, when weights got
gradients but never a curvature estimate (an embedding row no Hessian batch reached), that
tensor and the remedy, ``curvature_floor``; ``diagnostics()`` counts those weights."""
import warnings

import pytest
import torch
from torch import nn

from sassha_fast import SASSHA, SkippedStepWarning

ROWS, WIDTH = 10, 4


class Bag(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(ROWS, WIDTH)
        self.head = nn.Linear(WIDTH, 3)

    def forward(self, tokens):
        return self.head(torch.tanh(self.embed(tokens)).mean(1))


def batch(step: int):
    """Hessian steps (even, lazy_hessian=2) see tokens 0-4 only; the others 5-9 only."""
    g = torch.Generator().manual_seed(step)
    low = 0 if step % 2 == 0 else 5
    return torch.randint(low, low + 5, (8, 6), generator=g), torch.randint(0, 3, (8,), generator=g)


def run(poisoned_from=None, steps=4, **kwargs):
    model = Bag()
    opt = SASSHA(model.parameters(), lazy_hessian=2, rho=0.05, max_consecutive_skips=2,
                 **kwargs)
    for step in range(steps):
        x, y = batch(step)
        scale = float("nan") if poisoned_from is not None and step >= poisoned_from else 1.0
        opt.step(lambda: nn.functional.cross_entropy(model(x), y) * scale)
    return model, opt


@pytest.mark.parametrize("capturable", [False, True])
def test_the_stop_names_the_tensor_without_curvature_and_the_remedy(capturable):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedStepWarning)
        with pytest.raises(FloatingPointError) as stopped:
            # the device path reports at its checks: one per step here
            run(poisoned_from=4, steps=6, capturable=capturable, skip_check_interval=1)
    message = str(stopped.value)
    assert "the last 2 optimizer steps were all skipped" in message
    assert "Parameter 0 of group 0 (shape (10, 4)) has 20 entries whose Hessian estimate is " \
           "exactly 0 while their momentum is not" in message
    assert "Pass curvature_floor" in message
    if not capturable:  # the host path knows which tensor held the NaN
        assert "The last skipped step: the first pass's gradient of parameter 0 of group 0" \
               in message


def test_with_a_floor_nothing_is_blamed_on_missing_curvature():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedStepWarning)
        with pytest.raises(FloatingPointError) as stopped:
            run(poisoned_from=4, steps=6, curvature_floor=0.01)
    assert "Hessian estimate is exactly 0" not in str(stopped.value)


def test_the_first_skip_warning_carries_the_cause_on_the_host_path():
    with pytest.warns(SkippedStepWarning, match="has 20 entries whose Hessian estimate is "
                                                "exactly 0.*curvature_floor"):
        run(poisoned_from=4, steps=5)


def test_diagnostics_count_the_weights_without_curvature():
    _, opt = run()
    assert opt.diagnostics()["groups"][0]["zero_curvature_entries"] == ROWS // 2 * WIDTH
    _, floored = run(curvature_floor=0.01)
    assert floored.diagnostics()["groups"][0]["zero_curvature_entries"] == 0
    _, on_device = run(capturable=True)
    count = on_device.diagnostics()["groups"][0]["zero_curvature_entries"]
    assert isinstance(count, torch.Tensor) and int(count) == ROWS // 2 * WIDTH
