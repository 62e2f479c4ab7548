"""On a GPU: whole ``step(closure)`` iterations captured in CUDA graphs (``GraphedStep``)
replay to the eager numbers, and the default device path runs under CUDA's sync debug mode
set to "error". Those are skipped without CUDA (the CPU proof is tests/step/test_no_sync.py);
GraphedStep's refusals are checked everywhere."""
import pytest
import torch
from torch import nn

from sassha_fast import MSASSHA, SASSHA, available_backends
from sassha_fast.cuda_graphs import GraphedStep
from test_no_sync import takes_found_inf
from tiny import PAPER_SETTINGS

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA device (CUDA graphs, sync debug mode)")

LOSS = nn.CrossEntropyLoss()
WARMUP = 3  # eager: Hessian, plain, Hessian (lazy_hessian=2)
REPLAYS = 6
CUDA_BACKENDS = ["reference", "foreach", "triton", "cuda"]


def usable_on_cuda(backend: str) -> None:
    availability = available_backends()[backend]
    if not availability.available:
        pytest.skip(f"backend {backend!r} unavailable here: {availability.reason}")
    if not takes_found_inf(backend):
        pytest.skip(f"backend {backend!r} does not take found_inf yet (op contract item 2)")


def setup(optimizer_class, backend, **kwargs):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.Tanh(),
                          nn.Linear(32, 4)).cuda()
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(64, 16, generator=generator).cuda()
    y = torch.randint(0, 4, (64,), generator=generator).cuda()
    opt = optimizer_class(model.parameters(), lazy_hessian=2, backend=backend, **kwargs,
                          **PAPER_SETTINGS[optimizer_class])
    return model, opt, x, y


@needs_cuda
@pytest.mark.parametrize("use_scaler", [False, True], ids=["fp32", "grad_scaler"])
@pytest.mark.parametrize("optimizer", [SASSHA, MSASSHA])
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_capture_whole_iterations_and_replay_them_like_eager(backend, optimizer, use_scaler):
    usable_on_cuda(backend)
    model, opt, x, y = setup(optimizer, backend)
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0 ** 10) if use_scaler else None
    eager_losses = []
    for _ in range(WARMUP + REPLAYS):
        eager_losses.append(opt.step(lambda: LOSS(model(x), y), scaler=scaler).item())
        if scaler is not None:
            scaler.update()
    eager = [p.detach().clone() for p in model.parameters()]

    model, opt, x, y = setup(optimizer, backend)
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0 ** 10) if use_scaler else None
    closure = lambda: LOSS(model(x), y)  # noqa: E731 (reads the static batch)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up on a side stream, as torch.cuda.graphs asks
        for _ in range(WARMUP):
            opt.step(closure, scaler=scaler)
            if scaler is not None:
                scaler.update()
    torch.cuda.current_stream().wait_stream(side)
    graphed = GraphedStep(opt, closure, scaler=scaler)
    losses = []
    for _ in range(REPLAYS):
        losses.append(graphed().item())
        if scaler is not None:
            scaler.update()
    assert sorted(graphed._graphs) == [False, True]  # both kinds captured and replayed
    assert opt.state[model[0].weight]["hessian_step"] == WARMUP + REPLAYS
    torch.testing.assert_close(losses, eager_losses[WARMUP:], rtol=1e-5, atol=1e-6)
    for p, q in zip(model.parameters(), eager):
        torch.testing.assert_close(p.detach(), q, rtol=1e-5, atol=1e-6)


@needs_cuda
@pytest.mark.parametrize("optimizer", [SASSHA, MSASSHA])
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_no_host_sync_on_cuda_under_sync_debug_mode(backend, optimizer):
    """Past the skip-check interval: its copy of the counts into pinned memory included."""
    usable_on_cuda(backend)
    model, opt, x, y = setup(optimizer, backend, skip_check_interval=2)
    opt.step(lambda: LOSS(model(x), y))  # creates the state (and CUDA's lazy handles)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(6):  # Hessian and plain steps, three skip checks
            opt.step(lambda: LOSS(model(x), y))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert opt.skipped_steps == 0


@pytest.mark.parametrize("capturable,steps,error", [
    (False, 1, "device path"), (True, 0, "take a few eager optimizer steps")])
def test_graphed_step_refuses_what_it_cannot_capture(capturable, steps, error):
    model = nn.Linear(3, 2)
    opt = SASSHA(model.parameters(), capturable=capturable, backend="reference", rho=0.05)
    x = torch.randn(4, 3)
    for _ in range(steps):
        opt.step(lambda: model(x).square().sum())
    with pytest.raises((ValueError, RuntimeError), match=error):
        GraphedStep(opt, lambda: model(x).square().sum())
