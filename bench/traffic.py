"""Bytes per parameter element that one optimizer step moves, measured on the
implementation (``bench/harness/traffic.py`` models what a method must move; this counts
what the code does).

    python -m bench.traffic [--backend cpu] [--numel 1000000] [--dtype float32]

Every operator the optimizer calls during one iteration without a Hessian estimate
(SASSHA: ``perturb_weights()`` then ``step()``, which leaves the perturbed point in its
update, as ``step(closure)`` does; M-SASSHA: ``step()``), the fused ops of
``torch.ops.sassha_fast`` and torch's own alike, is seen through a ``TorchDispatchMode``:
each tensor it takes counts as read, each it writes (the schema's mutated arguments) or
returns as written, once per call. Views move nothing and are not counted. A row per
optimizer, ``nonfinite`` policy and loss scaler, so that what a check costs is its row's
difference from ``ignore``'s; "passes" counts the calls that touch parameter-sized data.
The gradients are set by hand (no model), so the figures are the optimizer's alone.
"""
import argparse
import warnings
from typing import Iterable, List, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from sassha_fast import MSASSHA, SASSHA

OPTIMIZERS = {"SASSHA": (SASSHA, dict(rho=0.05)), "M-SASSHA": (MSASSHA, {})}
POLICIES = ("ignore", "skip")


def shapes(numel: int) -> List[Tuple[int, ...]]:
    """Three tensors of ``numel`` elements in all, one of them 2-d."""
    return [(numel // 2,), (numel // 8, 2), (numel - numel // 2 - numel // 8 * 2,)]


class ByteCounter(TorchDispatchMode):
    """Bytes read and written by the operators called inside it, and the calls that
    touched at least ``large`` bytes."""

    def __init__(self, large: int):
        super().__init__()
        self.read = self.written = self.passes = 0
        self.large = large

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func.is_view:
            return out
        read = written = 0
        schema = func._schema
        given = [(argument, args[i] if i < len(args) else kwargs[argument.name])
                 for i, argument in enumerate(schema.arguments)
                 if i < len(args) or argument.name in kwargs]
        for argument, value in given:
            size = _bytes(value)
            read += size
            if argument.alias_info is not None and argument.alias_info.is_write:
                written += size
        if not any(r.alias_info is not None for r in schema.returns):
            written += _bytes(out)
        self.read += read
        self.written += written
        self.passes += read + written >= self.large
        return out


def _bytes(value) -> int:
    leaves, _ = tree_flatten(value)
    return sum(t.numel() * t.element_size() for t in leaves if isinstance(t, torch.Tensor))


def _gradients(params: Iterable[torch.Tensor], scale: float) -> None:
    for p in params:
        p.grad = torch.randn_like(p) * scale


def measure(name: str, policy: str, scaled: bool, numel: int, dtype: torch.dtype,
            backend: str, device: str) -> Tuple[float, int]:
    """(bytes per element, passes) of one iteration without a Hessian estimate."""
    optimizer, settings = OPTIMIZERS[name]
    params = [torch.randn(shape, dtype=dtype, device=device, requires_grad=True)
              for shape in shapes(numel)]
    opt = optimizer(params, lr=1e-3, lazy_hessian=1000, backend=backend, nonfinite=policy,
                    **settings)
    scaler = torch.amp.GradScaler(device) if scaled else None
    scale = 1.0
    if scaler is not None:
        scale = float(scaler.scale(torch.ones((), device=device)))
    # The first step estimates the Hessian: taken before the counting starts.
    loss = sum((p.float() ** 2).sum() for p in params) * scale
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # backward(create_graph=True)'s reference cycle
        loss.backward(create_graph=True)
    opt.step(scaler=scaler)
    opt.zero_grad()
    counter = ByteCounter(large=numel)
    iterate(opt, params, scale, scaler, counter)
    return (counter.read + counter.written) / numel, counter.passes


def iterate(opt, params: List[torch.Tensor], scale: float, scaler, counter) -> None:
    """One iteration, counting the optimizer's calls only (not the gradients made here)."""
    _gradients(params, scale)
    if isinstance(opt, SASSHA):
        with counter:
            opt.perturb_weights(zero_grad=True, scaler=scaler)
        _gradients(params, scale)
    with counter:
        opt.step(scaler=scaler)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="cpu")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--numel", type=int, default=1_000_000)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    print(f"bytes per parameter element of one iteration without a Hessian estimate "
          f"(backend {args.backend}, {args.dtype} parameters, {args.numel} elements)")
    print(f"{'optimizer':<10} {'nonfinite':<9} {'scaler':<10} {'B/element':>9} {'passes':>6}")
    for name in OPTIMIZERS:
        for scaled in (False, True):
            for policy in POLICIES:
                per_element, passes = measure(name, policy, scaled, args.numel, dtype,
                                              args.backend, args.device)
                print(f"{name:<10} {policy:<9} {'GradScaler' if scaled else 'none':<10} "
                      f"{per_element:>9.1f} {passes:>6}")


if __name__ == "__main__":
    main()
