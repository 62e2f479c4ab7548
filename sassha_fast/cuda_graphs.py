"""Whole optimizer iterations captured in CUDA graphs and replayed.

The lazy-Hessian schedule decides on the host whether an iteration runs a double backward,
so an iteration that estimates the Hessian and one that does not are two different graphs.
``GraphedStep`` captures each the first time the schedule asks for it and replays it from
then on, doing after each replay the host's share of the iteration (the schedule's counters,
the periodic skipped-step report, the GradScaler's found-inf record) that ``step()`` does
itself when it runs eagerly.
"""
from typing import Callable, Dict, List, NamedTuple, Optional

import torch
from torch import Tensor

from .step import amp


class _Captured(NamedTuple):
    graph: "torch.cuda.CUDAGraph"
    loss: Tensor  # refreshed by each replay
    params: List[Tensor]  # taking part in the captured step
    found_inf: Optional[Tensor]  # its skip flag, refreshed by each replay


class GraphedStep:
    """``loss = graphed()`` runs ``optimizer.step(closure, scaler=scaler)`` from a CUDA graph.

    The closure reads its batch from static tensors that the caller refills before each
    call. Before the first call the optimizer must be on the device path (CUDA parameters,
    ``capturable`` not False) and must have taken eager steps (on a side stream, as
    ``torch.cuda.graphs`` asks), a Hessian one included: capture records work without running
    it, so the state, the counters and the Rademacher generator must exist already. The set of
    parameters that get gradients must stay the same. What the host reads at capture is frozen
    into the graph: the learning rate and other hyper-parameters, the Hessian power (a
    scheduler is not stepped by replays), the backend; after changing one, or after
    ``load_state_dict``, make a new ``GraphedStep``."""

    def __init__(self, optimizer, closure: Callable[[], Tensor], scaler=None):
        if not optimizer.device_path:
            raise ValueError("GraphedStep needs an optimizer on the device path (CUDA "
                             "parameters and capturable=None or True)")
        if not optimizer.state:
            raise RuntimeError("take a few eager optimizer steps (a Hessian step included) "
                               "before capturing: capture does not run the step, so it cannot "
                               "create the optimizer's state")
        self.optimizer = optimizer
        self.closure = closure
        self.scaler = scaler
        self._graphs: Dict[bool, _Captured] = {}

    def __call__(self) -> Tensor:
        due = self.optimizer.hessian_due
        if due not in self._graphs:
            self._graphs[due] = self._capture()
        captured = self._graphs[due]
        captured.graph.replay()
        if captured.found_inf is not None:
            amp.record_found_inf(self.scaler, self.optimizer, captured.found_inf)
        self.optimizer._finish_iteration(captured.params, captured.found_inf)
        return captured.loss

    def _capture(self) -> _Captured:
        graph = torch.cuda.CUDAGraph()
        for generator in self.optimizer._rademacher.generators():
            graph.register_generator_state(generator)
        with torch.cuda.graph(graph):
            loss = self.optimizer.step(self.closure, scaler=self.scaler)
        params, found_inf = self.optimizer._captured
        return _Captured(graph, loss, params, found_inf)
