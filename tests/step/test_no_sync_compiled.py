"""The device path stays free of host synchronisation under torch.compile: the method-level
loop of test_no_sync.py with perturb_weights(), unperturb() and step() compiled, Hessian
steps and the periodic skip check included, with and without a GradScaler.

The guard of test_no_sync.py still sees the host reads of the code that runs eagerly (a
Hessian step's estimate, the bookkeeping around the update, anything after a graph break);
torch.compile's own work while it compiles is exempt (once per compilation, not part of a
step). A read traced into a graph runs as an ATen op that no Python method sees, so the
graphs the compiled calls ran are searched for such ops. Negative controls show each half
catching a read of the skip flag."""
import pytest
import torch
import torch._dynamo
from functorch.compile import make_boxed_func
from torch._dynamo.backends.common import aot_autograd

from sassha_fast import MSASSHA, SASSHA
from sassha_fast.step.skips import SkipCounter
from test_no_sync import (STEPS, HostSync, assert_close_to_host_path, make_model, needs_cuda,
                          run, usable)
from tiny import LOSS, whole_batch

OPTIMIZERS = [SASSHA, MSASSHA]

# The ATen ops that copy a value to the host (what SYNCING and HOST_READING become in a graph).
HOST_READING_OPS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default,
                    torch.ops.aten.equal.default, torch.ops.aten.is_nonzero.default}
COMPILED_BACKENDS = ["reference", "foreach", "cpu"]


class GraphRecorder:
    """A torch.compile backend (AOTAutograd, run eagerly) that keeps the ATen graphs."""

    def __init__(self):
        self.graphs = []

    def __call__(self, gm, example_inputs):
        def keep(graph, _):
            self.graphs.append(graph)
            return make_boxed_func(graph.forward)
        return aot_autograd(fw_compiler=keep)(gm, example_inputs)

    def host_reads(self) -> list:
        """The nodes that read a value on the host, or copy a device tensor to it."""
        def to_host(node) -> bool:
            out = node.meta.get("val")
            return isinstance(out, torch.Tensor) and out.device.type == "cpu" and any(
                isinstance(i.meta.get("val"), torch.Tensor)
                and i.meta["val"].device.type != "cpu" for i in node.all_input_nodes)
        return [node for graph in self.graphs for node in graph.graph.nodes
                if node.target in HOST_READING_OPS or to_host(node)]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
@pytest.mark.parametrize("use_scaler", [False, True], ids=["fp32", "grad_scaler"])
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("backend", COMPILED_BACKENDS)
def test_no_host_read_in_the_compiled_device_path(optimizer, backend, use_scaler, device):
    """The method-level loop with perturb_weights(), unperturb() and step() compiled: no
    host read in what runs eagerly (the guard) nor in the graphs; the numbers are the host
    path's."""
    usable(backend)
    torch._dynamo.reset()
    recorder = GraphRecorder()
    model, opt = run(optimizer, backend, True, False, use_scaler, device=device,
                     compile_with=recorder)
    assert recorder.graphs and not recorder.host_reads(), recorder.host_reads()
    host_model, host_opt = run(optimizer, backend, False, False, use_scaler, device=device)
    assert int(opt.state[model[0].weight]["step"]) == STEPS
    assert opt.skipped_steps == host_opt.skipped_steps == 0
    assert_close_to_host_path(model, host_model)


def test_an_injected_host_read_under_compile_fails_the_guard(monkeypatch):
    """Negative control: a read of the skip flag in a compiled step breaks the graph there
    and runs eagerly, where the guard sees it."""
    record = SkipCounter.record

    def reading_record(self, skipped):
        skipped.item()
        record(self, skipped)

    monkeypatch.setattr(SkipCounter, "record", reading_record)
    torch._dynamo.reset()
    with pytest.raises(HostSync):
        run(SASSHA, "reference", True, False, use_scaler=False, compile_with=GraphRecorder())


def test_a_host_read_traced_into_a_graph_is_found_there(monkeypatch):
    """Negative control: with capture_scalar_outputs the read is traced into the graph,
    where no Python method sees it; the search of the graphs finds it."""
    record = SkipCounter.record

    def reading_record(self, skipped):
        self.last = skipped.item()  # kept: the read cannot be folded away
        record(self, skipped)

    monkeypatch.setattr(SkipCounter, "record", reading_record)
    torch._dynamo.reset()
    recorder = GraphRecorder()
    with torch._dynamo.config.patch(capture_scalar_outputs=True):
        model = make_model()
        x, y = whole_batch()
        opt = SASSHA(model.parameters(), lazy_hessian=2, backend="reference", capturable=True,
                     rho=0.05)
        step = torch.compile(opt.step, backend=recorder)
        for _ in range(3):
            LOSS(model(x), y).backward(create_graph=opt.hessian_due)
            step()
            opt.zero_grad()
    reads = recorder.host_reads()
    assert reads and {node.target for node in reads} == {
        torch.ops.aten._local_scalar_dense.default}
