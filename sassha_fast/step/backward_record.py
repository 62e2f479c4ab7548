"""Whether the backward pass that wrote the gradients ran with ``create_graph=True``.

A gradient that carries no graph means either that the backward pass did not keep one (the
caller forgot ``create_graph=True``: an error) or that the loss has no curvature in any
parameter (``lin(x).sum()`` of a bias-free ``nn.Linear``: the Hessian is zero). The tensors
look the same; autograd's grad mode inside the backward pass tells them apart (it is on
exactly when the pass creates a graph), so a hook on each parameter notes it."""
import functools
import weakref
from typing import List

import torch
from torch import Tensor


class BackwardRecord:
    """Notes, for the parameters it watches, whether the last gradient accumulation ran in
    a ``create_graph`` backward pass. The hooks hold it weakly and it removes them when it
    goes (with its optimizer), so parameters outliving the optimizer keep no hook."""

    def __init__(self):
        self.create_graph = False
        # A gradient was accumulated since the optimizer last stepped (it clears this).
        self.accumulated = False
        self._handles: List = []

    def watch(self, params: List[Tensor]) -> None:
        for p in params:
            if p.requires_grad:
                self._handles.append(p.register_post_accumulate_grad_hook(
                    functools.partial(_note, weakref.ref(self))))

    def __del__(self) -> None:
        for handle in self._handles:
            handle.remove()

    def __getstate__(self) -> dict:
        # Hooks do not survive a copy of the parameters: the optimizer watches them again.
        return {"create_graph": self.create_graph, "accumulated": self.accumulated,
                "_handles": []}


def _note(record_ref, _param: Tensor) -> None:
    record = record_ref()
    if record is not None:
        record.create_graph = torch.is_grad_enabled()
        record.accumulated = True
