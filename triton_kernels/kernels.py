"""The Triton kernels of the "triton" backend: one launch covers every tensor of an op.

Each program handles one block of one tensor. It finds both in a table (see ``tables.py``)
laid out as ``[tensor of each block | block index in its tensor | numel of its tensor |
addresses of list 0 | addresses of list 1 | ...]``, so a kernel needs no per-tensor
arguments and the parameter list can be any length.

Values are computed in fp32; every store rounds once to the destination's dtype.
Scalars that may come from a norm (``scale``, ``norm_factor``, ``alpha``) are either a
float argument or a pointer to a 0-d fp32 tensor (``*_IS_PTR``), read on the device so that
nothing waits for the host.
"""
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

# Which table list holds which operand of the update kernels: param, gradient, exp_avg,
# exp_hessian_diag, perturbation.
P, G, M, D, E = (tl.constexpr(i) for i in range(5))


def _probe():
    pass


# Whether these kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1 when triton was
# first imported) rather than compiled for a GPU.
INTERPRETED = tl.constexpr(isinstance(triton.jit(_probe), InterpretedFunction))
if not INTERPRETED:
    from triton.language.extra import libdevice


def _helper(fn):
    """Decorator of the device functions that kernels call. The interpreter re-patches
    triton.language on every call of a jitted function (about a millisecond each, dozens
    per block); called from a kernel of this module, a helper already runs inside the
    kernel's patched scope, so under the interpreter it stays a plain Python function."""
    return fn if INTERPRETED else triton.jit(fn)


# -- shared device helpers -------------------------------------------------------------

@_helper
def _block(table, n_blocks, BLOCK: tl.constexpr):
    """(tensor index, element offsets, numel of that tensor, whether the block is full) of
    this program's block. A full block runs without a mask: with the alignment hint, the
    compiler then emits 16-byte vector loads and stores."""
    pid = tl.program_id(0)
    tensor = tl.load(table + pid)
    index = tl.load(table + n_blocks + pid)
    numel = tl.load(table + 2 * n_blocks + pid)
    return tensor, index * BLOCK + tl.arange(0, BLOCK), numel, (index + 1) * BLOCK <= numel


@_helper
def _base(table, n_blocks, n_tensors, tensor, which: tl.constexpr, DTYPE: tl.constexpr,
          ALIGNED: tl.constexpr):
    """Typed pointer to the first element of tensor ``tensor`` of list ``which``."""
    address = tl.load(table + 3 * n_blocks + which * n_tensors + tensor)
    pointer = address.to(tl.pointer_type(DTYPE))
    if ALIGNED:  # the host checked that every address is a multiple of 16 bytes
        pointer = tl.multiple_of(pointer, 16)
    return pointer


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
def _power(d, hessian_power, POWER: tl.constexpr):
    """d ** hessian_power. POWER is "sqrt" (0.5) or "one" (1.0), the common cases, exact
    as in torch, or "pow" for any other power."""
    if POWER == "sqrt":
        return tl.sqrt_rn(d)
    elif POWER == "one":
        return d
    elif INTERPRETED:  # libdevice does not exist in the interpreter
        zero_case = tl.where(hessian_power == 0.0, 1.0, 0.0)
        safe = tl.where(d == 0.0, 1.0, d)
        return tl.where(d == 0.0, zero_case, tl.exp2(hessian_power * tl.log2(safe)))
    else:
        return libdevice.pow(d, hessian_power)


@_helper
def _adaptive_step(x, g, m, d, decay, beta1, one_minus_beta1, step_size, bias_correction2,
                   hessian_power, eps, POWER: tl.constexpr):
    """Decay, momentum and preconditioned step (both updates after leaving their perturbed
    point). Returns (new parameter, new momentum)."""
    x = x * decay
    m = m * beta1 + one_minus_beta1 * g
    denom = tl.div_rn(_power(d, hessian_power, POWER), bias_correction2) + eps
    return x - step_size * tl.div_rn(m, denom), m


# -- reductions ------------------------------------------------------------------------

@_helper
def _sum_squares_block(table, n_blocks, n_tensors, tensor, offs, mask, WEIGHTED: tl.constexpr,
                       X_DTYPE: tl.constexpr, W_DTYPE: tl.constexpr, ALIGNED: tl.constexpr):
    x = _load(_base(table, n_blocks, n_tensors, tensor, 0, X_DTYPE, ALIGNED), offs, mask)
    if WEIGHTED:
        x = tl.abs(_load(_base(table, n_blocks, n_tensors, tensor, 1, W_DTYPE, ALIGNED),
                         offs, mask)) * x
    return tl.sum(x * x)


@triton.jit
def sum_squares_kernel(table, n_blocks, n_tensors, partials, WEIGHTED: tl.constexpr,
                       X_DTYPE: tl.constexpr, BLOCK: tl.constexpr, ALIGNED: tl.constexpr,
                       W_DTYPE: tl.constexpr = tl.float32):
    """Stage 1 of the global norm: partials[block] = sum over the block of (|w| * x)^2."""
    tensor, offs, numel, full = _block(table, n_blocks, BLOCK)
    if full:
        total = _sum_squares_block(table, n_blocks, n_tensors, tensor, offs, None, WEIGHTED,
                                   X_DTYPE, W_DTYPE, ALIGNED)
    else:
        total = _sum_squares_block(table, n_blocks, n_tensors, tensor, offs, offs < numel,
                                   WEIGHTED, X_DTYPE, W_DTYPE, ALIGNED)
    tl.store(partials + tl.program_id(0), total)


@triton.jit
def finish_sum_kernel(partials, n, out, SQRT: tl.constexpr, BLOCK: tl.constexpr):
    """Stage 2 (one program): out = sum(partials), or its square root, in a fixed order."""
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
def _perturb_block(table, n_blocks, n_tensors, tensor, offs, mask, scale,
                   ADAPTIVE: tl.constexpr, P_DTYPE: tl.constexpr, G_DTYPE: tl.constexpr,
                   ALIGNED: tl.constexpr):
    p_ptr = _base(table, n_blocks, n_tensors, tensor, P, P_DTYPE, ALIGNED)
    g_ptr = _base(table, n_blocks, n_tensors, tensor, G, G_DTYPE, ALIGNED)
    p = _load(p_ptr, offs, mask)
    e = _load(g_ptr, offs, mask) * scale
    if ADAPTIVE:
        e = e * (p * p)
    e = _round(e, G_DTYPE)
    tl.store(g_ptr + offs, e, mask=mask)
    # p moves by the stored (rounded) e, which is what the update later subtracts.
    _store(p_ptr, offs, p + e.to(tl.float32), mask, P_DTYPE)


@triton.jit
def perturb_kernel(table, n_blocks, n_tensors, scale, SCALE_IS_PTR: tl.constexpr,
                   ADAPTIVE: tl.constexpr, P_DTYPE: tl.constexpr, G_DTYPE: tl.constexpr,
                   BLOCK: tl.constexpr, ALIGNED: tl.constexpr):
    """e = scale * g (times p^2 if ADAPTIVE), stored into g; p += e."""
    tensor, offs, numel, full = _block(table, n_blocks, BLOCK)
    s = _scalar(scale, SCALE_IS_PTR)
    if full:
        _perturb_block(table, n_blocks, n_tensors, tensor, offs, None, s, ADAPTIVE, P_DTYPE,
                       G_DTYPE, ALIGNED)
    else:
        _perturb_block(table, n_blocks, n_tensors, tensor, offs, offs < numel, s, ADAPTIVE,
                       P_DTYPE, G_DTYPE, ALIGNED)


# -- SASSHA update ---------------------------------------------------------------------

@_helper
def _sassha_block(table, n_blocks, n_tensors, tensor, offs, mask, decay, beta1,
                  one_minus_beta1, step_size, bias_correction2, hessian_power, eps,
                  POWER: tl.constexpr, UNPERTURB: tl.constexpr, P_DTYPE: tl.constexpr,
                  G_DTYPE: tl.constexpr, E_DTYPE: tl.constexpr, ALIGNED: tl.constexpr):
    p_ptr = _base(table, n_blocks, n_tensors, tensor, P, P_DTYPE, ALIGNED)
    m_ptr = _base(table, n_blocks, n_tensors, tensor, M, tl.float32, ALIGNED)
    x = _load(p_ptr, offs, mask)
    if UNPERTURB:
        x = x - _load(_base(table, n_blocks, n_tensors, tensor, E, E_DTYPE, ALIGNED), offs, mask)
    g = _load(_base(table, n_blocks, n_tensors, tensor, G, G_DTYPE, ALIGNED), offs, mask)
    d = _load(_base(table, n_blocks, n_tensors, tensor, D, tl.float32, ALIGNED), offs, mask)
    x, m = _adaptive_step(x, g, _load(m_ptr, offs, mask), d, decay, beta1, one_minus_beta1,
                          step_size, bias_correction2, hessian_power, eps, POWER)
    tl.store(m_ptr + offs, m, mask=mask)
    _store(p_ptr, offs, x, mask, P_DTYPE)


@triton.jit
def sassha_update_kernel(table, n_blocks, n_tensors, decay, beta1, one_minus_beta1, step_size,
                         bias_correction2, hessian_power, eps, POWER: tl.constexpr,
                         UNPERTURB: tl.constexpr, P_DTYPE: tl.constexpr, G_DTYPE: tl.constexpr,
                         BLOCK: tl.constexpr, ALIGNED: tl.constexpr,
                         E_DTYPE: tl.constexpr = tl.float32):
    """Optionally p -= e, then the SASSHA step on p and m (fp32 m and D)."""
    tensor, offs, numel, full = _block(table, n_blocks, BLOCK)
    if full:
        _sassha_block(table, n_blocks, n_tensors, tensor, offs, None, decay, beta1,
                      one_minus_beta1, step_size, bias_correction2, hessian_power, eps, POWER,
                      UNPERTURB, P_DTYPE, G_DTYPE, E_DTYPE, ALIGNED)
    else:
        _sassha_block(table, n_blocks, n_tensors, tensor, offs, offs < numel, decay, beta1,
                      one_minus_beta1, step_size, bias_correction2, hessian_power, eps, POWER,
                      UNPERTURB, P_DTYPE, G_DTYPE, E_DTYPE, ALIGNED)


# -- Hessian EMA -----------------------------------------------------------------------

@_helper
def _hessian_ema_block(table, n_blocks, n_tensors, tensor, offs, mask, beta2, one_minus_beta2,
                       H_DTYPE: tl.constexpr, ALIGNED: tl.constexpr):
    d_ptr = _base(table, n_blocks, n_tensors, tensor, 0, tl.float32, ALIGNED)
    h = _load(_base(table, n_blocks, n_tensors, tensor, 1, H_DTYPE, ALIGNED), offs, mask)
    d = _load(d_ptr, offs, mask) * beta2 + one_minus_beta2 * tl.abs(h)
    tl.store(d_ptr + offs, d, mask=mask)


@triton.jit
def hessian_ema_kernel(table, n_blocks, n_tensors, beta2, one_minus_beta2,
                       H_DTYPE: tl.constexpr, BLOCK: tl.constexpr, ALIGNED: tl.constexpr):
    """D = beta2 * D + (1 - beta2) * |h| (D fp32 in list 0, h in list 1)."""
    tensor, offs, numel, full = _block(table, n_blocks, BLOCK)
    if full:
        _hessian_ema_block(table, n_blocks, n_tensors, tensor, offs, None, beta2,
                           one_minus_beta2, H_DTYPE, ALIGNED)
    else:
        _hessian_ema_block(table, n_blocks, n_tensors, tensor, offs, offs < numel, beta2,
                           one_minus_beta2, H_DTYPE, ALIGNED)


# -- M-SASSHA update -------------------------------------------------------------------

@_helper
def _msassha_block(table, n_blocks, n_tensors, tensor, offs, mask, norm_factor, decay, beta1,
                   one_minus_beta1, step_size, bias_correction2, hessian_power, eps,
                   POWER: tl.constexpr, P_DTYPE: tl.constexpr, G_DTYPE: tl.constexpr,
                   ALIGNED: tl.constexpr):
    p_ptr = _base(table, n_blocks, n_tensors, tensor, P, P_DTYPE, ALIGNED)
    m_ptr = _base(table, n_blocks, n_tensors, tensor, M, tl.float32, ALIGNED)
    m = _load(m_ptr, offs, mask)
    x = _load(p_ptr, offs, mask) + norm_factor * m
    g = _load(_base(table, n_blocks, n_tensors, tensor, G, G_DTYPE, ALIGNED), offs, mask)
    d = _load(_base(table, n_blocks, n_tensors, tensor, D, tl.float32, ALIGNED), offs, mask)
    x, m = _adaptive_step(x, g, m, d, decay, beta1, one_minus_beta1, step_size,
                          bias_correction2, hessian_power, eps, POWER)
    tl.store(m_ptr + offs, m, mask=mask)
    _store(p_ptr, offs, x, mask, P_DTYPE)
    return tl.sum(m * m)


@triton.jit
def msassha_update_kernel(table, n_blocks, n_tensors, partials, norm_factor, decay, beta1,
                          one_minus_beta1, step_size, bias_correction2, hessian_power, eps,
                          NF_IS_PTR: tl.constexpr, POWER: tl.constexpr, P_DTYPE: tl.constexpr,
                          G_DTYPE: tl.constexpr, BLOCK: tl.constexpr, ALIGNED: tl.constexpr):
    """p += nf * m_old, then the SASSHA step; partials[block] = sum of m_new^2."""
    tensor, offs, numel, full = _block(table, n_blocks, BLOCK)
    nf = _scalar(norm_factor, NF_IS_PTR)
    if full:
        total = _msassha_block(table, n_blocks, n_tensors, tensor, offs, None, nf, decay, beta1,
                               one_minus_beta1, step_size, bias_correction2, hessian_power, eps,
                               POWER, P_DTYPE, G_DTYPE, ALIGNED)
    else:
        total = _msassha_block(table, n_blocks, n_tensors, tensor, offs, offs < numel, nf,
                               decay, beta1, one_minus_beta1, step_size, bias_correction2,
                               hessian_power, eps, POWER, P_DTYPE, G_DTYPE, ALIGNED)
    tl.store(partials + tl.program_id(0), total)


# -- p += alpha * t --------------------------------------------------------------------

@_helper
def _add_scaled_block(table, n_blocks, n_tensors, tensor, offs, mask, alpha,
                      P_DTYPE: tl.constexpr, T_DTYPE: tl.constexpr, ALIGNED: tl.constexpr):
    p_ptr = _base(table, n_blocks, n_tensors, tensor, 0, P_DTYPE, ALIGNED)
    t = _load(_base(table, n_blocks, n_tensors, tensor, 1, T_DTYPE, ALIGNED), offs, mask)
    _store(p_ptr, offs, _load(p_ptr, offs, mask) + alpha * t, mask, P_DTYPE)


@triton.jit
def add_scaled_kernel(table, n_blocks, n_tensors, alpha, ALPHA_IS_PTR: tl.constexpr,
                      P_DTYPE: tl.constexpr, T_DTYPE: tl.constexpr, BLOCK: tl.constexpr,
                      ALIGNED: tl.constexpr):
    """p += alpha * t (p in list 0, t in list 1)."""
    tensor, offs, numel, full = _block(table, n_blocks, BLOCK)
    a = _scalar(alpha, ALPHA_IS_PTR)
    if full:
        _add_scaled_block(table, n_blocks, n_tensors, tensor, offs, None, a, P_DTYPE, T_DTYPE,
                          ALIGNED)
    else:
        _add_scaled_block(table, n_blocks, n_tensors, tensor, offs, offs < numel, a, P_DTYPE,
                          T_DTYPE, ALIGNED)
