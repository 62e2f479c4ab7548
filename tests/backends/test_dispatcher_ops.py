"""The fused ops as dispatcher operators, torch.ops.sassha_fast.<op>: defined with their
schemas when sassha_fast is imported, checked by torch.library.opcheck (schema and mutation
annotations, fake kernels, AOT dispatch) on the CPU and, where there is one, the GPU,
over every dtype the kernels take, with and without found_inf; their fake kernels on meta tensors; version counters and autograd; and
a function calling them that torch.compile traces whole."""
import pytest
import torch
from torch.library import opcheck

import sassha_fast
from sassha_fast.backends import OPS
from sassha_fast.backends.extension import IMPORT_ERROR, _C

from op_arguments import FOUND_INF, SHAPES, WRITTEN, arguments, lists

pytestmark = pytest.mark.skipif(_C is None, reason=f"no extension: {IMPORT_ERROR}")

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


def op(name):
    return getattr(torch.ops.sassha_fast, name).default


def devices():
    """The CPU, and the GPU where there is one and _C has its CUDA part."""
    found = [torch.device("cpu")]
    if _C is not None and _C.with_cuda and torch.cuda.is_available():
        found.append(torch.device("cuda"))
    return found


def test_the_ops_are_defined_once_sassha_fast_is_imported():
    assert sassha_fast.build_info()["extension"] == "loaded"
    for name in OPS:
        schema = str(op(name)._schema)
        assert schema.startswith(f"sassha_fast::{name}("), schema


def test_no_per_device_bindings_remain():
    """One op per kernel, reached through the dispatcher: no _C.<op>_cpu / _C.<op>_cuda."""
    assert not [n for n in dir(_C) if any(n.startswith(f"{o}_") for o in OPS)]


@pytest.mark.parametrize("name", [o for o in OPS if o != "global_norm"])
def test_what_an_op_writes_is_annotated(name):
    """Functionalization learns from (a!) what each op mutates: every written list is
    annotated, nothing else is."""
    written = {a.name for a in op(name)._schema.arguments
               if a.alias_info is not None and a.alias_info.is_write}
    assert written == WRITTEN[name]


TAKE_FOUND_INF = [name for name in OPS if "found_inf" in
                  [a.name for a in op(name)._schema.arguments]] if _C is not None else []
OP_CASES = [pytest.param(name, flag, id=f"{name}-{flag_id}") for name in OPS
            for flag_id, flag in FOUND_INF.items() if flag is None or name in TAKE_FOUND_INF]


@pytest.mark.parametrize("shapes", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,found_inf", OP_CASES)
@pytest.mark.parametrize("device", devices(), ids=str)
def test_opcheck(device, name, found_inf, dtype, shapes):
    if device.type == "cuda" and dtype == torch.float64:
        pytest.skip("the CUDA kernels take fp32, bf16 and fp16 parameters (float64: cpu)")
    torch.manual_seed(0)
    results = opcheck(op(name), arguments(name, shapes, dtype, found_inf, device))
    assert set(results.values()) == {"SUCCESS"}, results


def test_opcheck_notices_an_unannotated_write():
    """Negative control: an op that writes a list its schema calls read-only fails
    opcheck's schema test."""
    lib = torch.library.Library("sassha_fast_negative_control", "DEF")
    lib.define("bad(Tensor[] params, Tensor alpha) -> ()")
    lib.impl("bad", lambda params, alpha: [p.add_(alpha) for p in params] and None, "CPU")
    torch.library.register_fake("sassha_fast_negative_control::bad",
                                lambda params, alpha: None, lib=lib)
    with pytest.raises(Exception, match="mutat"):
        opcheck(torch.ops.sassha_fast_negative_control.bad.default,
                ([torch.zeros(3)], torch.tensor(1.0)), test_utils="test_schema")


def test_meta_tensors_run_the_fake_kernels():
    """Meta tensors hold no data: an op checks them and writes nothing, as PyTorch's own
    operators do; a result has the dtype the CPU kernel would give it."""
    meta = [torch.zeros(5, device="meta", dtype=torch.float64)]
    norm = torch.ops.sassha_fast.global_norm(meta, None)
    assert norm.device.type == "meta" and norm.dtype == torch.float64 and norm.shape == ()
    torch.ops.sassha_fast.add_scaled(meta, meta, torch.tensor(1.0))


def test_meta_tensors_mixed_with_data_are_refused_by_name():
    with pytest.raises(RuntimeError, match=r"add_scaled: tensors\[1\] is on meta, but "
                       r"params\[0\] is on cpu; every tensor of one op must be on one device"):
        torch.ops.sassha_fast.add_scaled([torch.zeros(3), torch.zeros(2)],
                                         [torch.zeros(3), torch.zeros(2, device="meta")],
                                         torch.tensor(1.0))


def test_lists_of_unequal_length_are_refused_by_the_fake_kernel_too():
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        with pytest.raises(RuntimeError, match=r"perturb: grads has 1 tensors, expected 2"):
            torch.ops.sassha_fast.perturb([torch.zeros(3), torch.zeros(2)], [torch.zeros(3)],
                                          torch.tensor(1.0), False, None)


def test_writes_bump_version_counters():
    """Autograd refuses a backward through a value an op overwrote, as it does after a
    native in-place op."""
    w = torch.ones(3, requires_grad=True)
    x = torch.ones(3, requires_grad=True)
    y = (w * x).sum()  # saves w for x's gradient
    with torch.no_grad():
        torch.ops.sassha_fast.add_scaled([w], [torch.ones(3)], torch.tensor(1.0))
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()


def test_no_silent_gradient():
    """The ops have no derivative: asking for one is an error, never a wrong gradient."""
    t = torch.ones(3, requires_grad=True)
    norm = torch.ops.sassha_fast.global_norm([t], None)
    with pytest.raises(RuntimeError, match="not implemented"):
        norm.backward()


def test_compiled_with_fullgraph():
    """A function of the ops traces as one graph (fullgraph=True refuses any break) and
    computes what eager computes."""
    def step(params, grads):
        norm = torch.ops.sassha_fast.global_norm(grads, None)
        torch.ops.sassha_fast.perturb(params, grads, 0.05 / (norm + 1e-12), False, None)
        torch.ops.sassha_fast.add_scaled(params, grads, torch.tensor(-0.5, dtype=torch.float64))

    torch.manual_seed(0)
    params, grads = lists([(7,), (3, 5)], torch.float32, 2)
    eager_p, eager_g = [p.clone() for p in params], [g.clone() for g in grads]
    step(eager_p, eager_g)
    torch._dynamo.reset()
    torch.compile(step, backend="aot_eager", fullgraph=True)(params, grads)
    for a, b in zip(params + grads, eager_p + eager_g):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
