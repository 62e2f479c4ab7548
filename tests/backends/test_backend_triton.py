"""The triton backend: its kernels against the reference backend on the cases its launch
structure makes special (block boundaries, many tensors and large ones in one launch, empty
tensors between others), and what is particular to it: one launch per op, cached tables,
memory layouts, rounding, clear errors, kernels that compile for a GPU, and (on a GPU)
steps without host synchronisation that a CUDA graph can capture.

Without a GPU, conftest.py sets TRITON_INTERPRET=1 and everything runs on CPU tensors in
Triton's interpreter; with one, on CUDA tensors."""
import json
import math
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from sassha_fast.backends import reference
from sassha_fast.backends import triton as backend

from tensor_lists import STATE_TOLERANCE, STORED_TOLERANCE, PythonDispatched, assert_lists_close

REASON = backend.unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None,
                                reason=f"triton backend unavailable here: {REASON}")

if REASON is None:
    from sassha_fast.triton_kernels import kernels, launch, tables
    INTERPRETED = bool(kernels.INTERPRETED)
    DEVICE = torch.device("cpu" if INTERPRETED else "cuda")
    BLOCK_LIMIT = tables.block_size(1 << 40, INTERPRETED)  # the largest block
else:
    INTERPRETED, DEVICE, BLOCK_LIMIT = False, torch.device("cpu"), 1024
ON_GPU = DEVICE.type == "cuda"

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
SHAPES = {
    "empty-list": [],
    "empty-tensors-between": [(0,), (5,), (0, 4), (3,)],
    "one-element": [(1,)],
    "odd-sizes": [(3,), (5, 7), (129,), (2, 3, 5)],
    "block-boundaries": [(BLOCK_LIMIT - 1,), (BLOCK_LIMIT,), (BLOCK_LIMIT + 1,)],
    "large": [(70_001,)],
    "many": [(1 + (i * 53) % 257,) for i in range(50)],
    "large-and-small": [(70_001,), (1,), (300,), (0,), (2 * BLOCK_LIMIT + 5,)],
}
STEP = dict(lr=0.05, weight_decay=1e-2, beta1=0.9, bias_correction1=1 - 0.9 ** 3, eps=1e-4)

shapes_param = pytest.mark.parametrize("shapes", SHAPES.values(), ids=SHAPES.keys())
dtype_param = pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16", "fp16"])


def randn(shapes, dtype=torch.float32, scale=1.0, positive=False):
    out = []
    for shape in shapes:
        t = torch.randn(shape) * scale
        out.append((t.abs() if positive else t).to(device=DEVICE, dtype=dtype))
    return out


def on_cpu(lists):
    """Copies for the reference backend (which runs on the CPU)."""
    return [None if ts is None else [t.detach().cpu().clone() for t in ts] for ts in lists]


def scalar(value, as_tensor):
    return torch.tensor(value, device=DEVICE) if as_tensor else value


def assert_scalar_close(got, want):
    assert got.dim() == 0 and got.dtype == torch.float32
    assert math.isclose(got.item(), want.item(), rel_tol=1e-5, abs_tol=1e-6)


# -- every op against the reference --------------------------------------------------

@shapes_param
@dtype_param
@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "weighted"])
def test_global_norm(shapes, dtype, weighted):
    xs, ws = randn(shapes, dtype), (randn(shapes, dtype) if weighted else None)
    want = reference.global_norm(*on_cpu([xs, ws]))
    assert_scalar_close(backend.global_norm(xs, ws), want)


@shapes_param
@dtype_param
@pytest.mark.parametrize("adaptive", [False, True], ids=["sam", "adaptive"])
@pytest.mark.parametrize("tensor_scale", [False, True], ids=["float", "tensor"])
def test_perturb(shapes, dtype, adaptive, tensor_scale):
    params, grads = randn(shapes, dtype), randn(shapes, dtype)
    want_p, want_g = on_cpu([params, grads])
    reference.perturb(want_p, want_g, 0.037, adaptive)
    backend.perturb(params, grads, scalar(0.037, tensor_scale), adaptive)
    assert_lists_close(grads, want_g, **STORED_TOLERANCE[dtype])
    assert_lists_close(params, want_p, **STORED_TOLERANCE[dtype])


def update_inputs(shapes, dtype):
    return [randn(shapes, dtype), randn(shapes, dtype), randn(shapes, scale=0.1),
            randn(shapes, positive=True)]


@shapes_param
@dtype_param
@pytest.mark.parametrize("perturbed", [False, True], ids=["plain", "unperturbs"])
def test_sassha_update(shapes, dtype, perturbed):
    inputs = update_inputs(shapes, dtype) + [randn(shapes, dtype, 0.01) if perturbed else None]
    want = on_cpu(inputs)
    hyper = dict(STEP, hessian_power=0.5, bias_correction2=(1 - 0.999 ** 3) ** 0.5)
    reference.sassha_update(*want, **hyper)
    backend.sassha_update(*inputs, **hyper)
    assert_lists_close(inputs[2], want[2], **STATE_TOLERANCE)
    assert_lists_close(inputs[0], want[0], **STORED_TOLERANCE[dtype])


@pytest.mark.parametrize("hessian_power", [0.0, 0.3, 0.5, 1.0])
def test_sassha_update_powers_with_zero_curvature(hessian_power):
    """Every specialisation of D^power, including D = 0 (and 0^0 = 1). eps = 1 keeps the
    step where D = 0 small, so that comparing parameters stays well conditioned."""
    shapes = SHAPES["odd-sizes"] + SHAPES["large"]
    inputs = update_inputs(shapes, torch.float32) + [None]
    for d in inputs[3]:
        d[::3] = 0.0
    want = on_cpu(inputs)
    hyper = dict(STEP, hessian_power=hessian_power, eps=1.0,
                 bias_correction2=(1 - 0.999 ** 3) ** hessian_power)
    reference.sassha_update(*want, **hyper)
    backend.sassha_update(*inputs, **hyper)
    assert_lists_close(inputs[2], want[2], **STATE_TOLERANCE)
    assert_lists_close(inputs[0], want[0], **STORED_TOLERANCE[torch.float32])


@shapes_param
@dtype_param
def test_hessian_ema(shapes, dtype):
    exp_hessians, estimates = randn(shapes, positive=True), randn(shapes, dtype)
    want, _ = on_cpu([exp_hessians, estimates])
    reference.hessian_ema(want, on_cpu([estimates])[0], 0.99)
    backend.hessian_ema(exp_hessians, estimates, 0.99)
    assert_lists_close(exp_hessians, want, **STATE_TOLERANCE)


@shapes_param
@dtype_param
@pytest.mark.parametrize("tensor_factor", [False, True], ids=["float", "tensor"])
def test_msassha_update(shapes, dtype, tensor_factor):
    inputs = update_inputs(shapes, dtype)
    want = on_cpu(inputs)
    hyper = dict(STEP, hessian_power=0.5, bias_correction2=(1 - 0.999 ** 3) ** 0.5)
    want_sq = reference.msassha_update(*want, norm_factor=0.3, **hyper)
    got_sq = backend.msassha_update(*inputs, norm_factor=scalar(0.3, tensor_factor), **hyper)
    assert_lists_close(inputs[2], want[2], **STATE_TOLERANCE)
    assert_lists_close(inputs[0], want[0], **STORED_TOLERANCE[dtype])
    assert_scalar_close(got_sq, want_sq)


@shapes_param
@dtype_param
@pytest.mark.parametrize("tensor_alpha", [False, True], ids=["float", "tensor"])
def test_add_scaled(shapes, dtype, tensor_alpha):
    params, momenta = randn(shapes, dtype), randn(shapes)
    want, want_momenta = on_cpu([params, momenta])
    reference.add_scaled(want, want_momenta, -0.25)
    backend.add_scaled(params, momenta, scalar(-0.25, tensor_alpha))
    assert_lists_close(params, want, **STORED_TOLERANCE[dtype])


# -- what is particular to the triton backend ----------------------------------------

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # numpy, fp16
def test_stores_round_to_nearest_even(dtype):
    """0 + 1 * t is t exactly in fp32, so the stored value must be t.to(dtype) bit for bit:
    ties, values that round up to the next binade or overflow, subnormals, inf and NaN."""
    bits = torch.tensor([0x3F808000, 0x3F818000, 0x3F80FFFF, 0x3FFFFFFF, 0x7F7FFFFF,
                         0x00012345, 0x80008000, 0x477FF000, 0x33000001], dtype=torch.int64)
    special = bits.to(torch.int32).view(torch.float32)
    values = torch.cat([special, torch.tensor([math.inf, -math.inf, math.nan]),
                        torch.randn(5000), torch.randn(5000) * 1e-6]).to(DEVICE)
    params = [torch.zeros(values.shape, dtype=dtype, device=DEVICE)]
    backend.add_scaled(params, [values], 1.0)
    want = values.to(dtype)
    assert torch.equal(params[0].isnan(), want.isnan())
    finite = ~want.isnan()
    assert torch.equal(params[0][finite].view(torch.int16), want[finite].view(torch.int16))


def test_one_launch_per_op(monkeypatch):
    launches = []

    class Counted:
        def __init__(self, name, kernel):
            self.name, self.kernel = name, kernel

        def __getitem__(self, grid):
            launches.append(self.name)
            return self.kernel[grid]

    for name in ("sum_squares_kernel", "finish_sum_kernel", "perturb_kernel",
                 "sassha_update_kernel", "hessian_ema_kernel", "msassha_update_kernel",
                 "add_scaled_kernel"):
        monkeypatch.setattr(kernels, name, Counted(name, getattr(kernels, name)))
    shapes = SHAPES["many"]
    params, grads, exp_avgs, exp_hessians = update_inputs(shapes, torch.float32)
    hyper = dict(STEP, hessian_power=0.5, bias_correction2=0.1)
    expected = {
        "global_norm": lambda: backend.global_norm(grads, params),
        "perturb": lambda: backend.perturb(params, grads, torch.tensor(0.1, device=DEVICE), True),
        "sassha_update": lambda: backend.sassha_update(params, grads, exp_avgs, exp_hessians,
                                                       grads, **hyper),
        "hessian_ema": lambda: backend.hessian_ema(exp_hessians, grads, 0.9),
        "msassha_update": lambda: backend.msassha_update(
            params, grads, exp_avgs, exp_hessians, norm_factor=0.1, **hyper),
        "add_scaled": lambda: backend.add_scaled(params, exp_avgs, -0.1),
    }
    for op, call in expected.items():
        launches.clear()
        call()
        reduction = ["finish_sum_kernel"] if op in ("global_norm", "msassha_update") else []
        first = "sum_squares_kernel" if op == "global_norm" else f"{op}_kernel"
        assert launches == [first] + reduction, op


def test_tables_are_cached_by_address_and_size(monkeypatch):
    builds = []
    build = tables._build
    monkeypatch.setattr(tables, "_build", lambda *a, **k: builds.append(a) or build(*a, **k))
    tables.clear_cache()
    params, momenta = randn([(10,), (300,)]), randn([(10,), (300,)])
    backend.add_scaled(params, momenta, 0.5)
    backend.add_scaled(params, momenta, 0.5)
    assert len(builds) == 1
    # Other tensor objects over the same memory and sizes: the table is still right.
    backend.add_scaled([params[0].view(2, 5), params[1].view(30, 10)],
                       [momenta[0].view(2, 5), momenta[1].view(30, 10)], 0.5)
    assert len(builds) == 1
    # Same addresses, another size: another table.
    backend.add_scaled([params[0][:5], params[1]], [momenta[0][:5], momenta[1]], 0.5)
    assert len(builds) == 2


def test_table_cache_is_bounded():
    tables.clear_cache()
    momenta = randn([(4,)])
    kept_alive = [randn([(4,)]) for _ in range(tables.CACHE_SIZE + 5)]  # distinct addresses
    for params in kept_alive:
        backend.add_scaled(params, momenta, 1.0)
    assert len(tables._cache) == tables.CACHE_SIZE


@dtype_param
def test_layouts(dtype):
    """Tensors of one position in memory orders that differ (a transposed gradient), with
    gaps (a strided view, which must leave the rest of its base untouched), or shared but
    not contiguous (channels_last)."""
    base = torch.randn(6, 10, device=DEVICE).to(dtype)
    strided = base[:, ::2]
    transposed = torch.randn(5, 6, device=DEVICE).to(dtype).t()
    channels_last = torch.randn(2, 3, 4, 5, device=DEVICE).to(dtype).to(
        memory_format=torch.channels_last)
    params = [strided, transposed, channels_last]
    grads = [torch.randn(p.shape, device=DEVICE).to(dtype) for p in params[:2]] + [
        torch.randn_like(channels_last)]
    untouched = base[:, 1::2].clone()
    want_p, want_g = on_cpu([params, grads])
    reference.perturb(want_p, want_g, 0.5, True)
    backend.perturb(params, grads, 0.5, True)
    assert_lists_close(params, want_p, **STORED_TOLERANCE[dtype])
    assert_lists_close(grads, want_g, **STORED_TOLERANCE[dtype])
    assert torch.equal(base[:, 1::2], untouched)
    assert channels_last.is_contiguous(memory_format=torch.channels_last)


def aligned_rows(table):
    n = table.plan.n_tensors
    return table.data[2 * n + 1:3 * n + 1].tolist()


def test_alignment_is_decided_per_tensor():
    """Views that start between 16-byte boundaries take the kernels' unhinted path; the
    aligned tensors beside them keep 16-byte accesses (a tensor is aligned when all its
    lists are)."""
    base, other = torch.randn(2001, device=DEVICE), torch.randn(2003, device=DEVICE)
    assert base.data_ptr() % 16 == 0 and other.data_ptr() % 16 == 0
    params = [base[1:800], base[804:1004], base[1005:1012]]
    momenta = [other[3:802], other[804:1004], other[1009:1016]]
    want, want_momenta = on_cpu([params, momenta])
    tables.clear_cache()
    backend.add_scaled(params, momenta, 0.75)
    reference.add_scaled(want, want_momenta, 0.75)
    assert_lists_close(params, want, **STORED_TOLERANCE[torch.float32])
    (table,) = tables._cache.values()
    assert aligned_rows(table) == [0, 1, 0]


def test_clear_errors():
    p, g = randn([(3,), (4,)]), randn([(3,), (5,)])
    with pytest.raises(ValueError, match="shape"):
        backend.perturb(p, g, 1.0, False)
    with pytest.raises(ValueError, match="tensors"):
        backend.add_scaled(p, p[:1], 1.0)
    with pytest.raises(TypeError, match="mixed dtypes"):
        backend.add_scaled([p[0], p[1].half()], p, 1.0)
    with pytest.raises(TypeError, match="float64"):
        backend.global_norm([p[0].double()])
    with pytest.raises(TypeError, match="float32"):  # optimizer state must be fp32
        backend.hessian_ema([p[0].half()], [p[0]], 0.9)
    with pytest.raises(ValueError, match="alpha must be a number or a one-element tensor"):
        backend.add_scaled(p, p, torch.ones(2, device=DEVICE))


@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA device (tensors on two devices)")
def test_device_mismatch_is_an_error():
    with pytest.raises(ValueError, match="cpu"):
        backend.add_scaled([torch.zeros(3, device=DEVICE)], [torch.zeros(3)], 1.0)


def test_availability_follows_the_mode():
    assert backend.unavailable_reason() is None
    assert backend.supports(torch.device("cpu")) == INTERPRETED
    assert backend.supports(torch.device("cuda")) == (not INTERPRETED)


def run_python(code_or_script, env_changes):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(env_changes)
    args = [sys.executable] + ([str(code_or_script)] if isinstance(code_or_script, pathlib.Path)
                               else ["-c", code_or_script])
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.skipif(ON_GPU, reason="with a GPU the compiled mode is available")
def test_compiled_mode_without_a_gpu_says_why():
    out = run_python("import sassha_fast.backends.triton as b; print(b.unavailable_reason())",
                     {"CUDA_VISIBLE_DEVICES": ""})
    assert "no CUDA device" in out and "TRITON_INTERPRET=1" in out


def test_without_triton_the_reason_is_given_and_auto_falls_back():
    out = run_python(
        "import sys; sys.modules['triton'] = None\n"  # what a missing package looks like
        "import torch, sassha_fast\n"
        "from sassha_fast.backends import triton\nfrom sassha_fast.functional import resolve\n"
        "print(sassha_fast.available_backends()['triton'])\n"
        "print(triton.supports(torch.device('cuda')), triton.supports(torch.device('cpu')))\n"
        "print(resolve('auto', torch.device('cpu')).name)\n"
        "print(resolve('auto', torch.device('cuda')).name)\n", {}).splitlines()
    assert out[0] == "triton is not installed"
    assert out[1] == "False False"
    assert out[2] != "triton" and out[3] != "triton"


def test_without_the_extension_the_triton_ops_are_defined_and_run():
    """The namespace sassha_fast is the C++ extension's (TORCH_LIBRARY); the triton ops add
    to it as a fragment, so they must not need the extension to be loaded."""
    out = run_python(
        "import sys; sys.modules['sassha_fast._C'] = None\n"  # an extension that failed to build
        "import torch, sassha_fast\n"
        "from sassha_fast.backends import triton\n"
        "print(sassha_fast.available_backends()['cpu'].available, triton.unavailable_reason())\n"
        "print(hasattr(torch.ops.sassha_fast, 'add_scaled'))\n"
        "device = 'cpu' if triton.kernels.INTERPRETED else 'cuda'\n"
        "p = [torch.ones(5, device=device)]\n"
        "triton.add_scaled(p, [torch.ones(5, device=device)], 2.0)\n"
        "print(p[0].tolist())\n",
        {"TRITON_INTERPRET": "1"} if INTERPRETED else {}).splitlines()
    assert out == ["False None", "False", "[3.0, 3.0, 3.0, 3.0, 3.0]"]


def test_kernels_compile_for_a_gpu():
    """The interpreter accepts code the GPU compiler rejects: compile every kernel for sm_90
    (no GPU needed) and check that full blocks use 16-byte vector loads and stores."""
    script = pathlib.Path(__file__).resolve().parents[1] / "support" / "triton_compile_check.py"
    report = json.loads(run_python(script, {}).splitlines()[-1])
    assert len(report) == 25
    for variant, instructions in report.items():
        if variant != "finish_sum":
            assert "ld.global.v4.b32" in instructions, variant
        if variant.endswith("fp32") and not variant.startswith("sum_squares"):
            assert "st.global.v4.b32" in instructions, variant


def sassha_iteration(params, grads, exp_avgs, exp_hessians, rho):
    """perturb_weights + update of SASSHA, as the frontend calls the ops (norm on device)."""
    norm = backend.global_norm(grads, None)
    backend.perturb(params, grads, rho / (norm + 1e-12), False)
    backend.sassha_update(params, grads, exp_avgs, exp_hessians, grads,
                          **dict(STEP, hessian_power=0.5, bias_correction2=0.03))


@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA device (synchronisation is a GPU matter)")
def test_no_host_synchronisation():
    inputs = update_inputs(SHAPES["large-and-small"], torch.bfloat16)
    factor = torch.tensor(0.1, device=DEVICE)
    hyper = dict(STEP, hessian_power=0.7, bias_correction2=0.03)
    sassha_iteration(*inputs, rho=0.05)  # compiles the kernels and builds the tables
    backend.msassha_update(*inputs, norm_factor=factor, **hyper)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        sassha_iteration(*inputs, rho=0.05)
        backend.msassha_update(*inputs, norm_factor=factor, **hyper)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA device (CUDA graphs)")
def test_a_step_can_be_captured_in_a_cuda_graph():
    inputs = update_inputs(SHAPES["large-and-small"], torch.float32)
    eager = [[t.clone() for t in ts] for ts in inputs]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up: compile the kernels, build the tables
        sassha_iteration(*[[t.clone() for t in ts] for ts in inputs], rho=0.05)
        sassha_iteration(*inputs, rho=0.05)
    torch.cuda.current_stream().wait_stream(side)
    sassha_iteration(*eager, rho=0.05)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        sassha_iteration(*inputs, rho=0.05)
    tables.clear_cache()  # the graph keeps its tables: reusing their memory changes nothing
    scratch = [torch.full((1 << 16,), -1, dtype=torch.int64, device=DEVICE) for _ in range(8)]
    for _ in range(3):
        graph.replay()
        sassha_iteration(*eager, rho=0.05)
    torch.cuda.synchronize()
    del scratch
    for got, want in zip(inputs, eager):
        assert_lists_close(got, [t.cpu() for t in want], **STATE_TOLERANCE)


# -- the op contract: found_inf, tensor scalars, empty lists, dtypes, tensor kinds ----

FOUND_INF_SHAPES = [(5,), (1000,), (0,), (130,)]


@pytest.mark.parametrize("value", [1.0, math.nan, 0.0], ids=["inf-found", "nan", "clear"])
@dtype_param
def test_found_inf_skips_on_the_device(value, dtype):
    """found_inf nonzero (NaN included): perturb stores e = 0 and leaves p; sassha_update
    only leaves the perturbed point; hessian_ema and msassha_update change nothing (the
    latter returns sum m^2 of the unchanged m). Zero: the ordinary ops."""
    found_inf = torch.tensor(value, device=DEVICE)
    skip = value != 0.0
    hyper = dict(STEP, hessian_power=0.7, bias_correction2=0.03)
    params, grads, exp_avgs, exp_hessians = update_inputs(FOUND_INF_SHAPES, dtype)
    perturbations = randn(FOUND_INF_SHAPES, dtype, 0.01)
    before = on_cpu([params, grads, exp_avgs, exp_hessians, perturbations])

    p, g = on_cpu([params, grads])
    backend.perturb(p, g, 0.1, True, found_inf=found_inf)
    want_p, want_g = on_cpu([params, grads])
    if skip:
        want_g = [torch.zeros_like(t) for t in want_g]
    else:
        reference.perturb(want_p, want_g, 0.1, True)
    p_tolerance = dict(rtol=0, atol=0) if skip else STORED_TOLERANCE[dtype]
    assert_lists_close(p, want_p, **p_tolerance)
    assert_lists_close(g, want_g, **STORED_TOLERANCE[dtype])

    inputs = on_cpu([params, grads, exp_avgs, exp_hessians, perturbations])
    backend.sassha_update(*inputs, **hyper, found_inf=found_inf)
    want = on_cpu(before)
    if skip:
        want[0] = [(x.float() - e.float()).to(dtype) for x, e in zip(want[0], want[4])]
    else:
        reference.sassha_update(*want, **hyper)
    for got_list, want_list in zip(inputs[:4], want[:4]):
        assert_lists_close(got_list, want_list, **STORED_TOLERANCE[dtype])
    if skip:
        assert_lists_close(inputs[2], before[2], rtol=0, atol=0)

    exp_hessians_now = on_cpu([exp_hessians])[0]
    backend.hessian_ema(exp_hessians_now, grads, 0.9, found_inf=found_inf)
    want_d = on_cpu([exp_hessians])[0]
    if not skip:
        reference.hessian_ema(want_d, on_cpu([grads])[0], 0.9)
    assert_lists_close(exp_hessians_now, want_d, **STATE_TOLERANCE)

    inputs = on_cpu(before[:4])
    got_sq = backend.msassha_update(*inputs, norm_factor=0.3, **hyper, found_inf=found_inf)
    want = on_cpu(before[:4])
    if skip:
        want_sq = sum((m * m).sum() for m in want[2])
        assert_lists_close(inputs[0], before[0], rtol=0, atol=0)
        assert_lists_close(inputs[2], before[2], rtol=0, atol=0)
    else:
        want_sq = reference.msassha_update(*want, norm_factor=0.3, **hyper)
        assert_lists_close(inputs[0], want[0], **STORED_TOLERANCE[dtype])
    assert_scalar_close(got_sq, torch.as_tensor(want_sq, dtype=torch.float32))


def test_step_scalars_may_be_device_tensors():
    """lr and both bias corrections read on the device, for both updates."""
    shapes = SHAPES["odd-sizes"] + [(5000,)]
    hyper = dict(STEP, hessian_power=0.5, bias_correction2=0.03)
    as_tensors = dict(hyper, **{k: torch.tensor(float(hyper[k]), device=DEVICE)
                                for k in ("lr", "bias_correction1", "bias_correction2")})
    inputs = update_inputs(shapes, torch.float32)
    want = on_cpu(inputs)
    reference.sassha_update(*want, None, **hyper)
    backend.sassha_update(*inputs, None, **as_tensors)
    assert_lists_close(inputs[0], want[0], **STORED_TOLERANCE[torch.float32])
    inputs = update_inputs(shapes, torch.float32)
    want = on_cpu(inputs)
    want_sq = reference.msassha_update(*want, norm_factor=0.3, **hyper)
    got_sq = backend.msassha_update(*inputs, norm_factor=torch.tensor(0.3, device=DEVICE),
                                    **as_tensors)
    assert_lists_close(inputs[0], want[0], **STORED_TOLERANCE[torch.float32])
    assert_scalar_close(got_sq, want_sq)


def test_empty_lists_give_zeros_on_the_kernels_device():
    hyper = dict(STEP, hessian_power=0.5, bias_correction2=0.03)
    for got in (backend.global_norm([]), backend.msassha_update([], [], [], [], norm_factor=0.1,
                                                                **hyper)):
        assert got.dim() == 0 and got.dtype == torch.float32 and got.item() == 0.0
        assert got.device.type == DEVICE.type


def test_supports_dtype():
    assert all(backend.supports_dtype(d) for d in DTYPES)
    assert not backend.supports_dtype(torch.float64)


def test_a_subclass_dispatched_to_python_gets_the_op_not_the_kernel():
    """As with every PyTorch operator: the subclass's __torch_dispatch__ decides (DTensor
    refuses an op it has no sharding rule for); the kernel never reads its memory."""
    p, g = randn([(3,), (4,)]), randn([(3,), (4,)])
    before = on_cpu([p])[0]
    PythonDispatched.seen.clear()
    backend.perturb(p, [g[0], PythonDispatched(g[1])], 0.1, False)
    assert PythonDispatched.seen == [torch.ops.sassha_fast.triton_perturb.default]
    assert_lists_close(p, before, rtol=0, atol=0)


class ParameterSubclass(torch.nn.Parameter):
    pass


def test_a_subclass_without_its_own_dispatch_is_updated_in_its_memory():
    odd = ParameterSubclass(torch.ones(4, device=DEVICE))
    with torch.no_grad():
        backend.add_scaled([torch.zeros(3, device=DEVICE), odd],
                           [torch.ones(3, device=DEVICE), torch.ones(4, device=DEVICE)], 1.0)
    assert torch.equal(odd.detach().cpu(), torch.full((4,), 2.0))


def test_meta_tensors_run_the_fake_kernels():
    """Meta tensors hold no data: an op checks them and writes nothing, as PyTorch's own
    operators do; mixed with tensors that hold data, they are refused by name."""
    meta = [torch.empty(5, device="meta", dtype=torch.bfloat16)]
    norm = backend.global_norm(meta)
    assert norm.device.type == "meta" and norm.dtype == torch.float32 and norm.shape == ()
    backend.add_scaled(meta, meta, 0.5)
    with pytest.raises(RuntimeError, match=rf"add_scaled: tensors\[0\] is on meta, but "
                       rf"params\[0\] is on {DEVICE.type}"):
        backend.add_scaled(randn([(3,)]), [torch.empty(3, device="meta")], 0.1)


# -- launch shapes at LLM scale, computed without allocating -------------------------

def llama_7b_numels():
    """Parameter sizes of a LLaMA-7B-shaped model: 32 blocks of attention (4 x 4096^2), MLP
    (3 x 4096 x 11008) and two norms, embeddings, final norm, output head."""
    block = [4096 * 4096] * 4 + [4096 * 11008] * 3 + [4096] * 2
    return [32000 * 4096] + block * 32 + [4096, 32000 * 4096]


def test_tables_and_partials_at_7b_parameters():
    numels = llama_7b_numels()
    assert 6.7e9 < sum(numels) < 6.8e9
    for lists in (1, 2, 4, 5):
        plan = tables.plan(numels, lists, interpreted=False)
        assert plan.block == tables.MAX_BLOCK and plan.n_tensors == len(numels) == 291
        assert plan.n_blocks == sum(-(-n // plan.block) for n in numels)  # 1.65M programs
        # One row per tensor: under 20 KiB, where a row per block took 3 * 8 B * 1.65M = 39 MB.
        assert plan.entries == (3 + lists) * len(numels) + 1 and plan.entries * 8 < 20 * 1024
        assert 2 ** plan.search_steps >= plan.n_tensors > 2 ** (plan.search_steps - 1)
    for sms in (108, 132):  # A100, H100/H200
        programs = tables.reduction_programs(plan.n_blocks, sms)
        assert programs == tables.PROGRAMS_PER_SM * sms <= launch.FINISH_BLOCK
    assert tables.reduction_programs(3, 132) == 3 and tables.reduction_programs(0, 132) == 1


def test_plan_leaves_out_empty_tensors():
    plan = tables.plan([0, 5, 0, 300, 0], 2, interpreted=False)
    assert (plan.n_tensors, plan.block, plan.n_blocks, plan.search_steps) == (2, 512, 2, 1)
    assert tables.plan([], 1, interpreted=False).n_blocks == 0


@pytest.fixture
def gpu_block_sizes(monkeypatch):
    """The interpreter with the GPU's largest block: tensors of 4097-32768 elements then span
    several blocks, as they do on a GPU."""
    monkeypatch.setattr(tables, "MAX_BLOCK_INTERPRETED", tables.MAX_BLOCK)
    tables.clear_cache()
    yield
    tables.clear_cache()


GPU_BLOCK_SHAPES = [(4097,), (3,), (8192,), (12_289,), (32_768,)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_multi_block_tensors_at_gpu_block_sizes(gpu_block_sizes, dtype):
    plan = tables.plan([math.prod(s) for s in GPU_BLOCK_SHAPES], 4, INTERPRETED)
    assert plan.block == tables.MAX_BLOCK and plan.n_blocks == 2 + 1 + 2 + 4 + 8
    hyper = dict(STEP, hessian_power=0.3, bias_correction2=0.03)
    inputs = update_inputs(GPU_BLOCK_SHAPES, dtype)
    perturbations = randn(GPU_BLOCK_SHAPES, dtype, 0.01)
    want = on_cpu(inputs + [perturbations])
    assert_scalar_close(backend.global_norm(inputs[1], inputs[0]),
                        reference.global_norm(want[1], want[0]))
    reference.sassha_update(*want, **hyper)
    backend.sassha_update(*inputs, perturbations, **hyper)
    assert_lists_close(inputs[2], want[2], **STATE_TOLERANCE)
    assert_lists_close(inputs[0], want[0], **STORED_TOLERANCE[dtype])
    want = on_cpu(inputs)
    want_sq = reference.msassha_update(*want, norm_factor=0.2, **hyper)
    got_sq = backend.msassha_update(*inputs, norm_factor=0.2, **hyper)
    assert_lists_close(inputs[0], want[0], **STORED_TOLERANCE[dtype])
    assert_scalar_close(got_sq, want_sq)


@pytest.mark.skipif(not INTERPRETED, reason="checks the interpreter's arithmetic")
def test_pow_by_exp2_accuracy():
    """The power the kernels use for hessian_power other than 0.5 and 1, against torch.pow
    in float64, over D from 2^-60 to 2^40: a relative error within (|p log2 D| + 2) ulp of
    fp32 (the error of exp2 grows with its argument), and exact at D = 0."""
    import triton
    import triton.language as tl

    @triton.jit
    def pow_kernel(d_ptr, out_ptr, power, N: tl.constexpr):
        offs = tl.arange(0, N)
        tl.store(out_ptr + offs, kernels.pow_by_exp2(tl.load(d_ptr + offs), power))

    d = torch.cat([torch.zeros(1), torch.logspace(-60, 40, 4095, base=2.0)])
    worst = {}
    for power in (0.0, 0.25, 0.3, 0.7, 1.5, 2.0):
        out = torch.empty_like(d)
        pow_kernel[(1,)](d, out, power, N=d.numel())
        want = d.double().pow(power)
        assert out[0].item() == want[0].item()
        rel = ((out[1:].double() - want[1:]) / want[1:]).abs()
        bound = ((power * d[1:].double().log2()).abs() + 2) * 2.0 ** -23
        assert (rel <= bound).all(), (power, rel.max().item())
        worst[power] = rel.max().item()
    print("pow_by_exp2 worst relative error per power:", worst)


def test_tables_built_during_capture_are_kept_and_not_cached(monkeypatch):
    """The capture policy, with capture simulated: a cached table is reused and kept for
    good; a missing one is built (its copy is captured), kept, and not cached, since its
    contents exist only once the graph runs."""
    tables.clear_cache()
    params, momenta = randn([(10,), (300,)]), randn([(10,), (300,)])
    backend.add_scaled(params, momenta, 0.5)  # warm-up: cached
    (warm,) = tables._cache.values()
    kept = len(tables._captured)
    monkeypatch.setattr(tables, "_capturing", lambda device: True)
    backend.add_scaled(params, momenta, 0.5)
    assert tables._captured[kept:] == [warm]
    others = randn([(10,), (300,)])
    backend.add_scaled(others, momenta, 0.5)
    assert len(tables._captured) == kept + 2 and tables._captured[-1] is not warm
    assert list(tables._cache.values()) == [warm]
    del tables._captured[kept:]


@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA device (streams)")
def test_a_cached_table_is_safe_on_another_stream():
    params, momenta = randn([(70_001,), (5,)]), randn([(70_001,), (5,)])
    want, want_momenta = on_cpu([params, momenta])
    tables.clear_cache()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        backend.add_scaled(params, momenta, 0.5)  # the table's copy runs on `side`
    (table,) = tables._cache.values()
    assert table.stream == side
    backend.add_scaled(params, momenta, 0.5)  # the current stream waits for that copy
    torch.cuda.synchronize()
    reference.add_scaled(want, want_momenta, 1.0)
    assert_lists_close(params, want, **STORED_TOLERANCE[torch.float32])
