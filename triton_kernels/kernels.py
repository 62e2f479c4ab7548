"""The Triton kernels of the "triton" backend: one launch covers every tensor of an op.

A program handles one block of one tensor (elementwise ops), or loops over every
``num_programs``-th block and writes one partial sum (reductions: a bounded number of
partials, see ``tables.reduction_programs``). It finds a block's tensor by a binary search
in a table with one row per tensor (``tables.py``), so a kernel needs no per-tensor
arguments and the parameter list can be any length.

Each op is a kernel (its entry point, called by ``launch.py`` with keyword arguments) and a
block body ``_<op>(table, n_tensors, t, offs, mask, coeffs, DTYPES, OPTIONS, ALIGNED)``
that ``_each_block`` calls three ways: full blocks of a 16-byte aligned tensor unmasked with
the alignment hint (16-byte vector accesses), other full blocks unmasked, the last block of
a tensor masked. ``coeffs`` is a tuple of the op's run-time scalars, ``DTYPES`` the element
types of its lists, ``OPTIONS`` its compile-time switches.

Values are computed in fp32; every store rounds once to the destination's dtype. Per-step
scalars are float arguments or pointers to 0-d fp32 tensors (``SCALAR_PTRS``), and
``found_inf`` a pointer (``SKIPPABLE``): both are read on the device, so that nothing waits
for the host. The updates set ``wrote_nonfinite`` (a pointer, when ``FLAGGED``) to 1 when a
value they store is inf or NaN in its dtype, found as they store it.
"""
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

# Which table list holds which operand of the update kernels: param, gradient, exp_avg,
# exp_hessian_diag, perturbation.
P, G, M, D, E = (tl.constexpr(i) for i in range(5))
# How a kernel raises D to hessian_power (see ``_power``).
POW_SQRT, POW_ONE, POW_ANY = (tl.constexpr(i) for i in range(3))


def _probe():
    pass


# Whether these kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1 when triton was
# first imported) rather than compiled for a GPU.
INTERPRETED = tl.constexpr(isinstance(triton.jit(_probe), InterpretedFunction))


def _helper(fn):
    """Decorator of the device functions that kernels call. The interpreter re-patches
    triton.language on every call of a jitted function (about a millisecond each, dozens
    per block); called from a kernel of this module, a helper already runs inside the
    kernel's patched scope, so under the interpreter it stays a plain Python function."""
    return fn if INTERPRETED else triton.jit(fn)


# -- finding a block, loading and storing ----------------------------------------------

@_helper
def _find(table, n_tensors, search_steps, b):
    """The row t of the tensor that global block b belongs to: the last row whose first
    block is <= b (table[0 : n_tensors + 1] holds the first blocks, ascending)."""
    lo = b * 0
    hi = lo + n_tensors
    for _ in range(search_steps):
        mid = (lo + hi) // 2
        right = tl.load(table + mid) <= b
        lo = tl.where(right, mid, lo)
        hi = tl.where(right, hi, mid)
    return lo


@_helper
def _base(table, n_tensors, t, which: tl.constexpr, DTYPE: tl.constexpr, ALIGNED: tl.constexpr):
    """Typed pointer to the first element of row t's tensor of list ``which``."""
    address = tl.load(table + 3 * n_tensors + 1 + which * n_tensors + t)
    pointer = address.to(tl.pointer_type(DTYPE))
    if ALIGNED:  # the host found every list's address of this tensor a multiple of 16 bytes
        pointer = tl.multiple_of(pointer, 16)
    return pointer


@_helper
def _each_block(BODY: tl.constexpr, table, n_tensors, search_steps, b, coeffs,
                DTYPES: tl.constexpr, OPTIONS: tl.constexpr, BLOCK: tl.constexpr):
    """BODY over global block b; returns what BODY returns (a block's partial sum)."""
    t = _find(table, n_tensors, search_steps, b)
    numel = tl.load(table + n_tensors + 1 + t)
    aligned = tl.load(table + 2 * n_tensors + 1 + t) != 0
    index = b - tl.load(table + t)  # the block's index inside its tensor (int64)
    offs = index * BLOCK + tl.arange(0, BLOCK)
    if (index + 1) * BLOCK <= numel:
        # A full block runs without a mask: with the alignment hint, the compiler then
        # emits 16-byte vector loads and stores.
        if aligned:
            total = BODY(table, n_tensors, t, offs, None, coeffs, DTYPES, OPTIONS, True)
        else:
            total = BODY(table, n_tensors, t, offs, None, coeffs, DTYPES, OPTIONS, False)
    else:
        total = BODY(table, n_tensors, t, offs, offs < numel, coeffs, DTYPES, OPTIONS, False)
    return total


@_helper
def _load(pointer, offs, mask):
    """fp32 values; masked-off lanes read 0, which every sum below relies on."""
    if mask is None:
        return tl.load(pointer + offs).to(tl.float32)
    else:
        return tl.load(pointer + offs, mask=mask, other=0.0).to(tl.float32)


@_helper
def _round(x, DTYPE: tl.constexpr):
    """x rounded to nearest-even in DTYPE. bf16 is rounded by hand because the interpreter
    truncates fp32 -> bf16; doing it the same way on the GPU keeps one tested code path."""
    if DTYPE == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        upper = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        upper = tl.where(x == x, upper, 0x7FC0)  # a NaN stays a NaN (never rounds to inf)
        return upper.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return x.to(DTYPE)


@_helper
def _store(pointer, offs, x, mask, DTYPE: tl.constexpr):
    tl.store(pointer + offs, _round(x, DTYPE), mask=mask)


@_helper
def _scalar(value, IS_PTR: tl.constexpr):
    if IS_PTR:
        return tl.load(value).to(tl.float32)
    else:
        return value


@_helper
def _skipped(found_inf, SKIPPABLE: tl.constexpr):
    """Whether this iteration is skipped: found_inf holds a nonzero value (NaN included)."""
    if SKIPPABLE:
        return tl.load(found_inf) != 0.0
    else:
        return False


# The largest finite fp32 magnitude: |x| <= FP32_MAX fails for inf and NaN (the fp32 state).
FP32_MAX = tl.constexpr(3.4028234663852886e38)


@_helper
def _flag_nonfinite(wrote_nonfinite, x, largest, mask, FLAGGED: tl.constexpr):
    """Sets the flag when a value of x is inf or NaN once stored: above ``largest``, the
    largest fp32 value that stays finite in the destination's dtype (``launch.largest_finite``),
    or NaN. Every program that finds one writes the same 1: no ordering is needed."""
    if FLAGGED:
        bad = (tl.abs(x) <= largest) == 0
        if mask is not None:
            bad = bad & mask
        tl.store(wrote_nonfinite, 1.0, mask=tl.max(bad.to(tl.int32), axis=0) > 0)


@_helper
def pow_by_exp2(d, hessian_power):
    """d ** hessian_power for d >= 0 as exp2(hessian_power * log2(d)), with 0 ** 0 = 1 and
    0 ** p = 0 for p > 0. The GPU and the interpreter (which has no libdevice) run this same
    code, so the path is tested without a GPU; its error against torch.pow is measured in
    tests/backends/test_backend_triton.py (on a GPU exp2 and log2 are the approximate ex2/lg2
    instructions, a few ulp more)."""
    zero_case = tl.where(hessian_power == 0.0, 1.0, 0.0)
    safe = tl.where(d == 0.0, 1.0, d)
    return tl.where(d == 0.0, zero_case, tl.exp2(hessian_power * tl.log2(safe)))


@_helper
def _power(d, hessian_power, POWER: tl.constexpr):
    """d ** hessian_power: sqrt (0.5) and identity (1.0), the common cases, exact as in
    torch; any other power through ``pow_by_exp2``."""
    if POWER == POW_SQRT:
        return tl.sqrt_rn(d)
    elif POWER == POW_ONE:
        return d
    else:
        return pow_by_exp2(d, hessian_power)


@_helper
def _step_coeffs(lr, weight_decay, beta1, one_minus_beta1, bias_correction1, bias_correction2,
                 hessian_power, eps, skip):
    """The scalars of ``_adaptive_step`` (lr and the bias corrections already read), with
    skip last."""
    return (1.0 - lr * weight_decay, beta1, one_minus_beta1, tl.div_rn(lr, bias_correction1),
            bias_correction2, hessian_power, eps, skip)


@_helper
def _adaptive_step(x, g, m, d, c, POWER: tl.constexpr):
    """Decay, momentum and preconditioned step (both updates after leaving their perturbed
    point), with c from ``_step_coeffs``. Returns (new parameter, new momentum)."""
    x = x * c[0]
    m = m * c[1] + c[2] * g
    denom = tl.div_rn(_power(d, c[5], POWER), c[4]) + c[6]
    return x - c[3] * tl.div_rn(m, denom), m


# -- reductions ------------------------------------------------------------------------

@_helper
def _sum_squares(table, n_tensors, t, offs, mask, coeffs, DTYPES: tl.constexpr,
                 OPTIONS: tl.constexpr, ALIGNED: tl.constexpr):
    """sum over the block of (|w| * x)^2 (x in list 0, w in list 1 when OPTIONS[0])."""
    x = _load(_base(table, n_tensors, t, 0, DTYPES[0], ALIGNED), offs, mask)
    if OPTIONS[0]:
        x = tl.abs(_load(_base(table, n_tensors, t, 1, DTYPES[1], ALIGNED), offs, mask)) * x
    return tl.sum(x * x)


@triton.jit
def sum_squares_kernel(table, n_tensors, search_steps, n_blocks, partials,
                       WEIGHTED: tl.constexpr, X_DTYPE: tl.constexpr, W_DTYPE: tl.constexpr,
                       BLOCK: tl.constexpr):
    """Stage 1 of the global norm: partials[program] = its blocks' sum of (|w| * x)^2."""
    total = 0.0
    for b in range(tl.program_id(0), n_blocks, tl.num_programs(0)):
        total += _each_block(_sum_squares, table, n_tensors, search_steps, b, 0.0,
                             (X_DTYPE, W_DTYPE), (WEIGHTED,), BLOCK)
    tl.store(partials + tl.program_id(0), total)


@triton.jit
def finish_sum_kernel(partials, n, out, SQRT: tl.constexpr, BLOCK: tl.constexpr):
    """Stage 2 (one program): out = sum(partials), or its square root, in a fixed order.
    The reductions' partials are bounded (a few per SM), so one pass usually reads all."""
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, n, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        acc += tl.load(partials + offs, mask=offs < n, other=0.0)
    total = tl.sum(acc)
    if SQRT:
        total = tl.sqrt_rn(total)
    tl.store(out, total)


# -- perturbation ----------------------------------------------------------------------

@_helper
def _perturb(table, n_tensors, t, offs, mask, coeffs, DTYPES: tl.constexpr,
             OPTIONS: tl.constexpr, ALIGNED: tl.constexpr):
    g_ptr = _base(table, n_tensors, t, G, DTYPES[1], ALIGNED)
    if coeffs[1]:  # skipped: e = 0, p not written
        tl.store(g_ptr + offs, tl.zeros(offs.shape, dtype=DTYPES[1]), mask=mask)
    else:
        p_ptr = _base(table, n_tensors, t, P, DTYPES[0], ALIGNED)
        p = _load(p_ptr, offs, mask)
        e = _load(g_ptr, offs, mask) * coeffs[0]
        if OPTIONS[0]:  # adaptive
            e = e * (p * p)
        e = _round(e, DTYPES[1])
        tl.store(g_ptr + offs, e, mask=mask)
        # p moves by the stored (rounded) e, which is what the update later subtracts.
        _store(p_ptr, offs, p + e.to(tl.float32), mask, DTYPES[0])
    return 0.0


@triton.jit
def perturb_kernel(table, n_tensors, search_steps, scale, found_inf,
                   SCALE_IS_PTR: tl.constexpr, SKIPPABLE: tl.constexpr, ADAPTIVE: tl.constexpr,
                   P_DTYPE: tl.constexpr, G_DTYPE: tl.constexpr, BLOCK: tl.constexpr):
    """e = scale * g (times p^2 if ADAPTIVE), stored into g; p += e."""
    coeffs = (_scalar(scale, SCALE_IS_PTR), _skipped(found_inf, SKIPPABLE))
    _each_block(_perturb, table, n_tensors, search_steps, tl.program_id(0), coeffs,
                (P_DTYPE, G_DTYPE), (ADAPTIVE,), BLOCK)


# -- SASSHA update ---------------------------------------------------------------------

@_helper
def _sassha_update(table, n_tensors, t, offs, mask, c, DTYPES: tl.constexpr,
                   OPTIONS: tl.constexpr, ALIGNED: tl.constexpr):
    """c: (step coefficients, wrote_nonfinite, p_largest); OPTIONS: (POWER, UNPERTURB,
    FLAGGED). Skipped (c[0][7]): p only leaves the perturbed point."""
    step = c[0]
    p_ptr = _base(table, n_tensors, t, P, DTYPES[0], ALIGNED)
    x = _load(p_ptr, offs, mask)
    if OPTIONS[1]:
        x = x - _load(_base(table, n_tensors, t, E, DTYPES[2], ALIGNED), offs, mask)
    if step[7]:
        if OPTIONS[1]:
            _store(p_ptr, offs, x, mask, DTYPES[0])
    else:
        m_ptr = _base(table, n_tensors, t, M, tl.float32, ALIGNED)
        g = _load(_base(table, n_tensors, t, G, DTYPES[1], ALIGNED), offs, mask)
        d = _load(_base(table, n_tensors, t, D, tl.float32, ALIGNED), offs, mask)
        x, m = _adaptive_step(x, g, _load(m_ptr, offs, mask), d, step, OPTIONS[0])
        _flag_nonfinite(c[1], x, c[2], mask, OPTIONS[2])
        _flag_nonfinite(c[1], m, FP32_MAX, mask, OPTIONS[2])
        tl.store(m_ptr + offs, m, mask=mask)
        _store(p_ptr, offs, x, mask, DTYPES[0])
    return 0.0


@triton.jit
def sassha_update_kernel(table, n_tensors, search_steps, lr, bias_correction1,
                         bias_correction2, weight_decay, beta1, one_minus_beta1, hessian_power,
                         eps, found_inf, wrote_nonfinite, p_largest, SCALAR_PTRS: tl.constexpr,
                         SKIPPABLE: tl.constexpr, FLAGGED: tl.constexpr, POWER: tl.constexpr,
                         UNPERTURB: tl.constexpr, P_DTYPE: tl.constexpr, G_DTYPE: tl.constexpr,
                         E_DTYPE: tl.constexpr, BLOCK: tl.constexpr):
    """Optionally p -= e, then the SASSHA step on p and m (fp32 m and D). SCALAR_PTRS: which
    of (lr, bias_correction1, bias_correction2) are pointers."""
    step = _step_coeffs(_scalar(lr, SCALAR_PTRS[0]), weight_decay, beta1, one_minus_beta1,
                        _scalar(bias_correction1, SCALAR_PTRS[1]),
                        _scalar(bias_correction2, SCALAR_PTRS[2]), hessian_power, eps,
                        _skipped(found_inf, SKIPPABLE))
    _each_block(_sassha_update, table, n_tensors, search_steps, tl.program_id(0),
                (step, wrote_nonfinite, p_largest), (P_DTYPE, G_DTYPE, E_DTYPE),
                (POWER, UNPERTURB, FLAGGED), BLOCK)


# -- Hessian EMA -----------------------------------------------------------------------

@_helper
def _hessian_ema(table, n_tensors, t, offs, mask, c, DTYPES: tl.constexpr,
                 OPTIONS: tl.constexpr, ALIGNED: tl.constexpr):
    """D (fp32, list 0) = beta2 * D + (1 - beta2) * |h| (list 1); skipped (c[2]): D kept.
    c[3]: wrote_nonfinite; OPTIONS: (FLAGGED,)."""
    if not c[2]:
        d_ptr = _base(table, n_tensors, t, 0, tl.float32, ALIGNED)
        h = _load(_base(table, n_tensors, t, 1, DTYPES[0], ALIGNED), offs, mask)
        d = _load(d_ptr, offs, mask) * c[0] + c[1] * tl.abs(h)
        _flag_nonfinite(c[3], d, FP32_MAX, mask, OPTIONS[0])
        tl.store(d_ptr + offs, d, mask=mask)
    return 0.0


@triton.jit
def hessian_ema_kernel(table, n_tensors, search_steps, beta2, one_minus_beta2, found_inf,
                       wrote_nonfinite, SKIPPABLE: tl.constexpr, FLAGGED: tl.constexpr,
                       H_DTYPE: tl.constexpr, BLOCK: tl.constexpr):
    """D = beta2 * D + (1 - beta2) * |h|."""
    coeffs = (beta2, one_minus_beta2, _skipped(found_inf, SKIPPABLE), wrote_nonfinite)
    _each_block(_hessian_ema, table, n_tensors, search_steps, tl.program_id(0), coeffs,
                (H_DTYPE,), (FLAGGED,), BLOCK)


# -- M-SASSHA update -------------------------------------------------------------------

@_helper
def _msassha_update(table, n_tensors, t, offs, mask, c, DTYPES: tl.constexpr,
                    OPTIONS: tl.constexpr, ALIGNED: tl.constexpr):
    """c: (norm_factor, step coefficients, wrote_nonfinite, p_largest); OPTIONS: (POWER,
    FLAGGED). Returns the block's sum of m^2 as stored; skipped: p and m untouched, the sum
    over the unchanged m."""
    step = c[1]
    m_ptr = _base(table, n_tensors, t, M, tl.float32, ALIGNED)
    m = _load(m_ptr, offs, mask)
    if not step[7]:
        p_ptr = _base(table, n_tensors, t, P, DTYPES[0], ALIGNED)
        x = _load(p_ptr, offs, mask) + c[0] * m
        g = _load(_base(table, n_tensors, t, G, DTYPES[1], ALIGNED), offs, mask)
        d = _load(_base(table, n_tensors, t, D, tl.float32, ALIGNED), offs, mask)
        x, m = _adaptive_step(x, g, m, d, step, OPTIONS[0])
        _flag_nonfinite(c[2], x, c[3], mask, OPTIONS[1])
        _flag_nonfinite(c[2], m, FP32_MAX, mask, OPTIONS[1])
        tl.store(m_ptr + offs, m, mask=mask)
        _store(p_ptr, offs, x, mask, DTYPES[0])
    return tl.sum(m * m)


@triton.jit
def msassha_update_kernel(table, n_tensors, search_steps, n_blocks, partials, norm_factor, lr,
                          bias_correction1, bias_correction2, weight_decay, beta1,
                          one_minus_beta1, hessian_power, eps, found_inf, wrote_nonfinite,
                          p_largest, SCALAR_PTRS: tl.constexpr, SKIPPABLE: tl.constexpr,
                          FLAGGED: tl.constexpr, POWER: tl.constexpr, P_DTYPE: tl.constexpr,
                          G_DTYPE: tl.constexpr, BLOCK: tl.constexpr):
    """p += nf * m_old, then the SASSHA step; partials[program] = its blocks' sum of m_new^2.
    SCALAR_PTRS: which of (norm_factor, lr, bias_correction1, bias_correction2) are
    pointers."""
    step = _step_coeffs(_scalar(lr, SCALAR_PTRS[1]), weight_decay, beta1, one_minus_beta1,
                        _scalar(bias_correction1, SCALAR_PTRS[2]),
                        _scalar(bias_correction2, SCALAR_PTRS[3]), hessian_power, eps,
                        _skipped(found_inf, SKIPPABLE))
    coeffs = (_scalar(norm_factor, SCALAR_PTRS[0]), step, wrote_nonfinite, p_largest)
    total = 0.0
    for b in range(tl.program_id(0), n_blocks, tl.num_programs(0)):
        total += _each_block(_msassha_update, table, n_tensors, search_steps, b, coeffs,
                             (P_DTYPE, G_DTYPE), (POWER, FLAGGED), BLOCK)
    tl.store(partials + tl.program_id(0), total)


# -- p += alpha * t --------------------------------------------------------------------

@_helper
def _add_scaled(table, n_tensors, t, offs, mask, coeffs, DTYPES: tl.constexpr,
                OPTIONS: tl.constexpr, ALIGNED: tl.constexpr):
    p_ptr = _base(table, n_tensors, t, 0, DTYPES[0], ALIGNED)
    x = _load(_base(table, n_tensors, t, 1, DTYPES[1], ALIGNED), offs, mask)
    _store(p_ptr, offs, _load(p_ptr, offs, mask) + coeffs * x, mask, DTYPES[0])
    return 0.0


@triton.jit
def add_scaled_kernel(table, n_tensors, search_steps, alpha, ALPHA_IS_PTR: tl.constexpr,
                      P_DTYPE: tl.constexpr, T_DTYPE: tl.constexpr, BLOCK: tl.constexpr):
    """p += alpha * t (p in list 0, t in list 1)."""
    _each_block(_add_scaled, table, n_tensors, search_steps, tl.program_id(0),
                _scalar(alpha, ALPHA_IS_PTR), (P_DTYPE, T_DTYPE), (0,), BLOCK)
