"""Freezing BatchNorm running statistics during the perturbed forward pass.

The optimizer does not know the model, so the freeze is a global forward pre-hook that
sets the momentum of every batch-norm module it meets to 0 for the duration (the authors'
training scripts do the same module by module) and restores it afterwards. The batch
counter is restored too: with ``momentum=None`` it weights the cumulative average, which a
perturbed pass must not shift.

A torch.compile'd module runs its batch-norm layers inside the compiled graph, where a
momentum set by a hook is not seen; the hook also fires for the compiled module itself, so
the running statistics of the batch-norm layers inside it are saved there and restored
afterwards instead."""
import contextlib
import warnings
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor
from torch._dynamo.eval_frame import OptimizedModule
from torch.nn.modules.batchnorm import _BatchNorm

_COMPILED_MODULE_HOOK_WARNING = r"Using `torch.compile\(module\)` when there are global hooks"


@contextlib.contextmanager
def frozen_batchnorm_stats():
    saved: Dict[_BatchNorm, Tuple[Optional[float], Optional[Tensor]]] = {}

    compiled_stats: Dict[_BatchNorm, Dict[str, Tensor]] = {}

    def freeze(module, _inputs):
        if isinstance(module, _BatchNorm) and module not in saved:
            counter = module.num_batches_tracked
            saved[module] = (module.momentum, None if counter is None else counter.clone())
            module.momentum = 0.0
        elif isinstance(module, OptimizedModule):
            for inner in module.modules():
                if isinstance(inner, _BatchNorm) and inner not in compiled_stats:
                    compiled_stats[inner] = {name: buffer.clone() for name, buffer
                                             in inner.named_buffers(recurse=False)}

    handle = torch.nn.modules.module.register_module_forward_pre_hook(freeze)
    try:
        with warnings.catch_warnings():
            # A torch.compile'd module fires global hooks twice; this one is idempotent.
            warnings.filterwarnings("ignore", message=_COMPILED_MODULE_HOOK_WARNING)
            yield
    finally:
        handle.remove()
        for module, (momentum, counter) in saved.items():
            module.momentum = momentum
            if counter is not None:
                module.num_batches_tracked.copy_(counter)
        for module, buffers in compiled_stats.items():
            for name, buffer in module.named_buffers(recurse=False):
                buffer.copy_(buffers[name])
