"""The cuda backend (csrc/cuda/) against the reference backend, op by op, on what its
launcher and its vectorised accesses treat specially: misaligned tensors, tensors split
across launches, more tensors than one launch holds, scalars read from device memory, CUDA
graph capture. Without a GPU, what can still be checked: that the extension was built with
its CUDA part, why the backend is unavailable, and how the launcher cuts lists."""
import math
import os
import pathlib
import re
import shutil
import subprocess

import pytest
import torch

from sassha_fast import _C, available_backends
from sassha_fast.backends import cuda as cuda_backend
from sassha_fast.backends import reference
from sassha_fast.functional import resolve
from tensor_lists import (STATE_TOLERANCE, STORED_TOLERANCE, PythonDispatched,
                          assert_lists_close, clone)

UNAVAILABLE = cuda_backend.unavailable_reason()
needs_gpu = pytest.mark.skipif(UNAVAILABLE is not None,
                               reason=f"cuda backend unavailable here: {UNAVAILABLE}")
needs_cuda_part = pytest.mark.skipif(
    not _C.with_cuda, reason=f"sassha_fast._C has no CUDA part ({_C.cuda_status})")

CHUNK = 65536  # elements per block of the launcher (checked in test_launch_plan_limits)
DTYPES = [torch.float32, torch.bfloat16, torch.float16]

# name -> (shapes, element offset of each list's tensors from an aligned address, cycled over
# the lists). An odd offset forbids vector accesses to that list, hence to the whole tensor.
LAYOUTS = {
    "empty-list": ([], (0,)),
    "empty-tensors": ([(0,), (5,), (0, 3)], (0,)),
    "one-element": ([(1,), ()], (0,)),
    "odd-sizes": ([(7,), (13, 5), (1023,), (3, 3, 3)], (0,)),
    "misaligned": ([(7,), (4099,), (2, 65_537)], (1,)),
    "mixed-alignment": ([(9,), (4096,), (CHUNK + 3,)], (0, 1, 0, 3, 2)),
    "large": ([(3 * CHUNK + 5,), (1 << 20,)], (0,)),
    "many-tensors": ([(1 + (i * 37) % 2000,) for i in range(300)], (0,)),
    # 2 + 320 chunks: the launch fills up inside the third tensor, which goes on in the next.
    "launch-boundary": ([(100,), (3,), (319 * CHUNK + 1000,), (70_000,)], (0,)),
}
SCALAR_KINDS = ["float", "cuda-tensor", "cpu-tensor"]


class ListMaker:
    """Tensor lists of one layout; list k gets offset offsets[k % len(offsets)]."""

    def __init__(self, layout: str):
        self.shapes, self.offsets = LAYOUTS[layout]
        self.made = 0

    def __call__(self, dtype, positive=False, scale=1.0):
        offset = self.offsets[self.made % len(self.offsets)]
        self.made += 1
        out = []
        for shape in self.shapes:
            values = torch.randn(math.prod(shape) + offset, device="cuda") * scale
            storage = (values.abs() if positive else values).to(dtype)
            out.append(storage[offset:].view(shape))
        return out


def scalar(value: float, kind: str):
    if kind == "float":
        return value
    device = "cuda" if kind == "cuda-tensor" else "cpu"
    return torch.tensor(value, dtype=torch.float32, device=device)


def update_inputs(make: ListMaker, dtype):
    return dict(params=make(dtype), grads=make(dtype),
                exp_avgs=make(torch.float32, scale=0.1),
                exp_hessians=make(torch.float32, positive=True))


def hyper(kind: str, hessian_power: float = 0.5):
    """Step hyper-parameters; those that change every step given as `kind` scalars."""
    return dict(lr=scalar(0.05, kind), weight_decay=1e-2, beta1=0.9,
                bias_correction1=scalar(1 - 0.9 ** 3, kind),
                bias_correction2=scalar((1 - 0.999 ** 3) ** hessian_power, kind),
                hessian_power=hessian_power, eps=1e-4)


# -- every op against the reference, on a GPU -----------------------------------------------

@needs_gpu
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weights_dtype", [None, "same", torch.float32])
def test_global_norm(layout, dtype, weights_dtype):
    make = ListMaker(layout)
    tensors = make(dtype)
    weights = None if weights_dtype is None else make(
        dtype if weights_dtype == "same" else weights_dtype)
    got = cuda_backend.global_norm(tensors, weights)
    want = reference.global_norm(tensors, weights)
    assert got.dim() == 0 and got.dtype == torch.float32
    assert got.device.type == "cuda"  # an empty list's zero too
    torch.testing.assert_close(got.cpu(), want.cpu(), rtol=1e-5, atol=1e-6)


@needs_gpu
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("kind", SCALAR_KINDS)
def test_perturb(layout, dtype, adaptive, kind):
    make = ListMaker(layout)
    params, grads = make(dtype), make(dtype)
    want_p, want_g = clone(params), clone(grads)
    reference.perturb(want_p, want_g, 0.037, adaptive)
    cuda_backend.perturb(params, grads, scalar(0.037, kind), adaptive)
    assert_lists_close(grads, want_g, **STORED_TOLERANCE[dtype])
    assert_lists_close(params, want_p, **STORED_TOLERANCE[dtype])


@needs_gpu
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("perturbed", [False, True], ids=["plain", "leaves-perturbation"])
@pytest.mark.parametrize("hessian_power", [0.5, 0.7])
@pytest.mark.parametrize("kind", ["float", "cuda-tensor"])
def test_sassha_update(layout, dtype, perturbed, hessian_power, kind):
    make = ListMaker(layout)
    inputs = update_inputs(make, dtype)
    perturbations = make(dtype, scale=0.01) if perturbed else None
    expected = {name: clone(ts) for name, ts in inputs.items()}
    reference.sassha_update(*expected.values(), perturbations, **hyper("float", hessian_power))
    cuda_backend.sassha_update(*inputs.values(), perturbations, **hyper(kind, hessian_power))
    assert_lists_close(inputs["exp_avgs"], expected["exp_avgs"], **STATE_TOLERANCE)
    assert_lists_close(inputs["exp_hessians"], expected["exp_hessians"], rtol=0, atol=0)
    assert_lists_close(inputs["params"], expected["params"], **STORED_TOLERANCE[dtype])


@needs_gpu
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_hessian_ema(layout, dtype):
    make = ListMaker(layout)
    exp_hessians, estimates = make(torch.float32, positive=True), make(dtype)
    expected = clone(exp_hessians)
    reference.hessian_ema(expected, estimates, 0.99)
    cuda_backend.hessian_ema(exp_hessians, estimates, 0.99)
    assert_lists_close(exp_hessians, expected, **STATE_TOLERANCE)


@needs_gpu
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", SCALAR_KINDS)
def test_msassha_update(layout, dtype, kind):
    make = ListMaker(layout)
    inputs = update_inputs(make, dtype)
    expected = {name: clone(ts) for name, ts in inputs.items()}
    want = reference.msassha_update(*expected.values(), norm_factor=0.3, **hyper("float"))
    got = cuda_backend.msassha_update(*inputs.values(), norm_factor=scalar(0.3, kind),
                                      **hyper(kind))
    assert_lists_close(inputs["exp_avgs"], expected["exp_avgs"], **STATE_TOLERANCE)
    assert_lists_close(inputs["params"], expected["params"], **STORED_TOLERANCE[dtype])
    assert got.dim() == 0 and got.dtype == torch.float32
    assert got.device.type == "cuda"  # an empty list's zero too
    torch.testing.assert_close(got.cpu(), want.cpu(), rtol=1e-5, atol=1e-6)


@needs_gpu
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tensors_dtype", ["same", torch.float32])
@pytest.mark.parametrize("kind", SCALAR_KINDS)
def test_add_scaled(layout, dtype, tensors_dtype, kind):
    make = ListMaker(layout)
    params = make(dtype)
    tensors = make(dtype if tensors_dtype == "same" else tensors_dtype)
    expected = clone(params)
    reference.add_scaled(expected, tensors, -0.25)
    cuda_backend.add_scaled(params, tensors, scalar(-0.25, kind))
    assert_lists_close(params, expected, **STORED_TOLERANCE[dtype])


# -- layouts, errors, autograd, CUDA graphs ---------------------------------------------------

@needs_gpu
def test_inputs_laid_out_unlike_their_parameter_are_read_in_its_layout():
    params = [torch.randn(4, 3, 5, 5, device="cuda").to(memory_format=torch.channels_last)]
    exp_avgs = [torch.zeros_like(params[0])]  # zeros_like keeps the channels-last layout
    exp_hessians = [torch.rand_like(params[0])]
    grads = [torch.randn(4, 3, 5, 5, device="cuda")]  # contiguous
    perturbations = [torch.randn(5, 5, 3, 4, device="cuda").permute(3, 2, 0, 1) * 0.01]
    expected = [clone(ts) for ts in (params, grads, exp_avgs, exp_hessians)]
    reference.sassha_update(*expected, perturbations, **hyper("float"))
    cuda_backend.sassha_update(params, grads, exp_avgs, exp_hessians, perturbations,
                               **hyper("float"))
    assert_lists_close(params, expected[0], **STORED_TOLERANCE[torch.float32])
    assert_lists_close(exp_avgs, expected[2], **STATE_TOLERANCE)
    assert params[0].is_contiguous(memory_format=torch.channels_last)


@needs_gpu
def test_state_laid_out_unlike_its_parameter_is_refused():
    params = [torch.randn(4, 3, 5, 5, device="cuda").to(memory_format=torch.channels_last)]
    others = [[torch.zeros(4, 3, 5, 5, device="cuda")] for _ in range(3)]
    with pytest.raises(RuntimeError, match=r"exp_avgs\[0\] .* is not laid out like params\[0\]"):
        cuda_backend.sassha_update(params, *others, None, **hyper("float"))


@needs_gpu
@pytest.mark.parametrize("bad,message", [
    ("strided-param", "not dense in memory"),
    ("fp16-grad", r"grads\[0\] is Half, expected Float"),
    ("bf16-state", r"exp_avgs\[0\] is BFloat16, expected Float"),
    ("fp64-param", "must be fp32, bf16 or fp16"),
    ("short-list", "exp_hessians holds 0 tensors but params holds 1"),
    ("cpu-state", r"every tensor of one op must be on one device; exp_avgs\[0\] is on cpu"),
    ("lr-of-two-elements", "lr must be a number or a one-element floating-point tensor"),
])
def test_bad_input_is_refused_with_a_clear_error(bad, message):
    def vec(dtype=torch.float32, device="cuda"):
        return torch.randn(6, dtype=dtype, device=device)
    args = dict(params=[vec()], grads=[vec()], exp_avgs=[vec()], exp_hessians=[vec()])
    options = hyper("float")
    if bad == "strided-param":
        args["params"] = [torch.randn(12, device="cuda")[::2]]
    elif bad == "fp16-grad":
        args["grads"] = [vec(torch.float16)]
    elif bad == "bf16-state":
        args["exp_avgs"] = [vec(torch.bfloat16)]
    elif bad == "fp64-param":
        args["params"], args["grads"] = [vec(torch.float64)], [vec(torch.float64)]
    elif bad == "short-list":
        args["exp_hessians"] = []
    elif bad == "cpu-state":
        args["exp_avgs"] = [vec(device="cpu")]
    else:
        options["lr"] = torch.ones(2, device="cuda")
    before = args["params"][0].clone()
    with pytest.raises(RuntimeError, match=message):
        cuda_backend.sassha_update(*args.values(), None, **options)
    assert torch.equal(args["params"][0], before)


@needs_gpu
@pytest.mark.parametrize("layout", ["odd-sizes", "misaligned", "large"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("value", [1.0, math.nan, 0.0], ids=["inf-found", "nan", "clear"])
def test_found_inf_is_read_on_the_device(layout, dtype, value):
    """Every op with found_inf against the reference's contract (skipped when nonzero)."""
    make = ListMaker(layout)
    found_inf = torch.tensor(value, device="cuda")
    inputs = update_inputs(make, dtype)
    perturbations = make(dtype, scale=0.01)
    expected = {name: clone(ts) for name, ts in inputs.items()}
    want_e = clone(perturbations)
    reference.perturb(expected["params"], want_e, 0.1, True, found_inf=found_inf)
    cuda_backend.perturb(inputs["params"], perturbations, 0.1, True, found_inf=found_inf)
    assert_lists_close(perturbations, want_e, **STORED_TOLERANCE[dtype])
    assert_lists_close(inputs["params"], expected["params"], **STORED_TOLERANCE[dtype])
    reference.sassha_update(*expected.values(), want_e, **hyper("cuda-tensor", 0.7),
                            found_inf=found_inf)
    cuda_backend.sassha_update(*inputs.values(), perturbations, **hyper("cuda-tensor", 0.7),
                               found_inf=found_inf)
    for name in inputs:
        assert_lists_close(inputs[name], expected[name], **STORED_TOLERANCE[dtype])
    reference.hessian_ema(expected["exp_hessians"], want_e, 0.9, found_inf=found_inf)
    cuda_backend.hessian_ema(inputs["exp_hessians"], perturbations, 0.9, found_inf=found_inf)
    assert_lists_close(inputs["exp_hessians"], expected["exp_hessians"], **STATE_TOLERANCE)
    want = reference.msassha_update(*expected.values(), norm_factor=0.3, **hyper("float"),
                                    found_inf=found_inf)
    got = cuda_backend.msassha_update(*inputs.values(), norm_factor=scalar(0.3, "cuda-tensor"),
                                      **hyper("cuda-tensor"), found_inf=found_inf)
    for name in inputs:
        assert_lists_close(inputs[name], expected[name], **STORED_TOLERANCE[dtype])
    torch.testing.assert_close(got.cpu(), want.cpu(), rtol=1e-5, atol=1e-6)


@needs_cuda_part
def test_a_subclass_dispatched_to_python_gets_the_op_not_the_kernel():
    """As with every PyTorch operator: the subclass's __torch_dispatch__ decides (DTensor
    refuses an op it has no sharding rule for); the kernel never reads its memory."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tensors = [torch.ones(3, device=device), PythonDispatched(torch.ones(2, device=device))]
    PythonDispatched.seen.clear()
    cuda_backend.add_scaled([torch.zeros(3, device=device), torch.zeros(2, device=device)],
                            tensors, 1.0)
    assert PythonDispatched.seen == [torch.ops.sassha_fast.add_scaled.default]


@needs_gpu
@pytest.mark.parametrize("bad,message", [
    ("meta", r"add_scaled: tensors\[0\] is on meta, but params\[0\] is on cuda"),
    ("cpu", r"add_scaled: every tensor of one op must be on one device; params\[0\] is on cpu"),
])
def test_tensors_the_kernels_cannot_read_are_refused(bad, message):
    params = [torch.zeros(3, device="cuda"), torch.zeros(2, device="cuda")]
    tensors = [torch.ones(3, device="cuda"), torch.ones(2, device="cuda")]
    if bad == "meta":
        tensors[0] = torch.empty(3, device="meta")
    else:
        params[0] = params[0].cpu()
    with pytest.raises(RuntimeError, match=message):
        cuda_backend.add_scaled(params, tensors, 1.0)


@needs_gpu
def test_writes_are_visible_to_autograd_version_counters():
    params, grads = [torch.randn(10, device="cuda")], [torch.randn(10, device="cuda")]
    versions = params[0]._version, grads[0]._version
    cuda_backend.perturb(params, grads, 0.1, False)
    assert (params[0]._version, grads[0]._version) == (versions[0] + 1, versions[1] + 1)


@needs_gpu
def test_the_frontend_picks_the_cuda_backend_on_a_gpu():
    assert resolve("auto", torch.device("cuda")).name == "cuda"


def sassha_iteration(ops, state, lr, bias_correction1, bias_correction2, rho=0.05):
    """Norm of the first gradients, perturbation, update that leaves the perturbed point."""
    params, first_grads, second_grads, exp_avgs, exp_hessians = state
    norm = ops.global_norm(first_grads)
    ops.perturb(params, first_grads, rho / (norm + 1e-12), False)
    ops.sassha_update(params, second_grads, exp_avgs, exp_hessians, first_grads, lr=lr,
                      weight_decay=1e-2, beta1=0.9, bias_correction1=bias_correction1,
                      bias_correction2=bias_correction2, hessian_power=0.5, eps=1e-4)


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_a_perturb_and_update_step_replays_in_a_cuda_graph(dtype):
    """Captured once, each replay reads the values written into its inputs since, the
    learning rate and the bias corrections included."""
    shapes = [(1000,), (37, 3), (CHUNK + 3,), ()]
    state = [[torch.randn(s, device="cuda").to(dtype) for s in shapes] for _ in range(3)]
    state += [[torch.zeros(s, device="cuda") for s in shapes],
              [torch.rand(s, device="cuda") for s in shapes]]
    scalars = [torch.ones((), device="cuda") for _ in range(3)]
    side = torch.cuda.Stream()  # warm up off the capturing stream, as capture asks
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        sassha_iteration(cuda_backend, state, *scalars)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        sassha_iteration(cuda_backend, state, *scalars)

    for t in (1, 2):
        for grads in state[1:3]:
            for g in grads:
                g.copy_(torch.randn(g.shape, device="cuda"))
        values = (0.1 * t, 1 - 0.9 ** t, (1 - 0.999 ** t) ** 0.5)
        for tensor, value in zip(scalars, values):
            tensor.fill_(value)
        expected = [clone(ts) for ts in state]
        sassha_iteration(reference, expected, *values)
        graph.replay()
        torch.cuda.synchronize()
        assert_lists_close(state[1], expected[1], **STORED_TOLERANCE[dtype])  # perturbations
        assert_lists_close(state[3], expected[3], **STATE_TOLERANCE)
        assert_lists_close(state[0], expected[0], **STORED_TOLERANCE[dtype])


# -- without a GPU ------------------------------------------------------------------------------

def test_extension_has_its_cuda_part_where_a_toolkit_and_a_cuda_torch_are_present():
    if _C.cuda_status == "skipped: SASSHA_FAST_NO_CUDA=1":
        pytest.skip("the extension was built with SASSHA_FAST_NO_CUDA=1")
    if torch.version.cuda is None:
        pytest.skip(f"torch {torch.__version__} is not a CUDA build")
    if not (shutil.which("nvcc") or os.environ.get("CUDA_HOME")):
        pytest.skip("no CUDA toolkit here (no nvcc on PATH, no CUDA_HOME)")
    assert _C.with_cuda, _C.cuda_status
    assert _C.cuda_status.startswith("built for sm_"), _C.cuda_status


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: nothing to explain")
def test_available_backends_says_why_cuda_is_unavailable():
    status = available_backends()["cuda"]
    assert not status.available
    if _C.with_cuda:
        assert status.reason == "no CUDA device present"
    else:
        assert _C.cuda_status in status.reason
    with pytest.raises(RuntimeError, match=re.escape(status.reason)):
        resolve("cuda", torch.device("cuda"))


def test_runs_on_cuda_devices_only():
    assert cuda_backend.supports(torch.device("cuda", 0))
    assert not cuda_backend.supports(torch.device("cpu"))


def test_supports_dtype():
    assert all(cuda_backend.supports_dtype(d) for d in DTYPES)
    assert not cuda_backend.supports_dtype(torch.float64)


ARG_BYTES = [4096, 32764]  # every CUDA version; CUDA 12.1+ toolkits and drivers
OP_BYTES = 160  # what the op's functor and the kernel's other arguments may take


def plan(numels, depth, arg_bytes=4096):
    return _C.cuda_launch_plan(numels, depth, arg_bytes)


@needs_cuda_part
@pytest.mark.parametrize("arg_bytes", ARG_BYTES)
@pytest.mark.parametrize("depth", [1, 2, 4, 5])
def test_launch_plan_limits(depth, arg_bytes):
    limits = plan([], depth, arg_bytes)
    assert limits["launches"] == []
    assert limits["chunk"] == CHUNK
    slot_bytes = 1 if arg_bytes == 4096 else 2
    assert 0 < limits["max_blocks"] and 0 < limits["max_tensors"] < 256 ** slot_bytes
    # The kernel arguments hold the address table, the sizes and the block map, and leave
    # room for the op.
    table = limits["max_tensors"] * (8 * depth + 8) + 8 + limits["max_blocks"] * (4 + slot_bytes)
    assert table <= limits["args_bytes"] <= arg_bytes - OP_BYTES
    if arg_bytes > 4096:  # eight times the blocks, and many more tensors, per launch
        small = plan([], depth, 4096)
        assert limits["max_blocks"] >= 6 * small["max_blocks"]
        assert limits["max_tensors"] >= 6 * small["max_tensors"]


@needs_cuda_part
def test_launch_plan_refuses_other_argument_sizes():
    with pytest.raises(RuntimeError, match="4096 or 32764"):
        plan([1], 1, 8192)


@needs_gpu
def test_kernel_argument_size_in_use():
    assert _C.cuda_kernel_arg_bytes() in ARG_BYTES


def test_launch_plan_header_compiles_on_its_own(tmp_path):
    """launch_plan.h is plain C++ with every include it needs (no CUDA, no torch)."""
    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        pytest.skip("no C++ compiler on PATH")
    source = tmp_path / "alone.cpp"
    header = pathlib.Path(__file__).resolve().parents[2] / "csrc" / "cuda" / "launch_plan.h"
    source.write_text(f'#include "{header}"\n'
                      "template struct sassha::cuda::LaunchArgs<5, sassha::cuda::kLargeArgBytes>;\n"
                      "int main() {\n"
                      "  std::vector<std::array<void*, 1>> a(1);\n"
                      "  int launches = 0;\n"
                      "  sassha::cuda::plan_launches<1, sassha::cuda::kSmallArgBytes>(\n"
                      "      a, {5}, [&](const auto&, int) { ++launches; });\n"
                      "  return launches == 1 ? 0 : 1;\n}\n")
    done = subprocess.run([compiler, "-std=c++17", "-Wall", "-Werror", "-o",
                           str(tmp_path / "alone"), str(source)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert subprocess.run([str(tmp_path / "alone")]).returncode == 0


def numel_sets(depth, arg_bytes=4096):
    max_tensors = plan([], depth, arg_bytes)["max_tensors"]
    max_blocks = plan([], depth, arg_bytes)["max_blocks"]
    return {
        "zeros": [0, 0],
        "one": [1],
        "empty-among-others": [0, 5, 0, 7, 0],
        "one-chunk": [CHUNK],
        "chunk-and-one": [CHUNK + 1],
        "full-launch": [max_blocks * CHUNK],
        "full-launch-and-one": [max_blocks * CHUNK + 1],
        "split-twice": [3, 2 * max_blocks * CHUNK + 7, 11],
        "tensor-table-full": [1] * max_tensors,
        "tensor-table-full-and-one": [1] * (max_tensors + 1),
        "table-full-on-a-long-tensor": [1] * (max_tensors - 1) + [5 * CHUNK, 2],
        "many": [1 + (i * 7919) % (3 * CHUNK) for i in range(700)],
    }


@needs_cuda_part
@pytest.mark.parametrize("arg_bytes", ARG_BYTES)
@pytest.mark.parametrize("depth", [1, 2, 4, 5])
@pytest.mark.parametrize("case", numel_sets(1) if _C.with_cuda else [None])
def test_launch_plan_runs_every_chunk_once_in_order(depth, case, arg_bytes):
    numels = numel_sets(depth, arg_bytes)[case]
    result = plan(numels, depth, arg_bytes)
    seen, next_block = [], 0
    for launch in result["launches"]:
        assert launch["first_block"] == next_block
        blocks = launch["blocks"]
        assert 0 < len(blocks) <= result["max_blocks"]
        next_block += len(blocks)
        tensor_of_slot = {}
        for block in blocks:
            tensor = block["tensors"][0]
            assert block["tensors"] == [tensor] * depth  # every list's table agrees
            assert tensor_of_slot.setdefault(block["slot"], tensor) == tensor
            assert block["numel"] == numels[tensor]
            seen.append((tensor, block["chunk"]))
        assert len(tensor_of_slot) <= result["max_tensors"]
        assert len(set(tensor_of_slot.values())) == len(tensor_of_slot)
    assert seen == [(t, c) for t, n in enumerate(numels) for c in range(-(-n // CHUNK))]
