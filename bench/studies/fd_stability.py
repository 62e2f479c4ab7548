"""Does the finite-difference estimator train where the double backward does?

    python -m bench.studies.fd_stability [--models gpt,gpt-sdpa,cnn,resnet8,vit,vit-b64]
                                         [--variants autograd,fd,fd-raw,...] [--seeds 8]
                                         [--steps 30] [--optimizers sassha,msassha] [--smoke]

Each run: one model and one fixed batch drawn from the seed, SASSHA and M-SASSHA at the
train suite's hyper-parameters (lr 0.15, weight decay 5e-4, SASSHA rho 0.05, M-SASSHA
hessian power 0.5, lazy Hessian 10; bench/methods.py), ``step(closure)`` for
``--steps`` steps. Per model, optimizer and estimator variant it prints how many seeds
trained (every loss finite, no skipped step, the last loss below the first), the range of
the last losses, the skipped steps, and against the double backward on the same seeds
(those where it trained; SDPA models: the same weights with hand-written attention) the
ratio of the mean last losses and the largest per-seed ratio.

Variants: ``autograd`` (the double backward), ``autograd-seed1`` (the same with another
Rademacher draw: the spread of the method itself), ``fd`` (finite difference as shipped:
the resolution floor on), ``fd-raw`` (the raw difference, floor off), the alternatives to
the floor, each on the raw difference: ``fd-raw-eps3e-3`` (a 10x larger step),
``fd-raw-central`` (central scheme, its default step), ``fd-raw-cfloor`` (the optimizer's
``curvature_floor=0.01``, bench/studies/floor_choice.py's value), and the floor's factor
(``fd-floor1``, ``fd-floor16``, ``fd-floor64``; not run by default).
"""
import argparse
import math
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from sassha_fast import MSASSHA, SASSHA

from ..methods import PAPER_SETTINGS, SASSHA_TRAIN, set_floor
from ..workloads.models import GPT, CifarResNet, GPTConfig, ViT, ViTConfig, bn_cnn

LAZY_HESSIAN = 10
OPTIMIZERS = {"sassha": SASSHA, "msassha": MSASSHA}
FD = "finite_difference"
# Variant -> (constructor options, the resolution floor's factor; None: as shipped).
VARIANTS: Dict[str, Tuple[dict, Optional[float]]] = {
    "autograd": ({}, None),
    "autograd-seed1": ({"seed": 1}, None),  # another Rademacher draw: the method's own spread
    "fd": ({"hessian_estimator": FD}, None),
    "fd-raw": ({"hessian_estimator": FD}, 0.0),
    "fd-raw-eps3e-3": ({"hessian_estimator": FD, "fd_eps": 3e-3}, 0.0),
    "fd-raw-central": ({"hessian_estimator": FD, "fd_scheme": "central"}, 0.0),
    "fd-raw-cfloor": ({"hessian_estimator": FD, "curvature_floor": 0.01}, 0.0),
    "fd-floor1": ({"hessian_estimator": FD}, 1.0),
    "fd-floor16": ({"hessian_estimator": FD}, 16.0),
    "fd-floor64": ({"hessian_estimator": FD}, 64.0),
}
DEFAULT_VARIANTS = ("autograd", "autograd-seed1", "fd", "fd-raw", "fd-raw-eps3e-3",
                    "fd-raw-central", "fd-raw-cfloor")


class Case(NamedTuple):
    """A model (built from the seed, ``attention`` "manual" or "sdpa"), its batch and loss."""
    name: str
    build: Callable[[int, str], nn.Module]
    batch: Callable[[torch.Generator], Tuple[Tensor, Tensor]]
    loss: Callable[[Tensor, Tensor], Tensor]
    attention: str  # what the finite-difference runs use; autograd runs "manual"


QUICK_GPT = dict(layers=4, width=128, heads=4, vocab=2048, context=64)  # train suite --quick
SMOKE_GPT = dict(layers=1, width=32, heads=2, vocab=64, context=16)


def _gpt_case(name: str, attention: str, size: dict, batch: int) -> Case:
    def build(seed, attn):
        torch.manual_seed(seed)
        return GPT(GPTConfig(**size, attention=attn))

    def data(generator):
        tokens = torch.randint(0, size["vocab"], (batch, size["context"] + 1),
                               generator=generator)
        return tokens[:, :-1], tokens[:, 1:]

    def loss(logits, targets):
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    return Case(name, build, data, loss, attention)


def _image_data(batch: int, size: int):
    def data(generator):
        return (torch.randn(batch, 3, size, size, generator=generator),
                torch.randint(0, 10, (batch,), generator=generator))
    return data


def _cnn_case(name: str, make: Callable[[], nn.Module], batch: int, size: int) -> Case:
    def build(seed, _attention):
        torch.manual_seed(seed)
        return make()
    return Case(name, build, _image_data(batch, size), F.cross_entropy, "manual")


def _vit_case(name: str, config: ViTConfig, batch: int) -> Case:
    def build(seed, attention):
        torch.manual_seed(seed)
        return ViT(config._replace(attention=attention))
    return Case(name, build, _image_data(batch, config.image), F.cross_entropy, "sdpa")


def cases(smoke: bool = False) -> Dict[str, Case]:
    """Images: random ones with random labels, 128 (the ViT: 256) so that 30 steps do not
    memorize them and the last losses stay comparable; ``vit-b64`` (a wider ViT) memorizes
    its 64 (the case that chose the resolution floor's factor: trained or not, not the
    ratio)."""
    gpt, gpt_batch = (SMOKE_GPT, 2) if smoke else (QUICK_GPT, 4)
    small_vit = ViTConfig(layers=1, width=32, heads=2)
    images = 16 if smoke else 128
    return {"gpt": _gpt_case("gpt", "manual", gpt, gpt_batch),
            "gpt-sdpa": _gpt_case("gpt-sdpa", "sdpa", gpt, gpt_batch),
            "cnn": _cnn_case("cnn", bn_cnn, images, 16),
            "resnet8": _cnn_case("resnet8", lambda: CifarResNet(depth=8), images, 16),
            "vit": _vit_case("vit", small_vit, 16 if smoke else 256),
            "vit-b64": _vit_case("vit-b64", small_vit if smoke else ViTConfig(),
                                 16 if smoke else 64)}


class Run(NamedTuple):
    losses: List[float]
    skipped: int

    @property
    def trained(self) -> bool:
        return (not self.skipped and all(math.isfinite(l) for l in self.losses)
                and self.losses[-1] < self.losses[0])


def run(case: Case, optimizer: str, variant: str, seed: int, steps: int,
        backend: str = "auto") -> Run:
    options, floor = VARIANTS[variant]
    # The double backward needs hand-written attention: the same weights, the same function.
    attention = case.attention if options.get("hessian_estimator") == FD else "manual"
    model = case.build(seed, attention)
    x, y = case.batch(torch.Generator().manual_seed(seed))
    cls = OPTIMIZERS[optimizer]
    opt = cls(model.parameters(), lazy_hessian=LAZY_HESSIAN, backend=backend, **SASSHA_TRAIN,
              **PAPER_SETTINGS[cls.__name__], **options)
    if floor is not None:
        set_floor(opt, floor)
    losses = [opt.step(lambda: case.loss(model(x), y)).item() for _ in range(steps)]
    # The loss after the last step, from the weights it left.
    with torch.no_grad():
        losses.append(case.loss(model(x), y).item())
    return Run(losses, opt.skipped_steps)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="gpt,gpt-sdpa,cnn,resnet8,vit,vit-b64")
    parser.add_argument("--optimizers", default="sassha,msassha")
    parser.add_argument("--variants", help="default: " + ",".join(DEFAULT_VARIANTS)
                        + " (--smoke: autograd,fd,fd-raw)")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny models, 2 seeds, 4 steps: that the command runs")
    args = parser.parse_args(argv)
    if args.smoke:
        args.seeds, args.steps = 2, 4
    available = cases(args.smoke)
    variants = (args.variants.split(",") if args.variants else
                ["autograd", "fd", "fd-raw"] if args.smoke else list(DEFAULT_VARIANTS))
    for name in args.models.split(","):
        if name not in available:
            raise SystemExit(f"unknown model {name!r} (choose from {', '.join(available)})")
    for name in variants:
        if name not in VARIANTS:
            raise SystemExit(f"unknown variant {name!r} (choose from {', '.join(VARIANTS)})")
    print(f"{'model':9} {'optimizer':8} {'variant':15} {'trained':>7} "
          f"{'last loss (min-max)':>21} {'skipped':>7} {'mean/autograd':>14} "
          f"{'worst/autograd':>14}")
    for name in args.models.split(","):
        for optimizer in args.optimizers.split(","):
            runs = {variant: [run(available[name], optimizer, variant, seed, args.steps)
                              for seed in range(args.seeds)] for variant in variants}
            for variant in variants:
                print(f"{name:9} {optimizer:8} {variant:15} " + summary(runs[variant],
                                                                       runs.get("autograd")),
                      flush=True)


def compare(runs: List[Run], reference: List[Run]) -> Tuple[float, float]:
    """(mean last loss / the double backward's, the largest per-seed ratio), over the seeds
    where the double backward trained."""
    pairs = [(r.losses[-1], a.losses[-1]) for r, a in zip(runs, reference) if a.trained]
    if not pairs:
        return math.nan, math.nan
    return (sum(r for r, _ in pairs) / sum(a for _, a in pairs),
            max(r / a for r, a in pairs))


def summary(runs: List[Run], reference: Optional[List[Run]]) -> str:
    last = [r.losses[-1] for r in runs]
    ratios = "" if reference is None else "{:14.3g} {:14.3g}".format(*compare(runs, reference))
    return (f"{sum(r.trained for r in runs):>3} of {len(runs)} "
            f"{min(last):>10.3g}-{max(last):<10.3g} {sum(r.skipped for r in runs):>7} "
            f"{ratios}")

if __name__ == "__main__":
    main()
