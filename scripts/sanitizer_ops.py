"""Every fused op of the cuda and triton backends once, on small lists that reach their
special paths (a misaligned view, an empty tensor, a tensor split into several chunks or
blocks, bf16, found_inf set, the updates' wrote_nonfinite flag, scalars read from device
memory): the driver that
scripts/gpu_check.sh runs under compute-sanitizer (memcheck, racecheck). Prints what ran;
exits non-zero if an op raised."""
import sys

import torch

import sassha_fast
from sassha_fast.functional import resolve


def lists(dtype):
    base = torch.randn(70_000 + 1, device="cuda").to(dtype)
    shapes = [(3,), (0,), (65_536 + 7,)]
    made = [torch.randn(s, device="cuda").to(dtype) for s in shapes]
    return made + [base[1:1 + 4099]]  # starts 1 element past an aligned address


def run_ops(ops, dtype):
    params, grads, perturbations = lists(dtype), lists(dtype), lists(dtype)
    exp_avgs = [torch.zeros(p.shape, device="cuda") for p in params]
    exp_hessians = [torch.rand(p.shape, device="cuda") for p in params]
    device_scalar = torch.tensor(0.05, device="cuda")
    hyper = dict(lr=device_scalar, weight_decay=1e-2, beta1=0.9, bias_correction1=0.1,
                 bias_correction2=torch.tensor(0.03, device="cuda"), hessian_power=0.7,
                 eps=1e-4)
    for found_inf in (None, torch.zeros((), device="cuda"), torch.ones((), device="cuda")):
        flags = dict(found_inf=found_inf, wrote_nonfinite=torch.zeros((), device="cuda"))
        norm = ops.global_norm(grads, params)
        ops.perturb(params, grads, 0.05 / (norm + 1e-12), True, found_inf=found_inf)
        ops.sassha_update(params, perturbations, exp_avgs, exp_hessians, grads, **hyper,
                          **flags)
        ops.hessian_ema(exp_hessians, perturbations, 0.99, **flags)
        ops.msassha_update(params, grads, exp_avgs, exp_hessians, norm_factor=device_scalar,
                           **hyper, **flags)
        ops.add_scaled(params, exp_avgs, -0.1)
    torch.cuda.synchronize()


def main() -> int:
    report = sassha_fast.available_backends()
    failed = False
    for name in ("cuda", "triton"):
        if not report[name].available:
            print(f"{name}: unavailable ({report[name].reason})")
            failed = True
            continue
        ops = resolve(name, torch.device("cuda"))
        for dtype in (torch.float32, torch.bfloat16):
            run_ops(ops, dtype)
            print(f"{name} {dtype}: every op ran")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
