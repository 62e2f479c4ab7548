"""Compiles every Triton kernel of the triton backend for an NVIDIA GPU without needing one
(Triton ships its own ptxas), so CI catches code that the CPU interpreter accepts but the
compiler rejects. Run as a script with TRITON_INTERPRET unset; prints one JSON object:
``{variant: sorted global load/store instructions of its PTX}``."""
import json
import sys

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from sassha_fast.triton_kernels import kernels

TARGET = GPUTarget("cuda", 90, 32)
TABLE = {"table": "*i64", "n_tensors": "i32", "search_steps": "i32"}
REDUCTION = {"n_blocks": "i32", "partials": "*fp32"}
STEP = {"lr": "*fp32", "bias_correction1": "fp32", "bias_correction2": "*fp32",
        **{name: "fp32" for name in ("weight_decay", "beta1", "one_minus_beta1",
                                     "hessian_power", "eps")}}


def variants(dtype):
    common = dict(BLOCK=1024)
    yield "sum_squares", kernels.sum_squares_kernel, dict(TABLE, **REDUCTION), \
        dict(common, WEIGHTED=True, X_DTYPE=dtype, W_DTYPE=dtype)
    yield "perturb", kernels.perturb_kernel, dict(TABLE, scale="*fp32", found_inf="*fp32"), \
        dict(common, SCALE_IS_PTR=True, SKIPPABLE=True, ADAPTIVE=True, P_DTYPE=dtype,
             G_DTYPE=dtype)
    for power, mode in (("sqrt", kernels.POW_SQRT), ("one", kernels.POW_ONE),
                        ("pow", kernels.POW_ANY)):
        yield f"sassha_update-{power}", kernels.sassha_update_kernel, \
            dict(TABLE, **STEP, found_inf="*fp32", wrote_nonfinite="*fp32", p_largest="fp32"), \
            dict(common, SCALAR_PTRS=(True, False, True), SKIPPABLE=True, FLAGGED=True,
                 POWER=mode, UNPERTURB=True, P_DTYPE=dtype, G_DTYPE=dtype, E_DTYPE=dtype)
    yield "hessian_ema", kernels.hessian_ema_kernel, \
        dict(TABLE, beta2="fp32", one_minus_beta2="fp32", found_inf="*fp32",
             wrote_nonfinite="*fp32"), \
        dict(common, SKIPPABLE=True, FLAGGED=True, H_DTYPE=dtype)
    yield "msassha_update", kernels.msassha_update_kernel, \
        dict(TABLE, **REDUCTION, norm_factor="fp32", **STEP, found_inf="constexpr",
             wrote_nonfinite="*fp32", p_largest="fp32"), \
        dict(common, found_inf=None, SCALAR_PTRS=(False, True, False, True), SKIPPABLE=False,
             FLAGGED=True, POWER=kernels.POW_ANY, P_DTYPE=dtype, G_DTYPE=dtype)
    yield "add_scaled", kernels.add_scaled_kernel, dict(TABLE, alpha="fp32"), \
        dict(common, ALPHA_IS_PTR=False, P_DTYPE=dtype, T_DTYPE=tl.float32)


def memory_instructions(ptx: str):
    found = set()
    for line in ptx.splitlines():
        for word in line.split():
            if word.startswith(("ld.global", "st.global")):
                found.add(word)
    return sorted(found)


def main():
    if kernels.INTERPRETED:
        sys.exit("unset TRITON_INTERPRET: the interpreter's kernels cannot be compiled")
    report = {}
    for dtype in (tl.float32, tl.bfloat16, tl.float16):
        for name, kernel, signature, constexprs in variants(dtype):
            signature = dict(signature, **{k: "constexpr" for k in constexprs
                                           if k not in signature})
            compiled = triton.compile(ASTSource(kernel, signature, constexprs), target=TARGET)
            report[f"{name}-{dtype}"] = memory_instructions(compiled.asm["ptx"])
    finish = triton.compile(ASTSource(
        kernels.finish_sum_kernel, {"partials": "*fp32", "n": "i32", "out": "*fp32",
                                    "SQRT": "constexpr", "BLOCK": "constexpr"},
        dict(SQRT=True, BLOCK=1024)), target=TARGET)
    report["finish_sum"] = memory_instructions(finish.asm["ptx"])
    print(json.dumps(report))


if __name__ == "__main__":
    main()
