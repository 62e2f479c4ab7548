"""SASSHA and M-SASSHA inside training frameworks. Each submodule imports its framework
only when it is itself imported (none is a dependency of sassha_fast):

* ``sassha_fast.integrations.lightning``: ``SasshaLightningMixin`` for a LightningModule
  (pytorch_lightning or lightning.pytorch), automatic and manual optimization;
* ``sassha_fast.integrations.transformers``: ``SasshaTrainer``, a ``transformers.Trainer``
  that runs the optimizer's passes.

How to use them, and what each supports: docs/integrations.md."""
from typing import Any

import torch


def raw_optimizer(optimizer: Any) -> Any:
    """The optimizer under Lightning's ``LightningOptimizer`` and accelerate's
    ``AcceleratedOptimizer`` (both keep it in ``.optimizer``; Lightning's also passes
    ``isinstance`` checks for the class it wraps, so that cannot tell them apart)."""
    while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    return optimizer
