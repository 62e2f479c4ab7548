"""The Rademacher vectors z of Hutchinson's estimate: the double backward draws the authors'
(``authors_signs``: the golden trajectories pin them), the finite difference packed ones
(``PackedSigns``). Both: exactly +-1 in the parameter's dtype, balanced, uncorrelated
between neighbouring entries and between draws (checked statistically, with negative
controls that a broken generator fails), seeded, restored from a checkpoint; CUDA graphs
replay the eager stream."""
import math
from typing import List

import pytest
import torch

from backend_params import backend_device_params
from sassha_fast import MSASSHA, SASSHA
from sassha_fast.hessian.hutchinson import PackedSigns, RademacherSource, authors_signs
from tiny import LOSS, PAPER_SETTINGS, make_model, whole_batch

FD = "finite_difference"
N = 1 << 20  # signs per draw
# Six standard errors of a mean of N independent signs (1 / sqrt(N)): a sound generator
# passes all ~200 statistics below by a wide margin, a defect of 1% in any fails.
TOLERANCE = 6 / math.sqrt(N)
WORD = 64  # signs per generator word in PackedSigns
LAGS = range(1, 2 * WORD + 1)  # within a byte, across bytes, across words
RECIPES = {"authors": lambda: authors_signs, "packed": PackedSigns}


def defects(first: torch.Tensor, second: torch.Tensor) -> List[str]:
    """What is wrong with two consecutive draws of N signs (nothing: an empty list)."""
    found = []
    if not torch.equal(first.abs(), torch.ones_like(first)):
        found.append("not +-1")
    z, later = first.double(), second.double()
    if abs(z.mean().item()) > TOLERANCE:
        found.append("mean")
    found += [f"lag {lag}" for lag in LAGS
              if abs((z[lag:] * z[:-lag]).mean().item()) > TOLERANCE]
    # A bit of the word biased or stuck (each position has N / WORD samples).
    by_position = z.view(-1, WORD).mean(0).abs()
    found += [f"position {int(i)}" for i in
              torch.nonzero(by_position > 6 / math.sqrt(N / WORD)).flatten()]
    if abs((z * later).mean().item()) > TOLERANCE:
        found.append("consecutive draws")
    return found


def two_draws(recipe, seed=0):
    source = RademacherSource(seed, recipe)
    return [source.draw([torch.zeros(N)])[0] for _ in range(2)]


@pytest.mark.parametrize("recipe", RECIPES)
def test_the_signs_are_balanced_and_uncorrelated(recipe):
    assert defects(*two_draws(RECIPES[recipe]())) == []


def _copy_halves(z, block):
    """Each block of ``block`` signs repeats its first half."""
    z.view(-1, block)[:, block // 2:] = z.view(-1, block)[:, :block // 2]
    return z


def _stuck_sign_bit(z):
    # PackedSigns with random_() alone: words below 2**63, the last sign of each always -1.
    z.view(-1, WORD)[:, -1] = -1.0
    return z


# Each defect made from a sound packed draw (first, second), and what the check must find.
BROKEN = {
    "all ones": (lambda first, second: (torch.ones(N), second), "mean"),
    "a sign per 8 entries": (lambda first, second: (first[::8].repeat_interleave(8), second),
                             "lag 1"),
    "a stuck sign bit": (lambda first, second: (_stuck_sign_bit(first), second),
                         f"position {WORD - 1}"),
    "a byte reused": (lambda first, second: (_copy_halves(first, 16), second), "lag 8"),
    "a word reused": (lambda first, second: (_copy_halves(first, 2 * WORD), second),
                      f"lag {WORD}"),
    "a generator that does not advance": (lambda first, second: (first, first.clone()),
                                          "consecutive draws"),
    "zeros among the signs": (lambda first, second: (first.where(first > 0, 0.0), second),
                              "not +-1"),
}


@pytest.mark.parametrize("broken", BROKEN)
def test_the_check_finds_a_broken_generator(broken):
    """Negative controls: a check that passed them would pass a broken generator."""
    breaking, expected = BROKEN[broken]
    assert expected in defects(*breaking(*two_draws(PackedSigns())))


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16,
                                   torch.float16])
def test_draws_are_exactly_plus_minus_one_in_the_parameter_s_dtype(recipe, dtype):
    source = RademacherSource(0, RECIPES[recipe]())
    shapes = [(), (0,), (1,), (3, 5), (63,), (64,), (65,), (2, 0, 3), (7, 11, 13)]
    zs = source.draw([torch.zeros(shape, dtype=dtype) for shape in shapes])
    for z, shape in zip(zs, shapes):
        assert z.shape == shape and z.dtype == dtype
        assert torch.equal(z.abs(), torch.ones(shape, dtype=dtype))
    assert zs[-1].max() == 1 and zs[-1].min() == -1


def packed_by_hand(generator: torch.Generator, numel: int) -> torch.Tensor:
    """The packed stream's definition: sign 8 b + j is bit j of byte b of the 64-bit words,
    little-endian, drawn over their full range."""
    words = torch.empty(-(-numel // WORD), dtype=torch.int64)
    words.random_(torch.iinfo(torch.int64).min, None, generator=generator)
    bits = (words.view(torch.uint8).unsqueeze(-1) >> torch.arange(8, dtype=torch.uint8)) & 1
    return bits.flatten()[:numel].float() * 2 - 1


def test_the_packed_stream_is_its_definition():
    """A parameter takes whole words: the next one starts on a fresh word."""
    generator = torch.Generator().manual_seed(3)
    source = RademacherSource(3, PackedSigns())
    for _ in range(2):
        zs = source.draw([torch.zeros(100), torch.zeros(2, 3)])
        assert torch.equal(zs[0], packed_by_hand(generator, 100))
        assert torch.equal(zs[1].flatten(), packed_by_hand(generator, 6))
    assert torch.equal(source.generator(torch.device("cpu")).get_state(),
                       generator.get_state())


@pytest.mark.parametrize("backend,device", backend_device_params(
    ["reference", "foreach", "cpu", "triton"], device_types=["cpu"]))
def test_each_estimator_draws_from_its_own_stream(backend, device):
    """The double backward: the authors' recipe (the golden trajectories pin its numbers);
    the finite difference: the packed one. Whatever the backend: the draw is the
    estimator's."""
    params = list(make_model().parameters())
    autograd = SASSHA(params, backend=backend)._rademacher.draw(params)
    fd = MSASSHA(params, backend=backend, hessian_estimator=FD)._rademacher.draw(params)
    authors, packed = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    for p, a, f in zip(params, autograd, fd):
        assert torch.equal(a, torch.randint(0, 2, p.shape, generator=authors) * 2.0 - 1.0)
        assert torch.equal(f.flatten(), packed_by_hand(packed, p.numel()))


def trained(estimator, seed=0):
    model = make_model()
    x, y = whole_batch()
    opt = MSASSHA(model.parameters(), lazy_hessian=1, seed=seed, hessian_estimator=estimator,
                  **PAPER_SETTINGS[MSASSHA])
    opt.step(lambda: LOSS(model(x), y))
    return model, opt


@pytest.mark.parametrize("saved_by", ["autograd", FD])
@pytest.mark.parametrize("loaded_by", ["autograd", FD])
def test_a_checkpoint_restores_the_stream_whichever_estimator_saved_it(saved_by, loaded_by):
    """Both save generator states (the format of checkpoints from before the packed
    draws): a run resumed from one draws what the uninterrupted run draws next."""
    _, saving = trained(saved_by)
    checkpoint = saving.state_dict()
    model, loading = trained(loaded_by, seed=1)
    loading.load_state_dict(checkpoint)
    params = list(model.parameters())
    resumed = loading._rademacher.draw(params)
    uninterrupted = loading._estimator.probe_source(0)  # the loading estimator's recipe
    uninterrupted.load_state_dict(checkpoint["sassha_fast"]["rademacher"])
    for r, u in zip(resumed, uninterrupted.draw(params)):
        assert torch.equal(r, u)
    other_seed = trained(loaded_by, seed=1)[1]._rademacher.draw(params)
    assert not all(torch.equal(r, o) for r, o in zip(resumed, other_seed))


def test_a_source_s_state_round_trips():
    source = RademacherSource(0, PackedSigns())
    source.draw([torch.zeros(10)])
    state = source.state_dict()
    first = source.draw([torch.zeros(200)])[0]
    source.load_state_dict(state)
    assert torch.equal(source.draw([torch.zeros(200)])[0], first)
    assert not torch.equal(source.draw([torch.zeros(200)])[0], first)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (CUDA graphs)")
@pytest.mark.parametrize("recipe", RECIPES)
def test_a_cuda_graph_replays_the_eager_stream(recipe):
    """The generators the source lists, registered with the graph, make each replay draw
    what the next eager draw would."""
    params = [torch.zeros(1000, device="cuda"), torch.zeros(3, 70, device="cuda")]
    eager, graphed = (RademacherSource(0, RECIPES[recipe]()) for _ in range(2))
    eager.draw(params)
    graphed.draw(params)  # creates the generator (and the table) before the capture
    graph = torch.cuda.CUDAGraph()
    for generator in graphed.generators():
        graph.register_generator_state(generator)
    with torch.cuda.graph(graph):
        zs = graphed.draw(params)
    for _ in range(2):
        graph.replay()
        for z, want in zip(zs, eager.draw(params)):
            assert torch.equal(z, want)
