"""One optimizer iteration per benchmark (the methods of bench/suites/step.py: AdamW, SAM,
SASSHA per backend, ...), on gradients already present, no model."""
import pytest
import torch

from bench.harness.timing import synchronize
from bench.micro.conftest import BACKENDS, DEVICE
from bench.suites import step

CASES = step.cases(BACKENDS)


@pytest.fixture(scope="module")
def step_tensors(param_set, device):
    return step.materialize(param_set, device, torch.float32)


@pytest.mark.parametrize("case", CASES, ids=[f"{c.method}[{c.backend}]" for c in CASES])
def test_step(benchmark, step_tensors, case):
    iteration = case.build(step_tensors, DEVICE)

    def synchronized():
        iteration()
        synchronize(DEVICE)
    benchmark.group = "optimizer iteration"
    benchmark(synchronized)
