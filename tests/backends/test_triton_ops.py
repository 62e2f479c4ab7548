"""The triton backend's ops as dispatcher operators, torch.ops.sassha_fast.triton_<op>:
the schemas of the C++ ops, checked by torch.library.opcheck (schema and mutation
annotations, fake kernels, autograd registration, AOT dispatch) over fp32, bf16 and fp16,
with and without found_inf; their fake kernels; version counters and autograd; and a
function of the backend's ops that torch.compile traces whole.

Without a GPU (conftest.py sets TRITON_INTERPRET=1) the kernels run on CPU tensors in
Triton's interpreter; with one, on CUDA tensors."""
import pytest
import torch
from torch.library import opcheck

from sassha_fast.backends import OPS
from sassha_fast.backends import triton as backend
from sassha_fast.backends.extension import IMPORT_ERROR, _C

from op_arguments import FOUND_INF, SHAPES, WRITTEN, arguments, lists

REASON = backend.unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None,
                                reason=f"triton backend unavailable here: {REASON}")

DEVICE = torch.device("cpu" if REASON is not None or backend.kernels.INTERPRETED else "cuda")
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def op(name):
    return getattr(torch.ops.sassha_fast, f"triton_{name}").default


@pytest.mark.skipif(_C is None, reason=f"the C++ ops to compare with need _C: {IMPORT_ERROR}")
@pytest.mark.parametrize("name", OPS)
def test_the_schemas_are_those_of_the_cpp_ops(name):
    """One contract, two families of ops: the fake kernels serve both."""
    cpp = getattr(torch.ops.sassha_fast, name).default._schema
    assert str(op(name)._schema) == str(cpp).replace(f"::{name}(", f"::triton_{name}(")


@pytest.mark.parametrize("name", OPS)
def test_what_an_op_writes_is_annotated(name):
    written = {a.name for a in op(name)._schema.arguments
               if a.alias_info is not None and a.alias_info.is_write}
    assert written == WRITTEN[name]


TAKE_FOUND_INF = [name for name in OPS if "found_inf" in
                  [a.name for a in op(name)._schema.arguments]] if REASON is None else []
OP_CASES = [pytest.param(name, flag, id=f"{name}-{flag_id}") for name in OPS
            for flag_id, flag in FOUND_INF.items() if flag is None or name in TAKE_FOUND_INF]


@pytest.mark.parametrize("shapes", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,found_inf", OP_CASES)
def test_opcheck(name, found_inf, dtype, shapes):
    torch.manual_seed(0)
    results = opcheck(op(name), arguments(name, shapes, dtype, found_inf, DEVICE))
    assert set(results.values()) == {"SUCCESS"}, results


def test_lists_of_unequal_length_are_refused_by_the_fake_kernel_too():
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        with pytest.raises(RuntimeError, match=r"perturb: grads has 1 tensors, expected 2"):
            backend.perturb([torch.zeros(3), torch.zeros(2)], [torch.zeros(3)], 1.0, False)


def test_writes_bump_version_counters():
    """Autograd refuses a backward through a value an op overwrote, as it does after a
    native in-place op."""
    w = torch.ones(3, device=DEVICE, requires_grad=True)
    x = torch.ones(3, device=DEVICE, requires_grad=True)
    y = (w * x).sum()  # saves w for x's gradient
    with torch.no_grad():
        backend.add_scaled([w], [torch.ones(3, device=DEVICE)], 1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()


def test_no_silent_gradient():
    """The ops have no derivative: asking for one is an error, never a wrong gradient."""
    t = torch.ones(3, device=DEVICE, requires_grad=True)
    norm = backend.global_norm([t])
    with pytest.raises(RuntimeError, match="no autograd formula"):
        norm.backward()


def test_compiled_with_fullgraph():
    """A function of the backend's ops traces as one graph of them (fullgraph=True refuses
    any break, which the kernels' pointer tables would cause) and computes what eager
    computes."""
    hyper = dict(lr=0.1, weight_decay=1e-2, beta1=0.9, bias_correction1=0.19,
                 bias_correction2=0.3, hessian_power=0.5, eps=1e-4)

    def step(params, grads, exp_avgs, exp_hessians):
        norm = backend.global_norm(grads)
        backend.perturb(params, grads, 0.05 / (norm + 1e-12), False)
        backend.sassha_update(params, grads, exp_avgs, exp_hessians, grads, **hyper)
        backend.hessian_ema(exp_hessians, grads, 0.99)
        squares = backend.msassha_update(params, grads, exp_avgs, exp_hessians,
                                         norm_factor=0.3, **hyper)
        backend.add_scaled(params, exp_avgs, -0.5)
        return squares

    torch.manual_seed(0)
    inputs = lists([(7,), (3, 5)], torch.bfloat16, 4, DEVICE)
    eager = [[t.clone() for t in ts] for ts in inputs]
    want = step(*eager)
    graphs = []

    def aot_eager(graph, example_inputs):
        graphs.append(graph)
        return torch._dynamo.lookup_backend("aot_eager")(graph, example_inputs)

    torch._dynamo.reset()
    got = torch.compile(step, backend=aot_eager, fullgraph=True)(*inputs)
    (graph,) = graphs
    assert {op(name) for name in OPS} <= {node.target for node in graph.graph.nodes}
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    for a, b in zip(sum(inputs, []), sum(eager, [])):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
