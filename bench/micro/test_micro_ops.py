"""One backend op over the whole parameter set, per benchmark (the ops of
bench/ops_suite.py): did a commit make a kernel slower?"""
import pytest
import torch

from sassha_fast import functional

from bench import ops_suite
from bench.micro.conftest import BACKENDS, DEVICE
from bench.timing import synchronize


@pytest.fixture(scope="module")
def op_tensors(param_set, device):
    return ops_suite.materialize(param_set, device, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", ops_suite.OP_NAMES)
def test_op(benchmark, op_tensors, op, backend):
    call = ops_suite.op_calls(functional.resolve(backend, DEVICE), op_tensors, DEVICE)[op]

    def synchronized():
        call()
        synchronize(DEVICE)  # asynchronous GPU work counts where it runs
    benchmark.group = f"op {op}"
    benchmark(synchronized)
