"""torch.compile of the optimizer's own calls, built with capturable=True (the device path):
without a Hessian estimate, step(), perturb_weights() and unperturb() are one graph each,
with no graph break; a compiled loop, Hessian steps included (their estimate runs eagerly),
trains as the eager one does, runs one graph per compiled call and stops compiling once it
has seen each kind of step; a compiled function holding the forward and backward passes
trains as eager does too. The host path says once that it cannot be traced whole and still
trains as eager does. (tests/step/test_no_sync.py proves the compiled device path
sync-free.)"""
import warnings

import pytest
import torch
import torch._dynamo

from sassha_fast import MSASSHA, SASSHA, available_backends
from sassha_fast.step.skips import SkippedStepWarning
from backend_params import backend_device_params
from tiny import LOSS, PAPER_SETTINGS, assert_identical, make_model, snapshot, whole_batch

OPTIMIZERS = [SASSHA, MSASSHA]
BACKENDS = backend_device_params(["reference", "foreach", "cpu", "triton", "cuda"])
LAZY = 3  # Hessian steps are iterations 0, 3, 6, 9
ITERATIONS = 12
AFTER_TWO_CYCLES = 2 * LAZY + 1  # every kind of step compiled by then
TOLERANCE = dict(rtol=0, atol=1e-5)


class Run:
    """A model, its batch and an optimizer; the authors' loop, whose optimizer calls may
    be compiled."""

    def __init__(self, optimizer, backend="foreach", device="cpu", capturable=True,
                 **options):
        self.model = make_model().to(device)
        self.x, self.y = (t.to(device) for t in whole_batch())
        self.opt = optimizer(self.model.parameters(), lazy_hessian=LAZY, backend=backend,
                             capturable=capturable, **PAPER_SETTINGS[optimizer], **options)
        names = ("perturb_weights", "unperturb", "step") if optimizer is SASSHA else ("step",)
        self.calls = {name: getattr(self.opt, name) for name in names}

    def compile(self, backend="inductor", **options) -> "Run":
        self.calls = {name: torch.compile(call, backend=backend, **options)
                      for name, call in self.calls.items()}
        return self

    def loss(self):
        return LOSS(self.model(self.x), self.y)

    def passes(self) -> None:
        """The backward passes of an iteration (and SASSHA's move to w + e and back)."""
        due = self.opt.hessian_due
        if "perturb_weights" in self.calls:
            self.loss().backward()
            self.calls["perturb_weights"](zero_grad=True)
            self.loss().backward(create_graph=due)
            self.calls["unperturb"]()
        else:
            self.loss().backward(create_graph=due)

    def iteration(self) -> None:
        self.passes()
        self.calls["step"]()
        self.opt.zero_grad()

    def assert_close_to(self, other: "Run") -> None:
        for p, q in zip(self.model.parameters(), other.model.parameters()):
            torch.testing.assert_close(p, q, **TOLERANCE)


class CountingBackend:
    """aot_eager, counting the graphs it compiles and the graph calls it runs."""

    def __init__(self):
        self.compiled = 0
        self.calls = 0
        self._aot_eager = torch._dynamo.lookup_backend("aot_eager")

    def __call__(self, gm, example_inputs):
        self.compiled += 1
        compiled = self._aot_eager(gm, example_inputs)

        def counted(*args):
            self.calls += 1
            return compiled(*args)

        counted._boxed_call = getattr(compiled, "_boxed_call", False)
        return counted


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()  # no cache entry or skipped frame from another test
    yield
    torch._dynamo.reset()


def assert_one_graph(call) -> None:
    explained = torch._dynamo.explain(call)()
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)
    # Not even a break next to an empty graph (explain counts graphs, not breaks).
    assert not explained.break_reasons, [r.reason for r in explained.break_reasons]


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_calls_without_a_hessian_estimate_are_one_graph(optimizer, backend, device):
    run = Run(optimizer, backend, device)
    for _ in range(2):  # the first Hessian step, then one without: the state exists
        run.iteration()
    assert not run.opt.hessian_due and run.opt.device_path
    opt = run.opt
    run.loss().backward()
    if optimizer is SASSHA:
        assert_one_graph(lambda: opt.perturb_weights(zero_grad=True))
        run.loss().backward()
        assert_one_graph(opt.unperturb)
    assert_one_graph(opt.step)


@pytest.mark.parametrize("first", ["hessian", "plain"],
                         ids=["compiled-from-a-hessian-step", "compiled-from-a-plain-step"])
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_a_compiled_loop_trains_as_eager_one_graph_per_call(optimizer, backend, device, first):
    """Each compiled call runs exactly one graph (unperturb() after a create_graph pass:
    none, it runs eagerly), on Hessian steps too, whichever kind of step is compiled
    first; after two lazy-Hessian cycles nothing is compiled any more."""
    eager = Run(optimizer, backend, device)
    compiled = Run(optimizer, backend, device)
    if first == "plain":
        eager.iteration()
        compiled.iteration()
    counting = CountingBackend()
    compiled.compile(counting)
    settled = None
    for i in range(ITERATIONS - (first == "plain")):
        eager.iteration()
        due = compiled.opt.hessian_due
        calls = counting.calls
        compiled.iteration()
        expected = 1 if optimizer is MSASSHA else (2 if due else 3)
        assert counting.calls - calls == expected, f"iteration {i}, hessian step: {due}"
        if i == AFTER_TWO_CYCLES:
            settled = counting.compiled
    assert counting.compiled == settled  # no step of the last cycles compiled anything
    compiled.assert_close_to(eager)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_fullgraph_refuses_a_hessian_step_before_it_changes_anything(optimizer):
    run = Run(optimizer)
    for _ in range(LAZY):
        run.iteration()
    step = torch.compile(run.opt.step, fullgraph=True, backend="aot_eager")
    assert run.opt.hessian_due
    run.passes()
    before = snapshot(run.model, run.opt)
    with pytest.raises(torch._dynamo.exc.Unsupported, match="_estimate_eagerly"):
        step()
    assert_identical(snapshot(run.model, run.opt), before)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_fullgraph_calls_on_the_steps_without_a_hessian_estimate_train_as_eager(optimizer):
    """fullgraph=True: no graph break at all in any call of those steps, whatever the
    counters; Hessian iterations run the eager calls."""
    eager, run = Run(optimizer), Run(optimizer)
    own = dict(run.calls)
    whole = {name: torch.compile(call, fullgraph=True, backend="aot_eager")
             for name, call in own.items()}
    for _ in range(ITERATIONS):
        eager.iteration()
        run.calls = own if run.opt.hessian_due else whole
        run.iteration()
    run.assert_close_to(eager)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_finite_difference_hessian_steps_under_compile_train_as_eager(optimizer):
    """The other estimator: its probes run in the caller's loop, the step folds them in."""
    def iteration(run):
        due = run.opt.hessian_due
        if optimizer is SASSHA:
            run.loss().backward()
            run.calls["perturb_weights"](zero_grad=True)
        run.loss().backward()
        for _ in run.opt.hessian_probes() if due else ():
            run.loss().backward()
        if optimizer is SASSHA:
            run.calls["unperturb"]()
        run.calls["step"]()
        run.opt.zero_grad()

    eager = Run(optimizer, hessian_estimator="finite_difference")
    compiled = Run(optimizer, hessian_estimator="finite_difference").compile("aot_eager")
    for _ in range(AFTER_TWO_CYCLES):
        iteration(eager)
        iteration(compiled)
    compiled.assert_close_to(eager)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_a_step_skipped_on_the_device_under_compile_matches_eager(optimizer):
    """A NaN gradient on a step without a Hessian estimate: the compiled step skips it on
    the device as the eager one does, and the periodic skip check reports it."""
    runs = [Run(optimizer, skip_check_interval=2), Run(optimizer, skip_check_interval=2)]
    runs[1].compile("aot_eager")
    for run in runs:
        for i in range(AFTER_TWO_CYCLES):
            handle = run.model[0].bias.register_hook(
                lambda g: torch.full_like(g, float("nan"))) if i == 4 else None
            with pytest.warns(SkippedStepWarning) if i == 5 else warnings.catch_warnings():
                run.iteration()
            if handle is not None:
                handle.remove()
        assert run.opt.skipped_steps == 1
    runs[1].assert_close_to(runs[0])


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_a_compiled_train_step_with_forward_and_backward_trains_as_eager(optimizer, backend,
                                                                         device):
    """The function a training library compiles: forward, backward and the optimizer's
    calls (graph breaks around backward); Hessian iterations run the eager loop, whose
    backward keeps the graph."""
    eager = Run(optimizer, backend, device)
    run = Run(optimizer, backend, device)
    model, opt = run.model, run.opt

    @torch.compile(backend="aot_eager")
    def train_step(x, y):
        loss = LOSS(model(x), y)
        loss.backward()
        if optimizer is SASSHA:
            opt.perturb_weights(zero_grad=True)
            LOSS(model(x), y).backward()
            opt.unperturb()
        opt.step()
        opt.zero_grad()
        return loss.detach()

    for _ in range(ITERATIONS):
        eager.iteration()
        if opt.hessian_due:
            run.iteration()
        else:
            train_step(run.x, run.y)
    run.assert_close_to(eager)


class Cycle:
    """A scheduler: the values in turn."""

    def __init__(self, *values):
        self.values, self.calls = values, 0

    def step(self):
        self.calls += 1
        return self.values[(self.calls - 1) % len(self.values)]


def test_schedulers_under_compile_set_what_they_set_eagerly():
    """rho_t and hessian_power_t are the optimizer's attributes, which torch.compile would
    not write (pytorch/pytorch#171590): the schedulers run eagerly."""
    def make():
        return Run(SASSHA, hessian_power_scheduler=Cycle(0.5, 0.75),
                   rho_scheduler=Cycle(0.05, 0.02, 0.08))

    eager, compiled = make(), make().compile("aot_eager")
    for _ in range(AFTER_TWO_CYCLES):
        eager.iteration()
        compiled.iteration()
        assert (compiled.opt.rho_t, compiled.opt.hessian_power_t) == \
            (eager.opt.rho_t, eager.opt.hessian_power_t)
    compiled.assert_close_to(eager)


def test_a_compiled_msassha_step_from_the_clean_point_trains_as_eager():
    """After move_back_from_momentumAscent() (as an evaluation leaves the weights), the step
    leaves from w and records that the weights are at the perturbed point again."""
    eager, compiled = Run(MSASSHA), Run(MSASSHA).compile("aot_eager")
    for run in (eager, compiled):
        for i in range(AFTER_TWO_CYCLES):
            if i % 2:
                run.opt.move_back_from_momentumAscent()
            run.iteration()
            assert run.opt.at_perturbed_point
    compiled.assert_close_to(eager)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_the_host_path_says_once_it_cannot_be_traced_whole_and_trains_as_eager(optimizer):
    eager = Run(optimizer, capturable=False)
    compiled = Run(optimizer, capturable=False).compile("aot_eager")
    assert not compiled.opt.device_path
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(AFTER_TWO_CYCLES):
            eager.iteration()
        assert not [w for w in caught if "capturable=True" in str(w.message)]
        for _ in range(AFTER_TWO_CYCLES):
            compiled.iteration()
    told = [w for w in caught if "capturable=True" in str(w.message)]
    assert len(told) == 1 and told[0].filename == __file__  # at the caller's line
    compiled.assert_close_to(eager)


def test_inductor_compiles_a_step_that_trains_as_eager():
    """The default backend, once (it compiles C++ on the CPU: slow): M-SASSHA's one-call
    loop, Hessian steps included."""
    eager = Run(MSASSHA)
    compiled = Run(MSASSHA).compile("inductor")
    for _ in range(LAZY + 2):
        eager.iteration()
        compiled.iteration()
    compiled.assert_close_to(eager)


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="needs a CUDA device: mode='reduce-overhead' records CUDA graphs")
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("backend", ["cuda", "triton", "foreach"])
def test_a_compiled_loop_in_cuda_graphs_trains_as_eager(optimizer, backend):
    """mode="reduce-overhead": inductor records the compiled calls in CUDA graphs and
    replays them, Hessian steps (their estimate eager) included."""
    availability = available_backends()[backend]
    if not availability.available:
        pytest.skip(f"backend {backend!r} unavailable here: {availability.reason}")
    eager = Run(optimizer, backend, "cuda")
    compiled = Run(optimizer, backend, "cuda").compile(mode="reduce-overhead")
    for _ in range(ITERATIONS):
        eager.iteration()
        compiled.iteration()
    compiled.assert_close_to(eager)
