"""Freezing BatchNorm running statistics during the perturbed forward pass.

The optimizer does not know the model, so the freeze is a global forward pre-hook that
sets the momentum of every batch-norm module it meets to 0 for the duration (the authors'
training scripts do the same module by module) and restores it afterwards."""
import contextlib
from typing import Dict

import torch
from torch.nn.modules.batchnorm import _BatchNorm


@contextlib.contextmanager
def frozen_batchnorm_stats():
    saved: Dict[_BatchNorm, object] = {}

    def freeze(module, _inputs):
        if isinstance(module, _BatchNorm) and module not in saved:
            saved[module] = module.momentum
            module.momentum = 0.0

    handle = torch.nn.modules.module.register_module_forward_pre_hook(freeze)
    try:
        yield
    finally:
        handle.remove()
        for module, momentum in saved.items():
            module.momentum = momentum
