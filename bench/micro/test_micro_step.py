"""One optimizer iteration per benchmark (the methods of bench/step_suite.py: AdamW, SAM,
SASSHA per backend, ...), on gradients already present, no model."""
import pytest
import torch

from bench import step_suite
from bench.micro.conftest import BACKENDS, DEVICE
from bench.timing import synchronize

CASES = step_suite.cases(BACKENDS)


@pytest.fixture(scope="module")
def step_tensors(param_set, device):
    return step_suite.materialize(param_set, device, torch.float32)


@pytest.mark.parametrize("case", CASES, ids=[f"{c.method}[{c.backend}]" for c in CASES])
def test_step(benchmark, step_tensors, case):
    iteration = case.build(step_tensors, DEVICE)

    def synchronized():
        iteration()
        synchronize(DEVICE)
    benchmark.group = "optimizer iteration"
    benchmark(synchronized)
