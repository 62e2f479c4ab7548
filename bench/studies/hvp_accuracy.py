"""Accuracy of the finite-difference Hessian-vector product against the exact one.

    python -m bench.studies.hvp_accuracy [--device cpu|cuda] [--quick | --smoke]

For an MLP, a CNN with BatchNorm and GELU, a CIFAR ResNet with BatchNorm (train mode), a
4-layer GPT with hand-written attention and a small ViT (hand-written attention, so that
the double backward runs), prints the relative L2 error ||Hz_fd - Hz|| / ||Hz|| of the estimate that
``hessian_estimator="finite_difference"`` uses, for each scheme and relative step eps_rel
(eps * ||z|| = eps_rel * ||w||), z Rademacher, Hz from a double backward in fp32. Then the
same for the GPT in low precision: fp32 weights under bf16 / fp16 autocast, and bf16 weights
(the latter is refused by the optimizers; the numbers say why). The last column,
Hutchinson's own sampling noise, is ||z1*Hz1 - z2*Hz2|| / ||z1*Hz1|| for two draws: the
spread of the diagonal estimate that any exact product still has.

A second table shows what the preconditioner sees, at the default steps, with the
resolution floor (``floor``) and without it (``raw``, the estimator before issue 20): per
entry the ratio |h_fd| / |h| (the optimizers use |h|) over the entries where the exact one
is not 0, the fraction of them below 0.1x, the estimate's exact zeros (and the exact
product's), and the relative L2 error of one SASSHA step's update (the train suite's lr 0.15
and weight decay 5e-4, rho 0 so that both estimators see the same point, fresh state)
against the update with the double backward's estimate, and the ratio of their largest
|dw|.
``--smoke``: tiny models, two steps, no low-precision rows (that the command runs).
"""
import argparse
import contextlib
import copy
from typing import Callable, Iterator, List, NamedTuple, Optional

import torch
from torch import Tensor, nn
from torch.nn import functional as F

import sassha_fast
from sassha_fast.hessian import finite_difference
from sassha_fast.hessian.finite_difference import DEFAULT_EPS, FiniteDifferenceSettings
from sassha_fast.hessian.hutchinson import RademacherSource

from ..methods import SASSHA_TRAIN, set_floor
from ..workloads.models import GPT, CifarResNet, GPTConfig, ViT, ViTConfig, bn_cnn

EPS_REL = (1e-2, 1e-3, 3e-4, 1e-4, 1e-5)
# The resolution floor's factors compared: off (the raw difference), one rounding, shipped.
FLOORS = (0.0, 1.0, finite_difference.RESOLUTION_FLOOR)
ROUNDOFF_QUANTILES = (0.5, 0.9, 0.99)
# Low precision rounds the gradients to ~3 significant digits: larger steps.
EPS_REL_LOW_PRECISION = (1e-1, 3e-2, 1e-2, 1e-3)
SEED = 0


class Problem(NamedTuple):
    name: str
    model: nn.Module
    loss: Callable[[nn.Module], Tensor]


def problems(device: torch.device, quick: bool = False,
             smoke: bool = False) -> Iterator[Problem]:
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    width = 16 if smoke else 64
    mlp = nn.Sequential(nn.Linear(32, width), nn.GELU(), nn.Linear(width, width), nn.GELU(),
                        nn.Linear(width, 10)).to(device)
    x = torch.randn(64, 32, generator=generator).to(device)
    y = torch.randint(0, 10, (64,), generator=generator).to(device)
    yield Problem("mlp", mlp, lambda m: F.cross_entropy(m(x), y))

    images = torch.randn(4 if smoke else 16, 3, 16, 16, generator=generator).to(device)
    labels = torch.randint(0, 10, (images.shape[0],), generator=generator).to(device)
    torch.manual_seed(0)
    cnn = bn_cnn().to(device)
    yield Problem("cnn_batchnorm_gelu", cnn, lambda m: F.cross_entropy(m(images), labels))
    if not smoke:
        # ReLU's kinks: the double backward takes its second derivative as 0, while a
        # gradient difference sees every unit the step flips across 0 (docs/estimators.md).
        torch.manual_seed(0)
        resnet = CifarResNet(depth=8).to(device)
        yield Problem("resnet8_batchnorm_relu", resnet,
                      lambda m: F.cross_entropy(m(images), labels))

    yield gpt_problem(device, generator, layers=1 if smoke else 2 if quick else 4)
    yield vit_problem(device, generator, images, labels, smoke)


def vit_problem(device: torch.device, generator: torch.Generator, images: Tensor,
                labels: Tensor, smoke: bool = False) -> Problem:
    torch.manual_seed(0)
    config = ViTConfig(layers=1 if smoke else 2, width=32 if smoke else 64,
                       heads=2 if smoke else 4, attention="manual")
    vit = ViT(config).to(device)
    return Problem(f"vit{config.layers}_patch{config.patch}", vit,
                   lambda m: F.cross_entropy(m(images), labels))


def gpt_problem(device: torch.device, generator: torch.Generator, layers: int = 4) -> Problem:
    torch.manual_seed(0)
    config = GPTConfig(layers=layers, width=64, heads=4, vocab=256, context=32)
    gpt = GPT(config).to(device)
    tokens = torch.randint(0, config.vocab, (8, config.context + 1), generator=generator)
    tokens = tokens.to(device)

    def loss(m):
        logits = m(tokens[:, :-1])
        return F.cross_entropy(logits.float().reshape(-1, config.vocab),
                               tokens[:, 1:].reshape(-1))
    return Problem(f"gpt{layers}_handwritten_attention", gpt, loss)


def params_of(model: nn.Module) -> List[Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


def exact_product(problem: Problem, seed: int = SEED) -> List[Tensor]:
    """Hz by a double backward at the model's weights, in fp32, for the draw of ``seed``."""
    params = params_of(problem.model)
    grads = torch.autograd.grad(problem.loss(problem.model), params, create_graph=True)
    zs = RademacherSource(seed).draw(params)
    return [h.detach() for h in torch.autograd.grad(grads, params, zs)]


def _norm(tensors: List[Tensor]) -> Tensor:
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t.float())
                                                 for t in tensors]))


def fd_product(problem: Problem, fd: FiniteDifferenceSettings, seed: int = SEED,
               forward_context=contextlib.nullcontext) -> List[Tensor]:
    """Hz as the optimizers estimate it (``finite_difference.estimate``), same draw."""
    params = params_of(problem.model)
    for p in params:
        p.grad = None
    with forward_context():
        loss = problem.loss(problem.model)
    loss.backward()
    probes = finite_difference.estimate(fd, params, RademacherSource(seed), 1, _norm, None,
                                        check_precision=False)
    try:
        while True:
            next(probes)
            with forward_context():
                loss = problem.loss(problem.model)
            loss.backward()
    except StopIteration as done:
        hz = done.value
    for p in params:
        p.grad = None
    return hz


def relative_error(estimate: List[Tensor], exact: List[Tensor]) -> float:
    return (_norm([e.float() - x for e, x in zip(estimate, exact)]) / _norm(exact)).item()


def sampling_noise(problem: Problem) -> float:
    params = params_of(problem.model)
    diagonals = []
    for seed in (SEED, SEED + 1):
        zs = RademacherSource(seed).draw(params)
        diagonals.append([z * h for z, h in zip(zs, exact_product(problem, seed))])
    return relative_error(diagonals[1], diagonals[0])


class PreconditionerView(NamedTuple):
    """What the preconditioner sees of one estimate (see the module's docstring)."""
    hz_error: float
    below_tenth: float  # fraction of the entries with an exact product != 0
    zeros: int
    exact_zeros: int
    update_error: float
    largest_step_ratio: float


def one_step_update(problem: Problem, floor: Optional[float] = None,
                    **options) -> List[Tensor]:
    """dw of one SASSHA step from the problem's weights, fresh state, rho 0."""
    model = copy.deepcopy(problem.model)
    opt = sassha_fast.SASSHA(model.parameters(), **SASSHA_TRAIN, rho=0.0, lazy_hessian=1,
                             **options)
    if floor is not None:
        set_floor(opt, floor)
    before = [p.detach().clone() for p in model.parameters()]
    opt.step(lambda: problem.loss(model))
    return [p.detach() - b for p, b in zip(model.parameters(), before)]


def preconditioner_view(problem: Problem, scheme: str, floor: float) -> PreconditionerView:
    exact = exact_product(problem)
    estimate = fd_product(problem, FiniteDifferenceSettings(scheme, DEFAULT_EPS[scheme], floor))
    got = torch.cat([e.abs().flatten().float() for e in estimate])
    want = torch.cat([x.abs().flatten() for x in exact])
    curved = want > 0
    exact_step = one_step_update(problem)
    fd_step = one_step_update(problem, floor, hessian_estimator="finite_difference",
                              fd_scheme=scheme)
    largest = [max(d.abs().max().item() for d in step) for step in (fd_step, exact_step)]
    return PreconditionerView(
        relative_error(estimate, exact),
        (got[curved] < 0.1 * want[curved]).float().mean().item(),
        int((got == 0).sum()), int((~curved).sum()),
        relative_error(fd_step, exact_step), largest[0] / largest[1])


def gradient_roundoff(problem: Problem) -> List[float]:
    """Quantiles (ROUNDOFF_QUANTILES) over the entries with a gradient of
    |g_fp32 - g_fp64| / (u |g_fp64|): the fp32 gradient's error in units of one rounding,
    which the resolution floor's factor must cover."""
    model64 = copy.deepcopy(problem.model).double()
    grads = []
    for model in (problem.model, model64):
        with _float64_inputs() if model is model64 else contextlib.nullcontext():
            grads.append(torch.autograd.grad(problem.loss(model), params_of(model)))
    units = torch.cat([((g.double() - g64).abs() / (finite_difference.unit_roundoff(
        torch.float32) * g64.abs())).flatten() for g, g64 in zip(*grads)])
    units = units[torch.isfinite(units)]
    return torch.quantile(units[:2 ** 24].float(),
                          torch.tensor(ROUNDOFF_QUANTILES)).tolist()


@contextlib.contextmanager
def _float64_inputs():
    """Floating-point tensors built inside (the problems' batches are closed over, so
    they are cast as they enter the model) come out in float64."""
    handle = nn.modules.module.register_module_forward_pre_hook(
        lambda module, inputs: tuple(i.double() if torch.is_floating_point(i) else i
                                     for i in inputs))
    try:
        yield
    finally:
        handle.remove()


def print_preconditioner_views(cases: List[Problem]) -> None:
    print(f"{'model':26} {'scheme':10} {'difference':10} {'hz_error':>9} {'<0.1x':>9} "
          f"{'zeros':>6} {'exact_0':>7} {'update_error':>12} {'max|dw|/exact':>13}")
    for problem in cases:
        # A probe leaves the weights at (w + eps z) - eps z, w up to round-off: every row
        # starts from the same weights.
        weights = copy.deepcopy(problem.model.state_dict())
        for scheme in finite_difference.SCHEMES:
            for floor in FLOORS:
                problem.model.load_state_dict(weights)
                view = preconditioner_view(problem, scheme, floor)
                print(f"{problem.name:26} {scheme:10} {f'floor{floor:g}' if floor else 'raw':10} "
                      f"{view.hz_error:9.1e} {view.below_tenth:9.1e} {view.zeros:6d} "
                      f"{view.exact_zeros:7d} {view.update_error:12.1e} "
                      f"{view.largest_step_ratio:13.3g}", flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a 2-layer GPT, fewer steps")
    size.add_argument("--smoke", action="store_true",
                      help="tiny models, two steps, fp32 only: that the command runs")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    eps_values = EPS_REL[2:4] if args.smoke else EPS_REL[1:4] if args.quick else EPS_REL
    header = f"{'model':26} {'precision':14} {'scheme':10}"
    print(header + " ".join(f"{e:>9.0e}" for e in eps_values) + "  hutchinson_noise")
    cases = list(problems(device, args.quick, args.smoke))
    for problem in cases:
        _print_errors(problem, problem, "fp32", eps_values)
    print()
    print(f"{'model':26} fp32 gradient error / (u |g|), quantiles "
          + ", ".join(f"{q:g}" for q in ROUNDOFF_QUANTILES))
    for problem in cases:
        print(f"{problem.name:26} " + " ".join(f"{v:9.3g}" for v in gradient_roundoff(problem)))
    print()
    print_preconditioner_views(cases)
    if args.smoke:
        return
    print()
    gpt = next(p for p in cases if p.name.startswith("gpt"))
    print(header + " ".join(f"{e:>9.0e}" for e in EPS_REL_LOW_PRECISION))
    for dtype, label in ((torch.bfloat16, "autocast_bf16"), (torch.float16, "autocast_fp16")):
        if dtype == torch.float16 and device.type == "cpu" and args.quick:
            continue
        _print_errors(gpt, gpt, label, EPS_REL_LOW_PRECISION,
                      lambda dtype=dtype: torch.autocast(device.type, dtype=dtype))
    # bf16 weights against the exact product of the same (rounded) weights in fp32.
    reference = Problem(gpt.name, copy.deepcopy(gpt.model.to(torch.bfloat16)).float(),
                        gpt.loss)
    _print_errors(gpt, reference, "bf16_weights", EPS_REL_LOW_PRECISION)


def _print_errors(problem: Problem, reference: Problem, label: str, eps_values,
                  context=contextlib.nullcontext) -> None:
    exact = exact_product(reference)
    noise = sampling_noise(reference)
    for scheme in finite_difference.SCHEMES:
        errors = [relative_error(fd_product(problem, FiniteDifferenceSettings(scheme, eps),
                                            forward_context=context), exact)
                  for eps in eps_values]
        print(f"{problem.name:26} {label:14} {scheme:10}"
              + " ".join(f"{e:9.1e}" for e in errors) + f"  {noise:9.1e}")


if __name__ == "__main__":
    main()
