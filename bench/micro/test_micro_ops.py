"""One backend op over the whole parameter set, per benchmark (the ops of
bench/suites/ops.py): did a commit make a kernel slower?"""
import pytest
import torch

from sassha_fast import functional

from bench.harness.timing import synchronize
from bench.micro.conftest import BACKENDS, DEVICE
from bench.suites import ops


@pytest.fixture(scope="module")
def op_tensors(param_set, device):
    return ops.materialize(param_set, device, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", ops.OP_NAMES)
def test_op(benchmark, op_tensors, op, backend):
    call = ops.op_calls(functional.resolve(backend, DEVICE), op_tensors, DEVICE)[op]

    def synchronized():
        call()
        synchronize(DEVICE)  # asynchronous GPU work counts where it runs
    benchmark.group = f"op {op}"
    benchmark(synchronized)
