"""``SasshaTrainer`` on several processes: run by torchrun or ``accelerate launch``
(launchers.py) as ``trainer_worker.py NAME...``, each rank trains every named configuration
of CONFIGS on its share of the data and saves what ``train`` returns. ``train(name,
world=1)`` is the same run in one process fed every rank's share at once (a micro-batch
WORLD times as large, in the same order: accelerate hands rank r the r-th of every WORLD
consecutive micro-batches)."""
import sys
import tempfile

import torch

from sassha_fast import MSASSHA, SASSHA
from controls import averaging_only_in_step, without_hessian_averaging
from launchers import WORLD, save_rank_result
from tiny_gpt2 import FD, MICRO, SETTINGS, logged, make_model, trainer_for

# A larger relative step than the default: the ranks' summation order changes the gradients
# by round-off, which the difference quotient divides by its step (as in
# tests/distributed/test_distributed.py).
FD_EPS = 1e-2
# Below every step's gradient norm here (0.48-0.88): every step is clipped.
CLIP = 0.2


# name: (optimizer, estimator, what the worker changes for a negative control)
CONFIGS = {
    "sassha-autograd": (SASSHA, "autograd", None),
    "sassha-fd": (SASSHA, FD, None),
    "msassha-autograd": (MSASSHA, "autograd", None),
    "msassha-fd": (MSASSHA, FD, None),
    "sassha-autograd-local-hessians": (SASSHA, "autograd", without_hessian_averaging),
    "sassha-autograd-clipping-each-rank": (SASSHA, "autograd", averaging_only_in_step),
}
CONTROLS = [name for name, (_, _, change) in CONFIGS.items() if change is not None]


def train(name: str, world: int, examples=None) -> dict:
    """Four steps (Hessian estimates at the first and third), two micro-batches each,
    clipped: the parameters, the whole optimizer state and what the Trainer logged.
    ``examples``: what one process is fed, in micro-batches of MICRO, instead of every
    rank's share (a negative control)."""
    optimizer, estimator, change = CONFIGS[name]
    model = make_model()
    fd = dict(fd_eps=FD_EPS) if estimator == FD else {}
    opt = optimizer(model.parameters(), hessian_estimator=estimator, **fd,
                    **SETTINGS[optimizer])
    if change is not None:
        change(opt)
    with tempfile.TemporaryDirectory() as out:
        micro = MICRO * WORLD // world if examples is None else MICRO
        trainer = trainer_for(model, opt, out, examples=examples, max_grad_norm=CLIP,
                              per_device_train_batch_size=micro)
        trainer.train()
    return {"params": [p.detach().clone() for p in model.parameters()],
            "exp_avg": [opt.state[p]["exp_avg"].clone() for p in model.parameters()],
            "exp_hessian_diag": [opt.state[p]["exp_hessian_diag"].clone()
                                 for p in model.parameters()],
            "optimizer": opt.state_dict(), "losses": logged(trainer),
            "grad_norms": logged(trainer, "grad_norm")}


if __name__ == "__main__":
    save_rank_result({name: train(name, WORLD) for name in sys.argv[1:]})
