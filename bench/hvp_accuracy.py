"""Accuracy of the finite-difference Hessian-vector product against the exact one.

    python -m bench.hvp_accuracy [--device cpu|cuda] [--quick | --smoke]

For an MLP, a CIFAR ResNet with BatchNorm (train mode) and a 4-layer GPT with hand-written
attention, prints the relative L2 error ||Hz_fd - Hz|| / ||Hz|| of the estimate that
``hessian_estimator="finite_difference"`` uses, for each scheme and relative step eps_rel
(eps * ||z|| = eps_rel * ||w||), z Rademacher, Hz from a double backward in fp32. Then the
same for the GPT in low precision: fp32 weights under bf16 / fp16 autocast, and bf16 weights
(the latter is refused by the optimizers; the numbers say why). The last column,
Hutchinson's own sampling noise, is ||z1*Hz1 - z2*Hz2|| / ||z1*Hz1|| for two draws: the
spread of the diagonal estimate that any exact product still has.
"""
import argparse
import contextlib
import copy
from typing import Callable, Iterator, List, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from sassha_fast import finite_difference
from sassha_fast.finite_difference import FiniteDifference
from sassha_fast.hessian import RademacherSource

from .models import GPT, CifarResNet, GPTConfig

EPS_REL = (1e-2, 1e-3, 3e-4, 1e-4, 1e-5)
# Low precision rounds the gradients to ~3 significant digits: larger steps.
EPS_REL_LOW_PRECISION = (1e-1, 3e-2, 1e-2, 1e-3)
SEED = 0


class Problem(NamedTuple):
    name: str
    model: nn.Module
    loss: Callable[[nn.Module], Tensor]


def problems(device: torch.device, quick: bool = False) -> Iterator[Problem]:
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(),
                        nn.Linear(64, 10)).to(device)
    x = torch.randn(64, 32, generator=generator).to(device)
    y = torch.randint(0, 10, (64,), generator=generator).to(device)
    yield Problem("mlp", mlp, lambda m: F.cross_entropy(m(x), y))

    images = torch.randn(16, 3, 16, 16, generator=generator).to(device)
    labels = torch.randint(0, 10, (16,), generator=generator).to(device)
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.GELU(),
                        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.GELU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).to(device)
    yield Problem("cnn_batchnorm_gelu", cnn, lambda m: F.cross_entropy(m(images), labels))
    # ReLU's kinks: the double backward takes its second derivative as 0, while a gradient
    # difference sees every unit the step flips across 0 (see README).
    torch.manual_seed(0)
    resnet = CifarResNet(depth=8).to(device)
    yield Problem("resnet8_batchnorm_relu", resnet,
                  lambda m: F.cross_entropy(m(images), labels))

    yield gpt_problem(device, generator, layers=2 if quick else 4)


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


def fd_product(problem: Problem, fd: FiniteDifference, seed: int = SEED,
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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a 2-layer GPT, fewer steps")
    size.add_argument("--smoke", action="store_true",
                      help="the MLP and a 1-layer GPT, one step size each, bf16 only: "
                           "checks that the command runs")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    quick = args.quick or args.smoke
    eps_values = EPS_REL[2:3] if args.smoke else EPS_REL[1:4] if quick else EPS_REL
    low_precision_eps = EPS_REL_LOW_PRECISION[2:3] if args.smoke else EPS_REL_LOW_PRECISION
    header = f"{'model':26} {'precision':14} {'scheme':10}"
    print(header + " ".join(f"{e:>9.0e}" for e in eps_values) + "  hutchinson_noise")
    fp32 = [next(problems(device)), gpt_problem(device, torch.Generator().manual_seed(0),
                                                layers=1)] if args.smoke \
        else list(problems(device, quick))
    gpt = fp32[-1]
    for problem in fp32:
        _print_errors(problem, problem, "fp32", eps_values)
    print(header + " ".join(f"{e:>9.0e}" for e in low_precision_eps))
    for dtype, label in ((torch.bfloat16, "autocast_bf16"), (torch.float16, "autocast_fp16")):
        if dtype == torch.float16 and device.type == "cpu" and quick:
            continue
        _print_errors(gpt, gpt, label, low_precision_eps,
                      lambda dtype=dtype: torch.autocast(device.type, dtype=dtype))
    # bf16 weights against the exact product of the same (rounded) weights in fp32.
    reference = Problem(gpt.name, copy.deepcopy(gpt.model.to(torch.bfloat16)).float(),
                        gpt.loss)
    _print_errors(gpt, reference, "bf16_weights", low_precision_eps)


def _print_errors(problem: Problem, reference: Problem, label: str, eps_values,
                  context=contextlib.nullcontext) -> None:
    exact = exact_product(reference)
    noise = sampling_noise(reference)
    for scheme in finite_difference.SCHEMES:
        errors = [relative_error(fd_product(problem, FiniteDifference(scheme, eps),
                                            forward_context=context), exact)
                  for eps in eps_values]
        print(f"{problem.name:26} {label:14} {scheme:10}"
              + " ".join(f"{e:9.1e}" for e in errors) + f"  {noise:9.1e}")


if __name__ == "__main__":
    main()
