"""Shared fixtures of the pytest-benchmark microbenchmarks (bench/README.md, "Which tool").

The parameter set is ResNet-50's 161 tensors scaled to BENCH_MICRO_PARAMS elements
(default 4M: seconds per benchmark on a CPU) on BENCH_MICRO_DEVICE (default: cuda if
present, else cpu). Compare saved runs only when both were made with the same values
(they are stored in each run's machine_info/params)."""
import os

import pytest
import torch

from bench.harness import backend_choice
from bench.harness.config import sweep_set

DEVICE = torch.device(os.environ.get("BENCH_MICRO_DEVICE",
                                     "cuda" if torch.cuda.is_available() else "cpu"))
PARAMS = int(os.environ.get("BENCH_MICRO_PARAMS", 4_000_000))
PARAM_SET = sweep_set(PARAMS)
# Every backend usable here, found at collection time (a backend added later is picked up).
BACKENDS = backend_choice.usable(DEVICE)


@pytest.fixture(scope="session")
def device():
    return DEVICE


@pytest.fixture(scope="session")
def param_set():
    return PARAM_SET


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["sassha_fast_bench"] = dict(device=str(DEVICE), params=PARAM_SET.numel,
                                             tensors=PARAM_SET.tensors, backends=BACKENDS)
