"""Freezing BatchNorm running statistics during the perturbed forward pass.

The optimizer does not know the model, so the freeze is a global forward pre-hook that
sets the momentum of every batch-norm module it meets to 0 for the duration (the authors'
training scripts do the same module by module) and restores it afterwards. The batch
counter is restored too: with ``momentum=None`` it weights the cumulative average, which a
perturbed pass must not shift."""
import contextlib
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm


@contextlib.contextmanager
def frozen_batchnorm_stats():
    saved: Dict[_BatchNorm, Tuple[Optional[float], Optional[Tensor]]] = {}

    def freeze(module, _inputs):
        if isinstance(module, _BatchNorm) and module not in saved:
            counter = module.num_batches_tracked
            saved[module] = (module.momentum, None if counter is None else counter.clone())
            module.momentum = 0.0

    handle = torch.nn.modules.module.register_module_forward_pre_hook(freeze)
    try:
        yield
    finally:
        handle.remove()
        for module, (momentum, counter) in saved.items():
            module.momentum = momentum
            if counter is not None:
                module.num_batches_tracked.copy_(counter)
