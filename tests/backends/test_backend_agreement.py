"""What the README promises about identical numbers: on one backend, the authors' loop and
``step(closure)`` give bit-identical parameters and state."""
import pytest

import sassha_fast

from backend_params import backend_device_params
from tiny import LOSS, assert_identical, make_model, snapshot, whole_batch


@pytest.mark.parametrize("backend,device",
                         backend_device_params(["reference"]) + backend_device_params())
def test_authors_loop_and_one_call_are_bit_identical_on_one_backend(backend, device):
    x, y = (t.to(device) for t in whole_batch())
    runs = []
    for one_call in (True, False):
        model = make_model().to(device)
        opt = sassha_fast.SASSHA(model.parameters(), backend=backend, lazy_hessian=2, rho=0.05)
        for _ in range(3):
            if one_call:
                opt.step(lambda: LOSS(model(x), y))
                continue
            LOSS(model(x), y).backward()
            opt.perturb_weights(zero_grad=True)
            LOSS(model(x), y).backward(create_graph=opt.hessian_due)
            opt.unperturb()
            opt.step()
            opt.zero_grad()
        runs.append(snapshot(model, opt))
    assert_identical(runs[0], runs[1])
