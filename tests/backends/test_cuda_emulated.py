"""The CUDA kernels run on the host (test-only backend cuda_emulated, csrc/cuda/host_emulation.h)
where the shared op and optimizer tests, which run it like any backend, do not reach: sizes
around a chunk and the vector widths, one list misaligned, lists cut into several launches in
both kernel argument layouts, with found_inf unset, zero and set. Every op against the
reference backend. scripts/emulation_faults.py breaks the kernels on purpose and shows these
tests fail."""
import pytest
import torch

from sassha_fast import available_backends
from sassha_fast.backends import reference, unavailable_reason
from sassha_fast.backends import cuda_emulated
from sassha_fast.functional import resolve

from tensor_lists import STORED_TOLERANCE, clone

pytestmark = pytest.mark.skipif(
    unavailable_reason("cuda_emulated") is not None,
    reason=f"backend 'cuda_emulated' unavailable: {unavailable_reason('cuda_emulated')}")

CHUNK = 65536  # elements per block (csrc/cuda/launch_plan.h)
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# Vector widths are 4 (fp32 lists) and 8 (a bf16/fp16 list): one below, at and above each,
# then one chunk and the tails of the next.
SIZES = [1, 3, 4, 5, 7, 8, 9, 15, 16, 17, CHUNK - 1, CHUNK, CHUNK + 1, CHUNK + 7, 2 * CHUNK + 9]
HYPER = dict(lr=0.05, weight_decay=1e-2, beta1=0.9, bias_correction1=0.271,
             bias_correction2=0.25, hessian_power=0.5, eps=1e-4)
PARAM_LISTS = ("params", "grads", "perturbations", "hessians")  # in the parameters' dtype


def make_inputs(shapes, dtype, misaligned=None):
    """Every list an op takes; the tensors of list ``misaligned`` start one element past a
    16-byte boundary."""
    generator = torch.Generator().manual_seed(7)

    def make(name, scale=1.0, positive=False):
        list_dtype = dtype if name in PARAM_LISTS else torch.float32
        out = []
        for shape in shapes:
            numel = torch.Size(shape).numel()
            values = torch.randn(numel + 1, generator=generator, dtype=torch.float64) * scale
            values = (values.abs() if positive else values).to(list_dtype)
            t = values[1:] if name == misaligned else values[:numel].clone()
            assert (t.data_ptr() % 16 != 0) == (name == misaligned and numel > 0)
            out.append(t.view(shape))
        return out

    return dict(params=make("params"), grads=make("grads"),
                exp_avgs=make("exp_avgs", 0.1), exp_hessians=make("exp_hessians", positive=True),
                perturbations=make("perturbations", 0.01), hessians=make("hessians"))


def every_op(ops, x, found_inf=None):
    """What each op writes or returns, run on copies of the inputs ``x``."""
    skip = dict(found_inf=found_inf)
    out = {"global_norm": [ops.global_norm(x["grads"])],
           "global_norm-weighted": [ops.global_norm(x["grads"], x["params"])]}
    p, e = clone(x["params"]), clone(x["grads"])
    ops.perturb(p, e, 0.037, True, **skip)
    out["perturb"] = p + e
    for leave in (False, True):
        p, m = clone(x["params"]), clone(x["exp_avgs"])
        ops.sassha_update(p, x["grads"], m, x["exp_hessians"],
                          x["perturbations"] if leave else None, **HYPER, **skip)
        out[f"sassha_update-{leave}"] = p + m
    d = clone(x["exp_hessians"])
    ops.hessian_ema(d, x["hessians"], 0.99, **skip)
    out["hessian_ema"] = d
    p, m = clone(x["params"]), clone(x["exp_avgs"])
    square = ops.msassha_update(p, x["grads"], m, x["exp_hessians"], norm_factor=0.3, **HYPER,
                                **skip)
    out["msassha_update"] = p + m + [square]
    p = clone(x["params"])
    ops.add_scaled(p, x["perturbations"], -0.5)
    out["add_scaled"] = p
    return out


def assert_follows_reference(x, found_inf=None):
    got = every_op(resolve("cuda_emulated", torch.device("cpu"), x["params"][0].dtype), x,
                   found_inf)
    want = every_op(reference, x, found_inf)
    for op, tensors in want.items():
        assert len(got[op]) == len(tensors)
        for i, (g, w) in enumerate(zip(got[op], tensors)):
            assert g.dtype == w.dtype and g.shape == w.shape, (op, i)
            torch.testing.assert_close(g, w, **STORED_TOLERANCE[w.dtype],
                                       msg=lambda m: f"{op}, tensor {i}: {m}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", SIZES)
def test_sizes_around_the_chunk_and_the_vector_widths(dtype, size):
    assert_follows_reference(make_inputs([(size,), (size + 1,)], dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("misaligned", ["params", "grads", "exp_avgs", "exp_hessians",
                                        "perturbations", "hessians"])
def test_one_misaligned_list_takes_the_scalar_path(dtype, misaligned):
    """A vector access to the misaligned list would fault on a GPU; the emulation raises."""
    assert_follows_reference(make_inputs([(1029,), (40,), (0,), (2, 9)], dtype, misaligned))


def launches() -> int:
    return torch.ops.sassha_fast_cuda_emulated.launches()


# More tensors than one launch holds in either layout (1269 at most, over one list), and a
# tensor of several chunks among them.
MANY = [(1 + (i * 37) % 301,) for i in range(1400)] + [(2 * CHUNK + 5,)]


@pytest.mark.parametrize("found_inf", [None, 0.0, 1.0], ids=["unset", "zero", "set"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("arg_bytes", cuda_emulated.ARG_BYTES)
def test_lists_cut_into_several_launches(arg_bytes, dtype, found_inf):
    x = make_inputs(MANY, dtype)
    flag = None if found_inf is None else torch.tensor(found_inf)
    with cuda_emulated.kernel_arg_bytes(arg_bytes):
        before = launches()
        cuda_emulated.global_norm(x["grads"])
        assert launches() - before >= 3  # two or more launches, and the sum's second stage
        assert_follows_reference(x, flag)


def test_a_tensor_continued_in_the_next_launch():
    """The 4 KiB layout holds 320 blocks (and 97 tensors over two lists, 145 over one): the
    last tensor's chunks from its 21st on go to a second launch, in its slot 0."""
    x = [torch.zeros(100 * CHUNK) for _ in range(3)] + [torch.zeros(30 * CHUNK)]
    t = [torch.full_like(p, 0.5) for p in x]
    with cuda_emulated.kernel_arg_bytes(4096):
        before = launches()
        cuda_emulated.add_scaled(x, t, 2.0)
        assert launches() - before == 2
        norm = cuda_emulated.global_norm(x)
    assert all(bool((p == 1.0).all()) for p in x)
    assert norm.item() == pytest.approx((330 * CHUNK) ** 0.5, rel=1e-6)


def test_the_emulation_is_never_offered_and_names_itself():
    assert "cuda_emulated" not in available_backends()
    assert resolve("auto", torch.device("cpu")).name != "cuda_emulated"
    params = [torch.zeros(3)]
    with pytest.raises(RuntimeError, match=r"cuda_emulated perturb \(the CUDA kernels emulated "
                                           r"on the host\): grads holds 0 tensors"):
        cuda_emulated.perturb(params, [], 0.1, False)
    with pytest.raises(RuntimeError, match="cuda_emulated: kernel arguments take 4096 or 32764"):
        with cuda_emulated.kernel_arg_bytes(1000):
            pass


def test_inputs_that_the_op_converts_before_its_kernels():
    """A gradient laid out otherwise than its parameter is copied into the parameter's layout,
    and a scalar tensor that is not fp32 (a device tensor, under the emulation) is read
    through an fp32 copy: the same step as with its value as a number."""
    x = make_inputs([(5, 7), (3,)], torch.float32)
    x["grads"][0] = x["grads"][0].t().contiguous().t()  # dense, column-major
    assert not x["grads"][0].is_contiguous()
    lr = torch.tensor(0.05, dtype=torch.bfloat16)
    steps = {}
    for name, ops, hyper in (("reference", reference, dict(HYPER, lr=lr.item())),
                             ("number", cuda_emulated, dict(HYPER, lr=lr.item())),
                             ("bf16 tensor", cuda_emulated, dict(HYPER, lr=lr))):
        steps[name] = clone(x["params"])
        ops.sassha_update(steps[name], x["grads"], clone(x["exp_avgs"]), x["exp_hessians"],
                          None, **hyper)
    for got, number, want in zip(steps["bf16 tensor"], steps["number"], steps["reference"]):
        torch.testing.assert_close(number, want, **STORED_TOLERANCE[torch.float32])
        assert torch.equal(got, number)
