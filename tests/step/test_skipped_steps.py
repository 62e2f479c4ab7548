"""Skipped steps are impossible to miss: a SkippedStepWarning on the first one and each time
the count doubles, a FloatingPointError after ``max_consecutive_skips`` in a row; on the
device path the counts are read only every ``skip_check_interval`` steps and never while a
CUDA graph is captured."""
import warnings

import pytest
import torch

import sassha_fast.step.skips as skipped_steps
from sassha_fast import MSASSHA, SASSHA
from sassha_fast.step.skips import SkipCounter, SkippedStepWarning
from test_no_sync import guard
from tiny import LOSS, PAPER_SETTINGS, make_model, whole_batch


def optimizer_on(optimizer_class, **kwargs):
    model = make_model()
    x, y = whole_batch()
    opt = optimizer_class(model.parameters(), lazy_hessian=2, backend="reference", **kwargs,
                          **PAPER_SETTINGS[optimizer_class])
    return model, opt, lambda: LOSS(model(x), y)


def run(optimizer_class, poisoned, steps, **kwargs):
    """The steps (1-based) at which a SkippedStepWarning was issued."""
    model, opt, closure = optimizer_on(optimizer_class, **kwargs)
    warned = []
    for step in range(1, steps + 1):
        handle = None
        if step in poisoned:
            handle = model[0].bias.register_hook(lambda g: g.clone().fill_(float("nan")))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            opt.step(closure)
        if handle is not None:
            handle.remove()
        ours = [w for w in caught if issubclass(w.category, SkippedStepWarning)]
        assert all(w.filename == __file__ for w in ours)  # points at the caller's line
        warned += [step] * len(ours)
    return warned, opt


@pytest.mark.parametrize("optimizer", [SASSHA, MSASSHA])
def test_the_host_path_warns_at_the_first_skip_and_each_doubling(optimizer):
    warned, opt = run(optimizer, poisoned=range(1, 10), steps=9, capturable=False,
                      max_consecutive_skips=None)
    assert warned == [1, 2, 4, 8] and opt.skipped_steps == 9


def test_no_warning_without_a_skip():
    warned, _ = run(SASSHA, poisoned=(), steps=4, capturable=False)
    assert warned == []


def test_the_device_path_reports_at_its_checks_only():
    warned, opt = run(SASSHA, poisoned=range(1, 10), steps=9, capturable=True,
                      skip_check_interval=3, max_consecutive_skips=None)
    assert warned == [3, 6]  # counts 3 and 6 (>= 2 * 3); 9 < 2 * 6
    assert opt.skipped_steps == 9  # read on demand, whenever asked


def test_check_skipped_steps_reports_on_demand():
    model, opt, closure = optimizer_on(MSASSHA, capturable=True, skip_check_interval=100)
    handle = model[0].bias.register_hook(lambda g: g.clone().fill_(float("inf")))
    opt.step(closure)
    handle.remove()
    with pytest.warns(SkippedStepWarning, match="1 optimizer step"):
        opt.check_skipped_steps()


@pytest.mark.parametrize("capturable", [False, True])
def test_a_long_run_of_skips_raises(capturable):
    poisoned = (1, 2, 4, 5, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedStepWarning)
        run(SASSHA, poisoned=poisoned, steps=5, capturable=capturable,  # not before step 6
            skip_check_interval=1, max_consecutive_skips=3)
        with pytest.raises(FloatingPointError,
                           match="the last 3 optimizer steps were all skipped"):
            run(SASSHA, poisoned=poisoned, steps=6, capturable=capturable,
                skip_check_interval=1, max_consecutive_skips=3)


def test_no_read_while_a_graph_is_captured(monkeypatch):
    counter = SkipCounter(check_interval=1, max_consecutive=1)
    counter.record(torch.ones(()))
    monkeypatch.setattr(skipped_steps, "capturing", lambda: True)
    with guard(), warnings.catch_warnings():
        warnings.simplefilter("error")
        counter.tick()  # due, but a capture is under way: neither read nor report
    monkeypatch.undo()
    with pytest.warns(SkippedStepWarning), pytest.raises(FloatingPointError):
        counter.tick()


def test_the_count_survives_a_checkpoint_and_warnings_resume_from_it():
    _, opt = run(SASSHA, poisoned=(1, 2, 3), steps=3, capturable=True, skip_check_interval=1)
    model, fresh, closure = optimizer_on(SASSHA, capturable=False)  # the host path loads it
    fresh.load_state_dict(opt.state_dict())
    assert fresh.skipped_steps == 3
    handle = model[0].bias.register_hook(lambda g: g.clone().fill_(float("nan")))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            fresh.step(closure)
    handle.remove()
    assert [str(w.message).split()[0] for w in caught] == ["6"]  # 3 doubled
