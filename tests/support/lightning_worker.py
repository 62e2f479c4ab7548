"""Lightning's ``strategy="ddp"`` on several processes: run by torchrun (launchers.py) as
``lightning_worker.py NAME...``; Lightning finds torchrun's environment and joins its
processes instead of starting its own. Each rank fits every named configuration of CONFIGS
and saves what ``train`` returns. Rank r is fed the r-th of every WORLD consecutive batches
of ``data()`` (its own sampler, in order: Lightning's DistributedSampler would shuffle);
``train(name, world=1)`` is the same fit in one process fed each step's WORLD batches as
one."""
import os
import sys

import torch

from sassha_fast import MSASSHA, SASSHA
from controls import averaging_only_in_step, without_hessian_averaging
from launchers import WORLD, save_rank_result
from tiny_lightning import FD, Automatic, Manual, ManualAccumulating, data, fit

# A larger relative step than the default, as in trainer_worker.py.
FD_EPS = dict(FD, fd_eps=1e-2)
# What bf16 autocast needs of the finite difference (the refusal says so).
FD_BF16 = dict(FD, fd_eps=3e-2, fd_scheme="central")
# One step: SASSHA's first update divides by the square root of |h|, whose smallest entries
# bf16 resolves to no digit, so from the first step on the parameters of two ranks and of one
# process, which round the gradients differently, are O(1) apart (measured: 0.37-1.04 of each
# tensor's largest entry); the step's momentum and Hessian estimate can still be compared.
BF16 = dict(precision="bf16-mixed", max_steps=1)

# name: (LightningModule, its arguments, pl.Trainer arguments, change for a negative control)
CONFIGS = {
    "automatic-sassha-fd": (Automatic, dict(optimizer=SASSHA, **FD_EPS), {}, None),
    "automatic-msassha-fd": (Automatic, dict(optimizer=MSASSHA, **FD_EPS), {}, None),
    "manual-autograd": (Manual, dict(hessian_estimator="autograd"), {}, None),
    "manual-fd": (Manual, FD_EPS, {}, None),
    "manual-accumulating-clipped": (ManualAccumulating, {}, {}, None),
    "automatic-sassha-fd-bf16": (Automatic, dict(optimizer=SASSHA, **FD_BF16), BF16, None),
    "manual-autograd-bf16": (Manual, dict(hessian_estimator="autograd"), BF16, None),
    "manual-autograd-local-hessians": (Manual, dict(hessian_estimator="autograd"), {},
                                       without_hessian_averaging),
    "manual-accumulating-clipping-each-rank": (ManualAccumulating, {}, {},
                                               averaging_only_in_step),
}
CONTROLS = {name: config[3] for name, config in CONFIGS.items() if config[3] is not None}
# What each negative control is compared with.
CONTROLLED = {"manual-autograd-local-hessians": "manual-autograd",
              "manual-accumulating-clipping-each-rank": "manual-accumulating-clipped"}


def train(name: str, world: int, batches=None) -> dict:
    """Two epochs, four steps (Hessian estimates at the first and third; bf16: the first
    only): the parameters and the whole optimizer state. ``batches``: what one process is fed
    instead of each step's WORLD batches as one (a negative control)."""
    module_class, kwargs, trainer_kwargs, change = CONFIGS[name]
    module = module_class(**kwargs)
    if change is not None:
        configure = module.configure_optimizers

        def configure_optimizers():
            opt = configure()
            change(opt)
            return opt
        module.configure_optimizers = configure_optimizers
    if world > 1:
        fit(module, epochs=2, batches=data()[int(os.environ["RANK"])::WORLD], devices=WORLD,
            strategy="ddp", use_distributed_sampler=False, **trainer_kwargs)
    else:
        fit(module, epochs=2, batches=data(16 * WORLD) if batches is None else batches,
            **trainer_kwargs)
    opt = module.trainer.optimizers[0]
    params = list(module.net.parameters())
    return {"params": [p.detach().clone() for p in params],
            "exp_avg": [opt.state[p]["exp_avg"].clone() for p in params],
            "exp_hessian_diag": [opt.state[p]["exp_hessian_diag"].clone() for p in params],
            "optimizer": opt.state_dict(), "global_step": module.trainer.global_step}


if __name__ == "__main__":
    save_rank_result({name: train(name, WORLD) for name in sys.argv[1:]})
