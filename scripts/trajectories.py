"""Bit-for-bit trajectories of every usable backend, for checking that a change of structure
changed no number (on one machine: another CPU runs other kernels inside torch).

    python scripts/trajectories.py record before.pt     # on the commit before the change
    python scripts/trajectories.py compare before.pt    # after it: every case identical?

Each case runs 30 iterations of a small network through the public API only and keeps the
parameters after every iteration, the losses and the final ``state_dict``: SASSHA (the authors'
method-level loop and ``step(closure)``), M-SASSHA, both Hessian estimators, the host and the
device path (``capturable``), a run with poisoned gradients (skipped steps), a checkpoint
reloaded into a fresh optimizer half-way, a Hessian-power scheduler with ``curvature_floor``,
bf16 parameters, and the authors' language-model variant (micro-batches, ``set_hessian()``,
``step(iter_num)``). ``compare`` exits 1 when any case differs in any bit.
"""
import argparse
import os
import sys
import warnings

import torch

if not torch.cuda.is_available():  # the triton backend then runs in Triton's interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")

import sassha_fast  # noqa: E402
from sassha_fast import MSASSHA, SASSHA  # noqa: E402
from sassha_fast.lm import LanguageModelSASSHA  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "support"))
import lm_golden  # noqa: E402  (the authors' language-model loop, shared with the tests)

ITERATIONS = 30
POISONED = 7  # the iteration whose gradients hold NaN in the "skip" cases


class Net(torch.nn.Module):
    """Two layers, a frozen parameter and one that never gets a gradient."""

    def __init__(self, dtype):
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = torch.nn.Linear(6, 8)
        self.fc2 = torch.nn.Linear(8, 4)
        self.frozen = torch.nn.Parameter(torch.randn(3), requires_grad=False)
        self.unused = torch.nn.Parameter(torch.randn(5))
        self.to(dtype)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


def batch(i: int, dtype):
    g = torch.Generator().manual_seed(100 + i % 4)
    return torch.randn(16, 6, generator=g).to(dtype), torch.randint(0, 4, (16,), generator=g)


class PowerSchedule:
    def __init__(self):
        self.t = 0

    def step(self):
        self.t += 1
        return 0.5 if self.t < 10 else 0.75


def loss_of(model, i, dtype):
    x, y = batch(i, dtype)
    loss = torch.nn.functional.cross_entropy(model(x).float(), y)
    return loss * float("nan") if i == POISONED and getattr(model, "poisoned", False) else loss


def make(optimizer, model, backend, **kwargs):
    groups = [{"params": [model.fc1.weight, model.fc2.weight], "weight_decay": 1e-3},
              {"params": [model.fc1.bias, model.fc2.bias, model.frozen, model.unused],
               "lr": 0.05}]
    return optimizer(groups, backend=backend, lazy_hessian=3, **kwargs)


def run_closure(optimizer, backend, dtype=torch.float32, poisoned=False, reload_at=None,
                **kwargs):
    model = Net(dtype)
    model.poisoned = poisoned
    opt = make(optimizer, model, backend, **kwargs)
    params, losses = [], []
    for i in range(ITERATIONS):
        if i == reload_at:
            saved = opt.state_dict()
            opt = make(optimizer, model, backend, **kwargs)
            opt.load_state_dict(saved)
        losses.append(opt.step(lambda: loss_of(model, i, dtype)))
        params.append([p.detach().clone() for p in model.parameters()])
    return {"params": params, "losses": losses, "state": opt.state_dict()}


def run_authors_sassha(backend, **kwargs):
    """The authors' loop: backward, perturb, create_graph backward, unperturb, step."""
    model = Net(torch.float32)
    opt = make(SASSHA, model, backend, rho=0.05, **kwargs)
    params, losses = [], []
    for i in range(ITERATIONS):
        loss = loss_of(model, i, torch.float32)
        loss.backward()
        opt.perturb_weights(zero_grad=True)
        loss_of(model, i, torch.float32).backward(create_graph=opt.hessian_due)
        if kwargs.get("hessian_estimator") == "finite_difference":
            for _ in opt.hessian_probes():
                loss_of(model, i, torch.float32).backward()
        opt.unperturb()
        opt.step()
        opt.zero_grad()
        losses.append(loss.detach())
        params.append([p.detach().clone() for p in model.parameters()])
    return {"params": params, "losses": losses, "state": opt.state_dict()}


def run_language_model(backend):
    """The authors' language-model loop as the golden test drives it
    (tests/support/lm_golden.py): two micro-batches, a Hessian every other iteration, the rho
    warm-up without a perturbed pass, then with one, a falling Hessian power."""
    settings = dict(iters=ITERATIONS, micro_batches=2, rho_warmup_iters=3, rho=0.02,
                    kwargs=dict(lr=0.05, betas=(0.965, 0.99), weight_decay=1e-2,
                                lazy_hessian=2, eps=1e-4, seed=7))
    model = Net(torch.float32)
    opt = LanguageModelSASSHA(model.parameters(), backend=backend, **settings["kwargs"])
    opt.rho_scheduler = lm_golden.WarmupRho(settings["rho"], settings["rho_warmup_iters"])
    opt.hessian_power_scheduler = lm_golden.PowerSchedule(lm_golden.powers(ITERATIONS))
    x, y = batch(0, torch.float32)
    params = []
    losses = lm_golden.train(model, opt, x, y, settings, after_iteration=lambda *_: params.append(
        [p.detach().clone() for p in model.parameters()]))
    return {"params": params, "losses": losses, "state": opt.state_dict()}


def cases(backend):
    fd = dict(hessian_estimator="finite_difference")
    yield "sassha authors' loop", lambda: run_authors_sassha(backend)
    yield "sassha authors' loop fd", lambda: run_authors_sassha(backend, **fd)
    for name, optimizer, extra in (("sassha", SASSHA, dict(rho=0.05)), ("msassha", MSASSHA, {})):
        for capturable in (False, True):
            path = f"{name} capturable={capturable}"
            yield path, lambda o=optimizer, e=extra, c=capturable: run_closure(
                o, backend, capturable=c, **e)
            yield f"{path} fd", lambda o=optimizer, e=extra, c=capturable: run_closure(
                o, backend, capturable=c, **e, **fd)
            yield f"{path} skip", lambda o=optimizer, e=extra, c=capturable: run_closure(
                o, backend, capturable=c, poisoned=True, **e)
            yield f"{path} reload", lambda o=optimizer, e=extra, c=capturable: run_closure(
                o, backend, capturable=c, reload_at=15, **e)
        yield f"{name} scheduler floor", lambda o=optimizer, e=extra: run_closure(
            o, backend, hessian_power_scheduler=PowerSchedule(), curvature_floor=0.01, **e)
        yield f"{name} bf16", lambda o=optimizer, e=extra: run_closure(
            o, backend, dtype=torch.bfloat16, **e)
    yield "language model", lambda: run_language_model(backend)


def record() -> dict:
    backends = [name for name, a in sassha_fast.available_backends().items() if a.available]
    results = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # skipped-step warnings of the poisoned runs
        for backend in backends:
            for name, run in cases(backend):
                torch.manual_seed(0)
                results[f"{backend}: {name}"] = run()
                print(f"recorded {backend}: {name}", flush=True)
    return results


def differences(got, want, path=""):
    """Where ``got`` and ``want`` (nested dicts, lists, tensors, numbers) differ in any bit."""
    if isinstance(want, dict):
        if not isinstance(got, dict) or got.keys() != want.keys():
            return [f"{path}: keys {sorted(map(str, want))} -> "
                    f"{sorted(map(str, got)) if isinstance(got, dict) else type(got).__name__}"]
        return [d for key in want for d in differences(got[key], want[key], f"{path}/{key}")]
    if isinstance(want, (list, tuple)):
        if not isinstance(got, (list, tuple)) or len(got) != len(want):
            return [f"{path}: length differs"]
        return [d for i, (a, b) in enumerate(zip(got, want))
                for d in differences(a, b, f"{path}/{i}")]
    if isinstance(want, torch.Tensor):
        same = (isinstance(got, torch.Tensor) and got.dtype == want.dtype
                and got.shape == want.shape and torch.equal(got.view(-1).view(torch.uint8)
                                                            if got.numel() else got,
                                                            want.view(-1).view(torch.uint8)
                                                            if want.numel() else want))
        return [] if same else [f"{path}: tensor differs"]
    return [] if got == want or (got != got and want != want) else [f"{path}: {want!r} -> {got!r}"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("record", "compare"))
    parser.add_argument("file")
    args = parser.parse_args(argv)
    results = record()
    if args.action == "record":
        torch.save(results, args.file)
        print(f"{len(results)} trajectories written to {args.file}")
        return 0
    before = torch.load(args.file, weights_only=False)
    failed = 0
    for name in sorted(set(before) | set(results)):
        if name not in results or name not in before:
            print(f"MISSING {name}: only {'before' if name in before else 'now'}")
            failed += 1
            continue
        diffs = differences(results[name], before[name])
        print(("identical " if not diffs else "DIFFERENT ") + name
              + ("" if not diffs else f" ({len(diffs)}: {diffs[0]})"))
        failed += bool(diffs)
    print(f"{len(before) - failed} of {len(before)} trajectories identical bit for bit")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
