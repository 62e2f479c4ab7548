"""scripts/trajectories.py, the bit-for-bit check behind a change of structure: it finds a
one-ulp difference, and one case run twice in one process is identical."""
import importlib.util
import pathlib

import torch

from sassha_fast import SASSHA

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "scripts" / "trajectories.py"
spec = importlib.util.spec_from_file_location("trajectories", SCRIPT)
trajectories = importlib.util.module_from_spec(spec)
spec.loader.exec_module(trajectories)


def test_one_ulp_anywhere_is_a_difference():
    record = {"params": [[torch.tensor([1.0, 2.0]), torch.tensor(3.0, dtype=torch.bfloat16)]],
              "losses": [torch.tensor(0.5)], "state": {"state": {0: {"step": 3}}}}
    same = {"params": [[torch.tensor([1.0, 2.0]), torch.tensor(3.0, dtype=torch.bfloat16)]],
            "losses": [torch.tensor(0.5)], "state": {"state": {0: {"step": 3}}}}
    assert trajectories.differences(same, record) == []
    moved = torch.nextafter(torch.tensor(2.0), torch.tensor(3.0))
    same["params"][0][0][1] = moved
    assert trajectories.differences(same, record) == ["/params/0/0: tensor differs"]
    same["params"][0][0][1] = 2.0
    same["state"]["state"][0]["step"] = 4
    assert trajectories.differences(same, record) == ["/state/state/0/step: 3 -> 4"]


def test_a_nan_equals_the_same_nan_but_not_a_number():
    nan = torch.tensor([float("nan")])
    assert trajectories.differences([nan.clone()], [nan]) == []
    assert trajectories.differences([torch.tensor([1.0])], [nan]) == ["/0: tensor differs"]


def test_a_case_is_reproducible_in_one_process_and_sensitive_to_its_settings():
    first = trajectories.run_closure(SASSHA, "reference", rho=0.05)
    again = trajectories.run_closure(SASSHA, "reference", rho=0.05)
    assert trajectories.differences(again, first) == []
    other = trajectories.run_closure(SASSHA, "reference", rho=0.05, seed=1)
    assert trajectories.differences(other, first)
