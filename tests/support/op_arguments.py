"""Arguments of the dispatcher ops as the optimizers pass them, for the tests of both
families of ops (torch.ops.sassha_fast.<op> and triton_<op>, which share their schemas)."""
import torch

SHAPES = {"odd-sizes": [(7,), (3, 5), (1,), (131,)], "empty-tensor": [(0,), (3,)]}
FOUND_INF = {"no-found_inf": None, "found_inf-0": 0.0, "found_inf-1": 1.0}
# The lists each op writes: what its schema must annotate (a!), and nothing else.
WRITTEN = {"global_norm": set(), "perturb": {"params", "grads"},
           "sassha_update": {"params", "exp_avgs", "wrote_nonfinite"},
           "hessian_ema": {"exp_hessians", "wrote_nonfinite"},
           "msassha_update": {"params", "exp_avgs", "wrote_nonfinite"}, "add_scaled": {"params"}}


def lists(shapes, dtype, count, device="cpu"):
    state = torch.float64 if dtype == torch.float64 else torch.float32
    make = [lambda s: torch.randn(s, dtype=torch.float64).to(dtype)] * 2 + \
        [lambda s: torch.randn(s).to(state), lambda s: torch.rand(s).to(state) + 0.1]
    return [[make[k](s).to(device) for s in shapes] for k in range(count)]


def scalar(value, device, counter=False):
    """A per-step scalar as the optimizers pass it: a number becomes a float64 CPU tensor;
    on the GPU, a bias correction is a float64 device tensor (the device path's counters)
    and the others are fp32."""
    wide = device.type == "cpu" or counter
    return torch.tensor(value, dtype=torch.float64 if wide else torch.float32, device=device)


def arguments(name, shapes, dtype, found_inf, device):
    """The op's arguments as the optimizers pass them: with found_inf the updates get a
    wrote_nonfinite flag too (as with nonfinite="skip"), without it none."""
    flag = None if found_inf is None else torch.tensor(found_inf, device=device)
    written = (None if found_inf is None else torch.zeros((), device=device),)
    p, g, m, d = lists(shapes, dtype, 4, device)
    step = (scalar(0.1, device), 1e-2, 0.9, scalar(0.19, device, counter=True),
            scalar(0.3, device, counter=True), 0.5, 1e-4)
    return {
        "global_norm": lambda: (p, g),
        "perturb": lambda: (p, g, scalar(0.05, device), True, flag),
        "sassha_update": lambda: (p, g, m, d, lists(shapes, dtype, 1, device)[0]) + step
        + (flag,) + written,
        "hessian_ema": lambda: (d, g, 0.999, flag) + written,
        "msassha_update": lambda: (p, g, m, d, scalar(0.3, device)) + step + (flag,) + written,
        "add_scaled": lambda: (p, g, scalar(-0.5, device)),
    }[name]()
