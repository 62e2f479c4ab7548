"""The authors' SASSHA and M-SASSHA, loaded from a checkout the user has
(``python -m bench --authors-code PATH``; nothing of theirs is vendored or downloaded), so
that the tables show the optimizer users replace.

Their files are loaded directly (``PATH/optimizers/sassha.py`` and ``msassha.py``), not
their ``optimizers`` package, whose ``__init__`` imports every other optimizer of theirs.

As published, their code needs two things to run, which this module supplies, and nothing
else of theirs is changed:
- SASSHA raises the Hessian to the power its ``hessian_power_scheduler`` returns, and with
  no scheduler (the default) to the power None: it is given an object whose ``step()``
  returns a constant power (their training script passes a scheduler object the same way).
- M-SASSHA's constructor reads ``self.track_hessian``, which nothing sets (AttributeError),
  and its update function, a module-level function, reads ``self.hessian_power`` (NameError).
  A subclass sets ``track_hessian = False`` (nothing in their code turns it on), and the
  module global ``self`` is bound to the optimizer, which carries ``hessian_power`` (so one
  M-SASSHA of theirs at a time per process: the benchmarks build one per set and model).
"""
import importlib.util
import pathlib
import sys
from types import ModuleType
from typing import Iterable, NamedTuple

import torch

WORKAROUNDS = ("SASSHA: a constant hessian_power_scheduler (else power None raises); "
               "M-SASSHA: a subclass with track_hessian = False (the constructor reads it, "
               "unset) and the module global `self` bound to the optimizer (their update "
               "function reads self.hessian_power)")


class ConstantPower:
    """What their SASSHA calls once per step for the Hessian power."""

    def __init__(self, power: float):
        self.power = power

    def step(self) -> float:
        return self.power


class AuthorsCode(NamedTuple):
    path: pathlib.Path
    sassha_module: ModuleType
    msassha_module: ModuleType

    # hessian_power: the caller's (bench/methods.py), as the package's rows get it, so that
    # both implementations do the same arithmetic.
    def sassha(self, params: Iterable[torch.Tensor], hessian_power: float,
               **kwargs) -> torch.optim.Optimizer:
        return self.sassha_module.SASSHA(
            params, hessian_power_scheduler=ConstantPower(hessian_power), **kwargs)

    def msassha(self, params: Iterable[torch.Tensor], hessian_power: float,
                **kwargs) -> torch.optim.Optimizer:
        cls = type("MSASSHA", (self.msassha_module.MSASSHA,), dict(track_hessian=False))
        opt = cls(params, hessian_power=hessian_power, **kwargs)
        self.msassha_module.self = opt
        return opt

    # The step suite times non-Hessian steps on gradients that carry no graph: the state is
    # seeded as after a first Hessian step (D > 0), and the optimizer's lazy_hessian must be
    # larger than any number of timed steps so that the next Hessian is never due.
    def seed_sassha_state(self, opt: torch.optim.Optimizer, hessian_power: float,
                          beta2: float) -> None:
        for p in _params(opt):
            p.hess = torch.zeros_like(p)  # their step() takes p.hess.abs() every step
            opt.state[p].update({"hessian step": 1, "step": 1, "exp_avg": torch.zeros_like(p),
                                 "exp_hessian_diag": torch.rand_like(p).add_(0.1),
                                 "bias_correction2": (1 - beta2) ** hessian_power})

    def seed_msassha_state(self, opt: torch.optim.Optimizer, beta2: float) -> None:
        for p in _params(opt):
            opt.state[p].update(hessian_step=1, step=1, grad_momentum=torch.zeros_like(p),
                                hess_momentum=torch.rand_like(p).add_(0.1))
        # Their update keeps the Hessian EMA's bias correction in a module global.
        self.msassha_module.bias_correction2 = 1 - beta2


def _params(opt: torch.optim.Optimizer):
    return [p for group in opt.param_groups for p in group["params"]]


def _load_module(path: pathlib.Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load(path) -> AuthorsCode:
    """Their two optimizers from a checkout at ``path``; ValueError saying what is missing."""
    root = pathlib.Path(path).expanduser().resolve()
    files = [root / "optimizers" / name for name in ("sassha.py", "msassha.py")]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise ValueError(f"--authors-code {path}: not a checkout of the authors' repository "
                         f"(missing {', '.join(missing)})")
    sassha = _load_module(files[0], "bench_authors_sassha")
    msassha = _load_module(files[1], "bench_authors_msassha")
    for module, cls in ((sassha, "SASSHA"), (msassha, "MSASSHA")):
        if not hasattr(module, cls):
            raise ValueError(f"--authors-code {path}: {module.__file__} defines no {cls}")
    return AuthorsCode(root, sassha, msassha)
