"""An update that writes inf or NaN (its inputs finite: a learning rate that is not finite
here) never passes unnoticed: the update ops' ``wrote_nonfinite`` flag is counted
(``nonfinite_updates``) and reported by a ``NonfiniteUpdateWarning`` naming the tensor, or
raises with ``nonfinite="raise"``; on the device path it is counted on the device and
reported with the skip counts. ``nonfinite="ignore"`` checks nothing."""
import warnings

import pytest
import torch

from sassha_fast import MSASSHA, SASSHA
from sassha_fast import NonfiniteUpdateWarning
from tiny import LOSS, PAPER_SETTINGS, make_model, whole_batch

from backend_params import backend_device_params

BACKENDS = pytest.mark.parametrize("backend,device", backend_device_params(
    device_types=("cpu",)) + [pytest.param("reference", torch.device("cpu"), id="reference")])
NAMED = r"update wrote inf or NaN.*parameter 0 of group 0 \(shape \(8, 5\)\)"


def run(optimizer, backend, steps, poisoned_step=None, **kwargs):
    """``steps`` closure steps, the learning rate inf at ``poisoned_step``; returns the
    optimizer and the warnings of each step."""
    model = make_model()
    x, y = whole_batch()
    opt = optimizer(model.parameters(), lazy_hessian=2, backend=backend,
                    **PAPER_SETTINGS[optimizer], **kwargs)
    caught = []
    for step in range(steps):
        opt.param_groups[0]["lr"] = float("inf") if step == poisoned_step else 0.01
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            opt.step(lambda: LOSS(model(x), y))
        caught.append([w for w in seen if issubclass(w.category, NonfiniteUpdateWarning)])
    return opt, caught


@BACKENDS
@pytest.mark.parametrize("optimizer", [SASSHA, MSASSHA])
def test_an_update_that_writes_inf_warns_naming_the_tensor_and_counts(backend, device,
                                                                     optimizer):
    opt, caught = run(optimizer, backend, steps=3, poisoned_step=1)
    assert [len(w) for w in caught] == [1 if step == 1 else 0 for step in range(3)]
    assert caught[1][0].filename == __file__  # pointed at the caller's step()
    message = str(caught[1][0].message)
    assert "the parameter 0 of group 0 (shape (8, 5)) holds inf or NaN" in message
    assert "learning rate that is not finite" in message
    # The parameters hold the values: the next step's gradients are NaN, and it is skipped.
    assert opt.nonfinite_updates == 1 and opt.skipped_steps == 1
    assert opt.state_dict()["sassha_fast"]["nonfinite_updates"] == 1


@BACKENDS
@pytest.mark.parametrize("optimizer", [SASSHA, MSASSHA])
def test_raise_stops_at_the_update_that_writes_inf(backend, device, optimizer):
    with pytest.raises(FloatingPointError, match=NAMED):
        run(optimizer, backend, steps=3, poisoned_step=1, nonfinite="raise")


@pytest.mark.parametrize("optimizer", [SASSHA, MSASSHA])
def test_finite_updates_and_ignore_report_nothing(optimizer):
    opt, caught = run(optimizer, "cpu", steps=3)
    assert caught == [[], [], []] and opt.nonfinite_updates == 0
    opt, caught = run(optimizer, "cpu", steps=3, poisoned_step=1, nonfinite="ignore")
    assert caught == [[], [], []] and opt.nonfinite_updates == 0
    assert not torch.isfinite(opt.param_groups[0]["params"][0]).all()  # it did write inf


@pytest.mark.parametrize("optimizer", [SASSHA, MSASSHA])
def test_the_device_path_counts_on_the_device_and_reports_at_the_check(optimizer):
    """capturable=True: no host read per step; the count reaches the host with the skip
    counts every skip_check_interval steps (here the 4th step), naming the tensor then."""
    opt, caught = run(optimizer, "cpu", steps=5, poisoned_step=1, capturable=True,
                      skip_check_interval=4)
    assert [len(w) for w in caught] == [0, 0, 0, 1, 0]
    assert "parameter 0 of group 0" in str(caught[3][0].message)
    assert opt.nonfinite_updates == 1


def test_the_count_survives_a_checkpoint():
    opt, _ = run(SASSHA, "cpu", steps=2, poisoned_step=1)
    opt.param_groups[0]["lr"] = 0.01  # a checkpoint with an infinite rate is refused
    model = make_model()
    again = SASSHA(model.parameters(), lazy_hessian=2, **PAPER_SETTINGS[SASSHA])
    state = opt.state_dict()
    # The poisoned weights stay behind: only the count travels.
    for saved in state["state"].values():
        for key in ("exp_avg", "exp_hessian_diag"):
            saved[key] = torch.nan_to_num(saved[key])
    again.load_state_dict(state)
    assert again.nonfinite_updates == 1
