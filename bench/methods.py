"""The method catalog: which optimizers the suites and studies run, with which
hyper-parameters (defined here once), how each kind of method runs one training iteration,
and where it is evaluated.

SASSHA has two settings on purpose: ``SASSHA_TRAIN`` for whatever trains a model (the train
suite, the finite-difference studies) and ``SASSHA_STEP`` for the step suite, which times
one non-Hessian step's arithmetic beside AdamW's; see their comments."""
import contextlib
import warnings
from typing import Callable, ContextManager, List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from sassha_fast import MSASSHA, SASSHA, frozen_batchnorm_stats

from .baselines import authors
from .baselines.adahessian import AdaHessian
from .baselines.sam import SAM
from .baselines.sophia import SophiaH
from .harness.results import AUTHORS

BETAS = (0.9, 0.999)  # torch's AdamW default, and SASSHA's
HESSIAN_POWER = 0.5   # SASSHA's square root, passed to M-SASSHA too (its default is 1)
# The settings the benchmarks measure where the authors' constructor defaults (kept by the
# package) differ: their SASSHA default rho=0 turns the perturbation off, so the paper's
# rho; M-SASSHA with hessian_power=0.5, the setting the recorded rows were measured with.
PAPER_SETTINGS = {"SASSHA": dict(rho=0.05), "MSASSHA": dict(hessian_power=HESSIAN_POWER)}
# M-SASSHA's default rho, stated where a suite states every setting (quality, lm).
MSASSHA_RHO = 0.3
SAM_RHO = 0.05
ADAMW = dict(lr=1e-3, betas=BETAS, weight_decay=1e-2)
SGD = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)  # the step suite's SAM-SGD base

# Training a model (the train suite; bench.studies.fd_stability, fd_cost and hvp_accuracy's
# one step): the package's default learning rate (the authors') and weight decay 5e-4, a
# setting that trains through Hessian steps, which the committed results were measured with.
SASSHA_TRAIN = dict(lr=0.15, weight_decay=5e-4)
# A Hessian interval no benchmark reaches: every timed SASSHA step is a non-Hessian one.
NEVER = 2 ** 62
# The step suite (the package's and the authors' rows): the authors' defaults but for the
# learning rate and weight decay, which follow AdamW's, the rows these are compared with.
# The values do not change the work timed, and the timed steps, on random tensors, train
# nothing: the step suite has no use for SASSHA_TRAIN's.
SASSHA_STEP = dict(lr=ADAMW["lr"], betas=BETAS, weight_decay=ADAMW["weight_decay"],
                   lazy_hessian=NEVER)

AUTOGRAD = "autograd"
FD = "finite_difference"

# -- the quality and language-model suites: a grid per method ---------------------------------

# "plain": one backward then step(); "sam": two passes around perturb()
# (bench/baselines/sam.py); "closure": step(closure), which runs the optimizer's passes
# itself (SASSHA's and M-SASSHA's, Sophia-H's and AdaHessian's double backward).
KINDS = ("plain", "sam", "closure")

# (parameters, learning rate, **knobs) -> optimizer; a knob left out takes the catalog's
# default (bench.lm_suite trains at learning rates of one's choice that way).
Build = Callable[..., torch.optim.Optimizer]


class Method(NamedTuple):
    name: str
    lrs: Tuple[float, ...]   # the learning rates held-out data chooses from
    build: Build
    kind: str                # one of KINDS
    attention: str = "manual"  # the lm suite's GPTConfig.attention (manual: double backward)
    estimator: str = ""      # the Hessian estimator, "" for first-order methods
    # Hyper-parameters tuned beside the learning rate, each with its grid: every
    # combination with every learning rate is a grid point (bench/harness/protocol.py).
    knobs: Tuple[Tuple[str, Tuple[float, ...]], ...] = ()


SMALL_LRS = (1e-3, 3e-3, 1e-2, 3e-2)  # AdamW's and SAM-AdamW's (half a decade apart)
LARGE_LRS = (0.03, 0.1, 0.3, 1.0)     # SGD's, SAM-SGD's and the quality suite's SASSHAs'
# The SASSHA paper's language-model search space (its appendix): SASSHA's and M-SASSHA's
# learning rates, the rho of SASSHA, M-SASSHA and SAM, and Sophia-H's learning rates and
# clipping threshold (gamma, bench/baselines/sophia.py). Its Sophia-H weight-decay grid
# (1e-1 .. 1e-8) is left out: no method's decay is tuned here (see QUALITY_DECAY).
PAPER_SASSHA_LRS = (0.0015, 0.0075, 0.015, 0.075, 0.15)
RHOS = (2.5e-4, 2.5e-3, 2.5e-2, 2.5e-1)
SOPHIA_LRS = (1e-5, 1e-4, 1e-3, 1e-2)
SOPHIA_GAMMAS = (1e-4, 1e-3, 1e-2, 1e-1)
SOPHIA_INTERVAL = 1   # the paper's Sophia-H runs estimate the Hessian every step
# AdaHessian's (not in the paper's language-model table): half a decade apart around the
# authors' default 0.15.
ADAHESSIAN_LRS = (0.015, 0.05, 0.15, 0.5)
# Decoupled weight decay is passed as decay / lr, as the authors' scripts do, so that every
# method shrinks its weights by the same factor per step at its chosen learning rate.
QUALITY_DECAY = 5e-4
LM_DECAY = 1e-4
QUALITY_RHO = 0.1  # SAM-SGD's and SASSHA's default in the quality suite (rho is tuned)
RHO_KNOB = (("rho", RHOS),)


def _second_order(name: str, cls, lrs: Tuple[float, ...], decay: float, estimator: str,
                  attention: str = "manual", **settings) -> Method:
    def build(params: List[Tensor], lr: float, **knobs) -> torch.optim.Optimizer:
        return cls(params, lr=lr, weight_decay=decay / lr, hessian_estimator=estimator,
                   **dict(settings, **knobs))
    return Method(name, lrs, build, "closure", attention, estimator, RHO_KNOB)


def _sam(name: str, base, lrs: Tuple[float, ...], rho: float, attention: str,
         base_settings: Callable[[float], dict]) -> Method:
    """SAM around ``base``, whose settings at a learning rate are ``base_settings(lr)``."""
    def build(params: List[Tensor], lr: float, rho: float = rho) -> torch.optim.Optimizer:
        return SAM(params, base, rho=rho, lr=lr, **base_settings(lr))
    return Method(name, lrs, build, "sam", attention, "", RHO_KNOB)


def _sophia(decay: float) -> Method:
    def build(params: List[Tensor], lr: float, gamma: float = 0.01) -> torch.optim.Optimizer:
        return SophiaH(params, lr=lr, gamma=gamma, weight_decay=decay / lr,
                       hessian_interval=SOPHIA_INTERVAL)
    return Method("sophia-h", SOPHIA_LRS, build, "closure", "manual", AUTOGRAD,
                  (("gamma", SOPHIA_GAMMAS),))


def _adahessian(decay: float) -> Method:
    def build(params: List[Tensor], lr: float) -> torch.optim.Optimizer:
        return AdaHessian(params, lr=lr, weight_decay=decay / lr)
    return Method("adahessian", ADAHESSIAN_LRS, build, "closure", "manual", AUTOGRAD)


_QUALITY_SASSHA = dict(rho=QUALITY_RHO)
_MSASSHA = dict(rho=MSASSHA_RHO, **PAPER_SETTINGS["MSASSHA"])
QUALITY_METHODS = (
    Method("sgd", LARGE_LRS, lambda p, lr: torch.optim.SGD(
        p, lr=lr, momentum=0.9, weight_decay=QUALITY_DECAY), "plain"),
    Method("adamw", SMALL_LRS, lambda p, lr: torch.optim.AdamW(
        p, lr=lr, weight_decay=QUALITY_DECAY / lr), "plain"),
    _sam("sam-sgd", torch.optim.SGD, LARGE_LRS, QUALITY_RHO, "manual",
         lambda lr: dict(momentum=0.9, weight_decay=QUALITY_DECAY)),
    _second_order("sassha", SASSHA, LARGE_LRS, QUALITY_DECAY, AUTOGRAD, **_QUALITY_SASSHA),
    _second_order("msassha", MSASSHA, LARGE_LRS, QUALITY_DECAY, AUTOGRAD, **_MSASSHA),
    # The finite-difference rows (issue 20): the same settings, hessian_estimator changed.
    _second_order("sassha-fd", SASSHA, LARGE_LRS, QUALITY_DECAY, FD, **_QUALITY_SASSHA),
    _second_order("msassha-fd", MSASSHA, LARGE_LRS, QUALITY_DECAY, FD, **_MSASSHA),
    _sophia(QUALITY_DECAY),
    _adahessian(QUALITY_DECAY),
)

# The double backward needs the GPT with attention written out by hand; the finite
# difference runs on F.scaled_dot_product_attention (no double backward), and so do AdamW
# and SAM: the same function with the same initial weights, the faster attention.
_LM_SASSHA = dict(hessian_power=HESSIAN_POWER, **PAPER_SETTINGS["SASSHA"])
LM_METHODS = (
    Method("adamw", SMALL_LRS, lambda p, lr: torch.optim.AdamW(
        p, lr=lr, weight_decay=LM_DECAY / lr), "plain", "sdpa"),
    _sam("sam-adamw", torch.optim.AdamW, SMALL_LRS, SAM_RHO, "sdpa",
         lambda lr: dict(weight_decay=LM_DECAY / lr)),
    _second_order("sassha", SASSHA, PAPER_SASSHA_LRS, LM_DECAY, AUTOGRAD, "manual",
                  **_LM_SASSHA),
    _second_order("sassha-fd", SASSHA, PAPER_SASSHA_LRS, LM_DECAY, FD, "sdpa", **_LM_SASSHA),
    _second_order("msassha", MSASSHA, PAPER_SASSHA_LRS, LM_DECAY, AUTOGRAD, "manual",
                  **_MSASSHA),
    _second_order("msassha-fd", MSASSHA, PAPER_SASSHA_LRS, LM_DECAY, FD, "sdpa", **_MSASSHA),
    _sophia(LM_DECAY),
    _adahessian(LM_DECAY),
)


def make_iteration(kind: str, opt, loss: Callable[[Tensor, Tensor], Tensor]
                   ) -> Callable[[Tensor, Tensor], None]:
    """One training iteration on a batch (x, y); ``loss(x, y)`` runs the model forward."""
    if kind == "plain":
        def iteration(x, y):
            opt.zero_grad(set_to_none=True)
            loss(x, y).backward()
            opt.step()
    elif kind == "sam":
        def iteration(x, y):
            opt.zero_grad(set_to_none=True)
            loss(x, y).backward()
            opt.perturb(zero_grad=True)
            with frozen_batchnorm_stats():
                loss(x, y).backward()
            opt.step()
    elif kind == "closure":
        def iteration(x, y):
            opt.step(lambda: loss(x, y))
            opt.zero_grad(set_to_none=True)
    else:
        raise ValueError(f"unknown kind of method {kind!r} (choose from {KINDS})")
    return iteration


def clean_point(opt) -> ContextManager:
    """Where to evaluate: M-SASSHA trains at a perturbed point and evaluates at the clean
    one; the other methods' parameters are at the clean point after a step."""
    return opt.evaluation() if isinstance(opt, MSASSHA) else contextlib.nullcontext()


# -- the train suite: named methods on a model and one batch ----------------------------------

TRAIN_METHODS = ("adamw", "sam-adamw", "sassha-authors-loop", "sassha", "msassha")
# SASSHA and M-SASSHA with hessian_estimator="finite_difference": no double backward.
TRAIN_FD_METHODS = ("sassha-fd", "msassha-fd")
# What runs on a GPT with F.scaled_dot_product_attention, which has no double backward.
FIRST_ORDER_TRAIN_METHODS = ("adamw", "sam-adamw") + TRAIN_FD_METHODS
# With --authors-code: the authors' optimizers in their loops.
AUTHORS_TRAIN_METHODS = ("sassha-authors", "msassha-authors")
CREATE_GRAPH_WARNING = r"Using backward\(\) with create_graph=True"


def train_iteration(method: str, model, x, y, loss_fn, lazy_hessian: int,
                    authors_code: Optional[str] = None):
    """(one training iteration on the batch (x, y), a callable naming the implementation
    once it has run). ``authors_code``: the checkout the "-authors" methods load
    (bench/baselines/authors.py)."""
    params = list(model.parameters())

    def loss():
        return loss_fn(model(x), y)

    if method == "adamw":
        opt = torch.optim.AdamW(params, fused=True, **ADAMW)
        return _on_batch("plain", opt, model, x, y, loss_fn), lambda: "torch fused"
    if method == "sam-adamw":
        opt = SAM(params, torch.optim.AdamW, rho=SAM_RHO, **ADAMW)
        return _on_batch("sam", opt, model, x, y, loss_fn), lambda: "per-tensor SAM"
    if method == "sassha-authors-loop":
        opt = SASSHA(params, lazy_hessian=lazy_hessian, backend="reference", **SASSHA_TRAIN,
                     **PAPER_SETTINGS["SASSHA"])
        return _authors_sassha_loop(opt, loss), lambda: "reference"
    if method.endswith("-authors"):
        return _authors_iteration(method, params, loss, lazy_hessian, authors_code)
    if method in ("sassha", "msassha") + TRAIN_FD_METHODS:
        cls = MSASSHA if method.startswith("msassha") else SASSHA
        estimator = FD if method.endswith("-fd") else AUTOGRAD
        opt = cls(params, lazy_hessian=lazy_hessian, hessian_estimator=estimator,
                  **SASSHA_TRAIN, **PAPER_SETTINGS[cls.__name__])

        def iteration():
            return opt.step(loss)
        # A skipped (inf/NaN) step does less work: the summary must not read its time.
        iteration.skipped_steps = lambda: opt.skipped_steps
        return iteration, lambda: ",".join(opt.backends_in_use.values())
    raise ValueError(f"unknown training method {method!r}")


def _on_batch(kind: str, opt, model, x, y, loss_fn) -> Callable[[], None]:
    """A ``make_iteration`` iteration on the train suite's one batch."""
    iteration = make_iteration(kind, opt, lambda inputs, targets: loss_fn(model(inputs),
                                                                          targets))
    return lambda: iteration(x, y)


def _authors_sassha_loop(opt, loss):
    """The authors' SASSHA training loop (theirs or ours in it): create_graph on every
    iteration."""
    def iteration():
        opt.zero_grad(set_to_none=True)
        loss().backward()
        opt.perturb_weights(zero_grad=True)
        with frozen_batchnorm_stats(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=CREATE_GRAPH_WARNING)
            loss().backward(create_graph=True)
        opt.unperturb()
        opt.step()
    return iteration


def _authors_iteration(method: str, params, loss, lazy_hessian: int, authors_code):
    """Their optimizers in their scripts' loops: create_graph on every iteration."""
    if not authors_code:
        raise ValueError(f"training method {method!r} needs the authors' code (--authors-code)")
    code = authors.load(authors_code)
    if method == "sassha-authors":
        opt = code.sassha(params, HESSIAN_POWER, lazy_hessian=lazy_hessian, **SASSHA_TRAIN,
                          **PAPER_SETTINGS["SASSHA"])
        iteration = _authors_sassha_loop(opt, loss)
    elif method == "msassha-authors":
        opt = code.msassha(params, HESSIAN_POWER, lazy_hessian=lazy_hessian, **SASSHA_TRAIN)

        def iteration():
            opt.zero_grad(set_to_none=True)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=CREATE_GRAPH_WARNING)
                loss().backward(create_graph=True)
            opt.step()
    else:
        raise ValueError(f"unknown training method {method!r}")
    return iteration, lambda: AUTHORS


# -- the finite-difference studies --------------------------------------------------------------

def set_floor(opt, factor: float) -> None:
    """The resolution floor's factor of a finite-difference optimizer (0: the raw
    difference, the estimator before issue 20), for comparison."""
    opt._estimator.settings = opt._estimator.settings._replace(floor=factor)
