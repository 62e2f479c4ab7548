"""What only the cpu backend (the C++ kernels in csrc/cpu) has: work split across threads
by ranges of the whole flattened list, huge and numerous tensors, the AVX-512 / AVX2 /
generic builds, staged non-contiguous tensors, input checks (tensor subclasses, meta
tensors, scalar tensors), scalars read in C++ and the GIL released while a kernel runs. The
op-by-op and optimizer-level comparisons with the reference that every backend passes are
in test_backend_ops.py, test_backend_optimizer.py and test_golden.py."""
import functools
import json
import os
import subprocess
import sys
import threading
import time
from typing import List, Optional, Set

import pytest
import torch

from sassha_fast import SASSHA, available_backends, build_info
from sassha_fast.backends import reference
from sassha_fast.functional import resolve
from sassha_fast.backends.reference import compute_dtype

from tensor_lists import STATE_TOLERANCE, STORED_TOLERANCE, clone, state_tolerance

pytestmark = pytest.mark.skipif(not available_backends()["cpu"].available,
                                reason=f"cpu backend unavailable: {available_backends()['cpu']}")

if available_backends()["cpu"].available:
    from sassha_fast.backends import cpu

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
HYPER = dict(lr=0.05, weight_decay=1e-2, beta1=0.9, bias_correction1=0.271, eps=1e-4)
# Sizes around the smallest chunk threads take (16384 elements), so that chunks start and
# end inside tensors and some chunks cover several tensors.
SPANNING_SHAPES = [(17,), (40_000,), (3,), (0,), (70_001,), (1,), (5, 5_000), (9_999,)]


def inputs(shapes, dtype):
    def make(dt, positive=False, scale=1.0):
        out = []
        for shape in shapes:
            t = torch.randn(shape) * scale
            out.append((t.abs() if positive else t).to(dt))
        return out
    state = compute_dtype(dtype)
    return dict(params=make(dtype), grads=make(dtype), perturbations=make(dtype, scale=0.01),
                exp_avgs=make(state, scale=0.1),
                exp_hessians=make(state, positive=True), hessians=make(dtype))


def run_every_op(ops, x, hessian_power=0.5):
    """Every op on fresh copies of ``x``; returns what each op wrote or returned."""
    out = {"norm": ops.global_norm(x["grads"]),
           "weighted_norm": ops.global_norm(x["grads"], x["params"])}
    for adaptive in (False, True):
        p, g = clone(x["params"]), clone(x["grads"])
        ops.perturb(p, g, torch.tensor(0.037, dtype=x["exp_avgs"][0].dtype), adaptive)
        out[f"perturb_p_{adaptive}"], out[f"perturb_e_{adaptive}"] = p, g
    hyper = dict(HYPER, hessian_power=hessian_power, bias_correction2=0.3)
    p, m, d = clone(x["params"]), clone(x["exp_avgs"]), clone(x["exp_hessians"])
    ops.hessian_ema(d, x["hessians"], 0.999)
    out["ema"] = d
    ops.sassha_update(p, x["grads"], m, d, x["perturbations"], **hyper)
    out["sassha_p"], out["sassha_m"] = p, m
    p, m = clone(x["params"]), clone(x["exp_avgs"])
    out["msassha_sq"] = ops.msassha_update(p, x["grads"], m, x["exp_hessians"],
                                           norm_factor=0.3, **hyper)
    out["msassha_p"], out["msassha_m"] = p, m
    p = clone(x["params"])
    ops.add_scaled(p, x["exp_avgs"], -0.25)
    out["add_scaled"] = p
    return out


def assert_close_to_reference(got, want, dtype):
    for key, value in want.items():
        tolerance = state_tolerance(dtype) if key.endswith(("_m", "ema")) else \
            STORED_TOLERANCE[dtype]
        if isinstance(value, list):
            for a, b in zip(got[key], value):
                torch.testing.assert_close(a, b, **tolerance, msg=lambda m: f"{key}: {m}")
        else:
            assert got[key].dim() == 0 and got[key].dtype == compute_dtype(dtype)
            torch.testing.assert_close(got[key], value, **state_tolerance(dtype))


@pytest.fixture
def threads():
    """Sets torch's (and so the kernels') thread count for one test."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", DTYPES)
def test_thread_ranges_across_tensor_boundaries(dtype, threads):
    x = inputs(SPANNING_SHAPES, dtype)
    want = run_every_op(reference, x)
    results = []
    for count in (1, 2, 3, 4):
        threads(count)
        results.append(run_every_op(cpu, x))
        assert_close_to_reference(results[-1], want, dtype)
    # No result depends on the thread count, the reductions included (their partial sums
    # are added in a fixed order).
    for other in results[1:]:
        for key, value in results[0].items():
            if isinstance(value, list):
                assert all(torch.equal(a, b) for a, b in zip(value, other[key])), key
            else:
                assert torch.equal(value, other[key]), key


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_many_small_tensors_and_one_huge(dtype):
    shapes = [(1 + (i * 7) % 50,) for i in range(1000)] + [(1_200_001,)]
    x = inputs(shapes, dtype)
    want = run_every_op(reference, x, hessian_power=0.7)
    # The reference's fp32 norm of a 1.2M-element tensor is off by ~1e-5; compare with fp64.
    grads = torch.cat([g.double() for g in x["grads"]])
    want["norm"] = grads.norm().float()
    want["weighted_norm"] = (torch.cat([p.double() for p in x["params"]]).abs() * grads).norm().float()
    assert_close_to_reference(run_every_op(cpu, x, hessian_power=0.7), want, dtype)


def test_norm_of_a_huge_list_matches_float64():
    ts = [torch.randn(3_000_000) * 100, torch.randn(1000) * 1e-3] + [torch.randn(7)] * 500
    want = torch.cat([t.double().flatten() for t in ts]).norm().item()
    assert cpu.global_norm(ts).item() == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("adaptive", [False, True])
def test_perturb_moves_p_by_the_stored_perturbation(dtype, adaptive):
    p = torch.randn(10_001).to(dtype)
    g = torch.randn(10_001).to(dtype)
    before = p.clone()
    cpu.perturb([p], [g], 0.013, adaptive)
    assert torch.equal(p, (before.float() + g.float()).to(dtype))


def test_auto_picks_the_cpu_backend():
    assert resolve("auto", torch.device("cpu")).name == "cpu"
    w = torch.nn.Parameter(torch.randn(4, 3))
    opt = SASSHA([w], lazy_hessian=1, rho=0.05)
    opt.step(lambda: (w ** 2).sum())
    assert opt.backends_in_use == {"cpu": "cpu"}


def test_non_contiguous_and_channels_last_tensors():
    """Tensors whose memory order differs from the first list's are staged through copies,
    and the results are written back into them."""
    params = [torch.randn(2, 3, 5, 7).to(memory_format=torch.channels_last),
              torch.randn(6, 4).t(), torch.randn(8, 6)[:, ::2]]
    grads = [torch.randn(2, 3, 5, 7), torch.randn(4, 6), torch.randn(8, 3)]
    exp_avgs = [torch.randn_like(p) for p in params]  # channels_last like its parameter
    exp_hessians = [torch.rand(p.shape) for p in params]
    perturbations = [torch.randn(p.shape).t().contiguous().t() if p.dim() == 2 else
                     torch.randn_like(p) for p in params]
    hyper = dict(HYPER, hessian_power=0.5, bias_correction2=0.3)
    want = [clone(params), clone(exp_avgs)]
    reference.sassha_update(want[0], grads, want[1], exp_hessians, perturbations, **hyper)
    cpu.sassha_update(params, grads, exp_avgs, exp_hessians, perturbations, **hyper)
    for got, expected in zip(params + exp_avgs, want[0] + want[1]):
        torch.testing.assert_close(got, expected, **STATE_TOLERANCE)
    assert params[0].is_contiguous(memory_format=torch.channels_last)
    want_g, want_p = clone(grads), clone(params)
    reference.perturb(want_p, want_g, 0.5, True)
    cpu.perturb(params, grads, 0.5, True)
    for got, expected in zip(params + grads, want_p + want_g):
        torch.testing.assert_close(got, expected, **STATE_TOLERANCE)


@pytest.mark.parametrize("call,message", [
    (lambda: cpu.add_scaled([torch.zeros(3)], [torch.zeros(3), torch.zeros(3)], 1.0),
     "tensors has 2 tensors, expected 1"),
    (lambda: cpu.global_norm([torch.zeros(3), torch.zeros(3, dtype=torch.bfloat16)]),
     "tensors mixes dtypes"),
    (lambda: cpu.hessian_ema([torch.zeros(3, dtype=torch.float16)], [torch.zeros(3)], 0.9),
     r"exp_hessians\[0\] is Half; optimizer state must be float32"),
    (lambda: cpu.add_scaled([torch.zeros(3, dtype=torch.float64)], [torch.zeros(3)], 1.0),
     r"tensors\[0\] is Float; the op's first tensor is float64, so every tensor"),
    (lambda: cpu.add_scaled([torch.zeros(3)], [torch.zeros(3, dtype=torch.float64)], 1.0),
     r"tensors\[0\] is Double; expected float32, bfloat16 or float16 \(or float64, when"),
    (lambda: cpu.hessian_ema([torch.zeros(3)], [torch.zeros(3, dtype=torch.float64)], 0.9),
     r"hessians\[0\] is Double; expected float32"),
    (lambda: cpu.sassha_update([torch.zeros(3, dtype=torch.float64)],
                               [torch.zeros(3, dtype=torch.float64)], [torch.zeros(3)],
                               [torch.zeros(3, dtype=torch.float64)], None, lr=0.1,
                               weight_decay=0.0, beta1=0.9, bias_correction1=1.0,
                               bias_correction2=1.0, hessian_power=0.5, eps=1e-8),
     r"exp_avgs\[0\] is Float; the op's first tensor is float64"),
    (lambda: cpu.add_scaled([torch.zeros(3)], [torch.zeros(4)], 1.0),
     r"tensors\[0\] has shape \[4\], expected \[3\]"),
    (lambda: cpu.perturb([torch.zeros(3, device="meta")], [torch.zeros(3)], 1.0, False),
     r"perturb: grads\[0\] is on cpu, but params\[0\] is on meta; every tensor of one op"),
    (lambda: cpu.global_norm([torch.zeros(3), torch.zeros(3, device="meta")]),
     r"global_norm: tensors\[1\] is on meta, but tensors\[0\] is on cpu"),
    (lambda: cpu.add_scaled([torch.zeros(3)], [torch.zeros(3)], torch.ones(2)),
     r"add_scaled: alpha is a Float tensor of 2 elements; expected a number or a one-element"),
    (lambda: cpu.add_scaled([torch.zeros(3)], [torch.zeros(3)], torch.ones((), device="meta")),
     r"add_scaled: alpha is a tensor on meta, but the op's tensors are on cpu; a scalar "
     "tensor must be on their device or on the CPU"),
    (lambda: cpu.hessian_ema([torch.zeros(3)], [torch.zeros(3)], 0.9,
                             found_inf=torch.ones((), device="meta")),
     r"hessian_ema: found_inf is a tensor on meta"),
    (lambda: cpu.perturb([torch.zeros(3)], [torch.zeros(3)], 1.0, False,
                         found_inf=torch.ones((), dtype=torch.int64)),
     r"perturb: found_inf is a Long tensor of 1 elements; expected a number or a one-element "
     "floating-point tensor"),
])
def test_bad_inputs_are_refused_clearly(call, message):
    with pytest.raises(RuntimeError, match=message):
        call()


class Subclass(torch.Tensor):
    pass


class ParameterSubclass(torch.nn.Parameter):
    pass


@pytest.fixture
def one_rank_mesh():
    """A one-rank gloo device mesh on the CPU, torn down after the test."""
    import torch.distributed as dist
    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this build of torch")
    from torch.distributed.device_mesh import init_device_mesh
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1,))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("make", [
    lambda t: torch.Tensor._make_subclass(Subclass, t),
    lambda t: ParameterSubclass(t),
], ids=["Subclass", "ParameterSubclass"])
def test_a_subclass_without_its_own_dispatch_is_updated_in_its_memory(make):
    """Such a subclass holds its data as a plain tensor does: the dispatcher runs the CPU
    kernel on it."""
    odd = make(torch.ones(4))
    with torch.no_grad():
        cpu.perturb([torch.zeros(3), odd], [torch.ones(3), torch.ones(4)], 1.0, False)
    assert type(odd) is not torch.Tensor and torch.equal(odd.detach(), torch.full((4,), 2.0))


def test_a_dtensor_is_refused_by_the_dtensor_dispatch(one_rank_mesh):
    """DTensor receives the op (its __torch_dispatch__) and refuses it, naming it, before
    any memory is touched; the optimizers pass DTensors' local shards instead."""
    from torch.distributed.tensor import DTensor, Replicate
    params = [torch.zeros(3), torch.zeros(4)]
    odd = DTensor.from_local(torch.ones(4), one_rank_mesh, [Replicate()])
    with pytest.raises(RuntimeError, match=r"sassha_fast.perturb.default got mixed "
                       "torch.Tensor and DTensor"):
        cpu.perturb(params, [torch.ones(3), odd], 1.0, False)
    assert all(torch.equal(p, torch.zeros_like(p)) for p in params)


def test_a_parameter_is_a_plain_tensor():
    p = torch.nn.Parameter(torch.ones(3))
    with torch.no_grad():
        cpu.add_scaled([p], [torch.ones(3)], 2.0)
    assert torch.equal(p.detach(), torch.full((3,), 3.0))


def test_tensor_scalars_and_found_inf_are_read_in_cpp(monkeypatch):
    """No Python conversion of a scalar tensor (no Tensor.item / __float__ / __bool__)."""
    x = inputs([(5,), (300,)], torch.float32)
    scalars = {name: torch.tensor(value) for name, value in
               dict(lr=0.05, bias_correction1=0.271, bias_correction2=0.3, scale=0.037,
                    norm_factor=0.3, alpha=-0.25).items()}
    want = run_tensor_scalar_ops(reference, x, scalars, torch.tensor(0.0))
    for name in ("item", "__float__", "__bool__", "tolist", "__index__"):
        def refuse(*args, _name=name, **kwargs):
            raise AssertionError(f"Tensor.{_name} called in Python")
        monkeypatch.setattr(torch.Tensor, name, refuse)
    got = run_tensor_scalar_ops(cpu, x, scalars, torch.tensor(0.0))
    monkeypatch.undo()
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **STATE_TOLERANCE)


def run_tensor_scalar_ops(ops, x, scalars, found_inf):
    p, g, m = clone(x["params"]), clone(x["grads"]), clone(x["exp_avgs"])
    step = dict(lr=scalars["lr"], weight_decay=1e-2, beta1=0.9, hessian_power=0.5, eps=1e-4,
                bias_correction1=scalars["bias_correction1"],
                bias_correction2=scalars["bias_correction2"], found_inf=found_inf)
    ops.perturb(p, g, scalars["scale"], True, found_inf=found_inf)
    ops.sassha_update(p, x["grads"], m, x["exp_hessians"], g, **step)
    sq = ops.msassha_update(p, x["grads"], m, x["exp_hessians"],
                            norm_factor=scalars["norm_factor"], **step)
    ops.add_scaled(p, m, scalars["alpha"])
    return p + g + m + [sq]


def test_a_missing_tensor_is_refused():
    with pytest.raises(RuntimeError, match=r"Expected a value of type 'List\[Tensor\]' for "
                       "argument 'grads'"):
        cpu.perturb([torch.zeros(3)], [None], 1.0, False)


def test_gil_is_released_while_a_kernel_runs(threads):
    threads(1)
    big = [torch.rand(4_000_000)]
    hyper = dict(HYPER, hessian_power=0.7, bias_correction2=0.3)  # powf: a slow pass
    span = {}

    def worker():
        span["start"] = time.perf_counter()
        cpu.sassha_update(clone(big), big, clone(big), big, None, **hyper)
        span["end"] = time.perf_counter()

    ticks = []
    thread = threading.Thread(target=worker)
    thread.start()
    while thread.is_alive():
        ticks.append(time.perf_counter())
    thread.join()
    margin = (span["end"] - span["start"]) / 4
    inside = [t for t in ticks if span["start"] + margin < t < span["end"] - margin]
    assert inside, "no Python code ran while the kernel did: the GIL was held"


# -- the instruction-set builds --------------------------------------------------------
# What csrc/cpu/dispatch.cpp asks libgcc for, under /proc/cpuinfo's names; best first.
ISA_CPU_FLAGS = {"avx512": {"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
                            "avx512dq"},
                 "avx2": {"avx2", "fma", "f16c"},
                 "generic": set()}
ISA_DTYPES = ["float32", "bfloat16", "float16", "float64"]
ISA_SCRIPT = """
import json, sys, torch
from sassha_fast.backends import cpu
sys.path[:0] = {folders!r}
from test_backend_cpu import inputs, run_every_op
outs = {{}}
for dtype in {dtypes!r}:
    torch.manual_seed(0)
    out = run_every_op(cpu, inputs({shapes!r}, getattr(torch, dtype)), hessian_power=0.5)
    outs[dtype] = {{k: [t.double().tolist() for t in v] if isinstance(v, list) else v.item()
                   for k, v in out.items()}}
print(json.dumps(dict(isa=cpu.isa(), out=outs)))
"""


@functools.lru_cache(maxsize=None)
def run_with_isa(isa: str) -> dict:
    """Every op in every dtype in a fresh process whose dispatch is capped at ``isa``:
    ``{"isa": the build that ran, "out": {dtype: {op: result}}}``."""
    # This folder (test_backend_cpu) and ../support (tensor_lists, which it imports).
    here = os.path.dirname(os.path.abspath(__file__))
    folders = [here, os.path.join(os.path.dirname(here), "support")]
    script = ISA_SCRIPT.format(folders=folders, dtypes=ISA_DTYPES,
                               shapes=[(5,), (67,), (1000,), (0,), (3, 11)])
    env = dict(os.environ, SASSHA_FAST_CPU_ISA=isa)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, f"SASSHA_FAST_CPU_ISA={isa}:\n{done.stderr}"
    return json.loads(done.stdout)


def compiled_isas() -> List[str]:
    return build_info()["cpu_isas"] or ["generic"]


def cpu_flags() -> Optional[Set[str]]:
    """The CPU's feature flags as the Linux kernel reports them (None elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def outputs_of(isa: str) -> dict:
    """What the ``isa`` build computes, or a skip saying why this machine cannot run it."""
    if isa not in compiled_isas():
        pytest.skip(f"sassha_fast._C has no {isa} build on this platform "
                    f"(built for {', '.join(compiled_isas())})")
    run = run_with_isa(isa)
    if run["isa"] != isa:
        pytest.skip(f"this CPU cannot run the {isa} build (SASSHA_FAST_CPU_ISA={isa} ran "
                    f"{run['isa']})")
    return run["out"]


def test_each_cap_runs_the_best_build_this_cpu_supports():
    """The dispatch picks the best build the CPU has, at or below SASSHA_FAST_CPU_ISA: so the
    build tests below skip only where the CPU lacks the instructions, never because the
    dispatch missed them."""
    flags = cpu_flags()
    if flags is None:
        pytest.skip("no /proc/cpuinfo to read the CPU's instruction sets from")
    order = compiled_isas()
    runnable = [isa for isa in order if ISA_CPU_FLAGS[isa] <= flags]
    if "SASSHA_FAST_CPU_ISA" not in os.environ:  # this process's choice is not capped
        assert cpu.isa() == runnable[0]
    for cap in order:
        below = order[order.index(cap):]
        assert run_with_isa(cap)["isa"] == next(isa for isa in below if isa in runnable), cap


@pytest.mark.parametrize("dtype", ISA_DTYPES)
@pytest.mark.parametrize("isa", ["avx512", "avx2"])
def test_a_vector_build_agrees_with_the_generic_build(isa, dtype):
    """The vector builds differ from the generic one only by the multiply-adds they fuse,
    as PyTorch's vector kernels do."""
    vector, generic = outputs_of(isa)[dtype], outputs_of("generic")[dtype]
    tolerance = STORED_TOLERANCE[getattr(torch, dtype)]
    for key, value in vector.items():
        pairs = zip(value, generic[key]) if isinstance(value, list) else [(value, generic[key])]
        for a, b in pairs:
            torch.testing.assert_close(torch.tensor(a), torch.tensor(b), **tolerance,
                                       msg=lambda m: f"{isa} {key}: {m}")


@pytest.mark.parametrize("dtype", ISA_DTYPES)
def test_the_avx512_and_avx2_builds_agree_exactly(dtype):
    """The two vector builds are the same arithmetic on wider registers."""
    avx512, avx2 = outputs_of("avx512")[dtype], outputs_of("avx2")[dtype]
    for key, value in avx512.items():
        if isinstance(value, list) or dtype != "float64":
            assert value == avx2[key], key
        else:  # float64 squares are inexact: 8 or 4 lanes add them in different orders
            assert value == pytest.approx(avx2[key], rel=1e-14), key
