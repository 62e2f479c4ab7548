"""The second-order baselines of the benchmarks (bench/baselines/): Hutchinson's estimate,
Sophia-H and AdaHessian, each checked over a few steps of a quadratic against the paper's
algorithm written out here in plain floats, with the probe vectors fixed so that the
estimate is known. Each check has a negative control: the same hand computation without
one of the algorithm's parts lands outside the tolerance, so the tolerance can tell."""
import itertools
import math

import pytest
import torch

from bench.baselines.adahessian import AdaHessian, spatial_average
from bench.baselines.hutchinson import ProbeSource, gradients
from bench.baselines.sophia import SophiaH

TOL = 1e-9  # float64 throughout: the hand computation and the optimizer agree to round-off
# A hand computation missing a part of the algorithm must miss by far more than TOL.
CONTROL_GAP = 1e-3


class FixedProbes:
    """Probes the test chooses, handed out in order (the optimizers draw one per parameter,
    in group order, on each step that estimates the Hessian)."""

    def __init__(self, vectors):
        self.vectors = iter(vectors)

    def draw(self, like):
        return torch.tensor(next(self.vectors), dtype=like.dtype).reshape(like.shape)


def _matvec(a, u):
    return [sum(a[i][j] * u[j] for j in range(len(u))) for i in range(len(a))]


def _max_gap(left, right):
    return max(abs(a - b) for a, b in zip(left, right))


# -- Hutchinson's estimate ------------------------------------------------------------------

A = [[3.0, 1.0, 0.5], [1.0, -2.0, 0.0], [0.5, 0.0, 1.0]]   # symmetric, indefinite
B = [1.0, -0.5, 2.0]


def _quadratic(x, y):
    """0.5 z^T A z + b^T z with z = (x0, x1, y0): gradient A z + b, Hessian A (the two
    parameters coupled through A's off-diagonal)."""
    z = torch.cat([x, y])
    a = torch.tensor(A, dtype=z.dtype)
    return 0.5 * z @ a @ z + torch.tensor(B, dtype=z.dtype) @ z


def test_hutchinson_estimate_is_u_times_hessian_times_u():
    x = torch.tensor([1.0, -1.0], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0.5], dtype=torch.float64, requires_grad=True)
    u = [1.0, -0.5, 2.0]
    loss, grads, estimates = gradients(lambda: _quadratic(x, y), [x, y],
                                       FixedProbes([u[:2], u[2:]]))
    au = _matvec(A, u)
    assert torch.cat(estimates).tolist() == pytest.approx([u[i] * au[i] for i in range(3)],
                                                          abs=TOL)
    z = [1.0, -1.0, 0.5]
    assert torch.cat(grads).tolist() == pytest.approx(
        [g + b for g, b in zip(_matvec(A, z), B)], abs=TOL)
    assert not any(g.requires_grad for g in grads) and not loss.requires_grad


def test_rademacher_estimate_averages_to_the_diagonal_exactly():
    # Over all 8 sign vectors E[u_i u_j] is exactly 0 for i != j: the mean is diag(A).
    signs = [list(s) for s in itertools.product((-1.0, 1.0), repeat=3)]
    x = torch.tensor([1.0, -1.0], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0.5], dtype=torch.float64, requires_grad=True)
    probes = FixedProbes([part for s in signs for part in (s[:2], s[2:])])
    total = torch.zeros(3, dtype=torch.float64)
    single = []
    for _ in signs:
        estimate = torch.cat(gradients(lambda: _quadratic(x, y), [x, y], probes)[2])
        total += estimate
        single.append(estimate)
    assert (total / len(signs)).tolist() == pytest.approx([3.0, -2.0, 1.0], abs=TOL)
    # negative control: one draw alone carries the off-diagonal terms
    assert (single[0] - torch.tensor([3.0, -2.0, 1.0])).abs().max() > CONTROL_GAP


def test_a_loss_linear_in_a_parameter_gives_it_zero_curvature():
    w = torch.tensor([2.0, 3.0], requires_grad=True)
    v = torch.tensor([1.0], requires_grad=True)
    _, grads, estimates = gradients(lambda: (w * 4.0).sum() + (v ** 2).sum(), [w, v],
                                    FixedProbes([[1.0, -1.0], [1.0]]))
    assert grads[0].tolist() == [4.0, 4.0] and estimates[0].tolist() == [0.0, 0.0]
    assert estimates[1].tolist() == [2.0]


def test_probe_sources_repeat_with_their_seed_and_draw_the_named_law():
    like = torch.zeros(4096)
    signs = ProbeSource("rademacher", 3).draw(like)
    assert set(signs.tolist()) == {-1.0, 1.0}
    assert torch.equal(signs, ProbeSource("rademacher", 3).draw(like))
    normal = ProbeSource("gaussian", 3).draw(like)
    assert abs(normal.mean()) < 0.1 and abs(normal.std() - 1) < 0.1
    assert not torch.equal(normal, ProbeSource("gaussian", 4).draw(like))
    with pytest.raises(ValueError, match="probe must be"):
        ProbeSource("uniform", 0)


# -- Sophia-H ---------------------------------------------------------------------------------

SOPHIA = dict(lr=0.1, weight_decay=0.05, betas=(0.9, 0.8), gamma=1.0, eps=1e-12)
SOPHIA_PROBES = [[1.0, -0.5, 2.0], [-1.5, 1.0, 0.5], [0.5, 2.0, -1.0], [2.0, 1.0, 1.0],
                 [-0.5, -1.0, 1.5]]


def _sophia_by_hand(steps, interval, clip=True, every_step=False):
    """The paper's Algorithm 3 on the quadratic: (final z, which cases the update met)."""
    lr, wd, (b1, b2), gamma, eps = (SOPHIA["lr"], SOPHIA["weight_decay"], SOPHIA["betas"],
                                    SOPHIA["gamma"], SOPHIA["eps"])
    z, m, h, cases = [1.0, -1.0, 0.5], [0.0] * 3, [0.0] * 3, set()
    probes = iter(SOPHIA_PROBES)
    for t in range(1, steps + 1):
        g = [gz + b for gz, b in zip(_matvec(A, z), B)]
        m = [b1 * m[i] + (1 - b1) * g[i] for i in range(3)]
        if every_step or t % interval == 1 % interval:   # t = 1, k+1, 2k+1, ...
            u = next(probes)
            au = _matvec(A, u)
            h = [b2 * h[i] + (1 - b2) * u[i] * au[i] for i in range(3)]
        z = [zi - lr * wd * zi for zi in z]
        for i in range(3):
            ratio = m[i] / max(gamma * h[i], eps)
            cases.add("floor" if gamma * h[i] < eps else
                      "clipped" if abs(ratio) > 1 else "inside")
            z[i] -= lr * (max(-1.0, min(1.0, ratio)) if clip else ratio)
    return z, cases


def _sophia_run(steps, interval):
    x = torch.tensor([1.0, -1.0], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0.5], dtype=torch.float64, requires_grad=True)
    opt = SophiaH([x, y], hessian_interval=interval, **SOPHIA)
    opt.probes = FixedProbes([part for u in SOPHIA_PROBES for part in (u[:2], u[2:])])
    for _ in range(steps):
        opt.step(lambda: _quadratic(x, y))
    return torch.cat([x, y]).tolist()


def test_sophia_h_follows_the_papers_algorithm_for_five_steps():
    mine = _sophia_run(steps=5, interval=2)   # Hessian on steps 1, 3 and 5
    expected, cases = _sophia_by_hand(steps=5, interval=2)
    # the steps met all three cases: a negative estimate floored at eps (coordinate 2's
    # curvature is -2), a ratio clipped to 1, and one inside the clip
    assert cases == {"floor", "clipped", "inside"}
    assert mine == pytest.approx(expected, abs=TOL)
    # negative controls: without the clip, or with a Hessian estimate on every step
    assert _max_gap(mine, _sophia_by_hand(5, 2, clip=False)[0]) > CONTROL_GAP
    assert _max_gap(mine, _sophia_by_hand(5, 2, every_step=True)[0]) > CONTROL_GAP


def test_sophia_h_estimates_the_hessian_only_every_k_steps():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    opt = SophiaH([x], lr=0.01, hessian_interval=3)
    due = []
    for _ in range(7):
        due.append(opt.hessian_due())
        opt.step(lambda: (x ** 2).sum())
    assert due == [True, False, False, True, False, False, True]
    with pytest.raises(ValueError, match="closure"):
        opt.step()


# -- AdaHessian -------------------------------------------------------------------------------

# A convolution-shaped weight (2 output channels, 1 input, 2x2 kernel) and a bias, under a
# separable quadratic 0.5 a p^2 + c p: gradient a p + c and a diagonal Hessian a, so that
# any Rademacher probe z gives z * (a z) = a exactly.
KERNEL_A = [[2.0, 4.0, 1.0, 1.0], [0.5, -3.0, 0.5, 0.0]]   # per output channel, 2x2 flat
KERNEL_C = [[1.0, -1.0, 0.5, 2.0], [-0.5, 1.0, 0.0, 1.0]]
BIAS_A, BIAS_C = [3.0, 0.25], [-1.0, 0.5]
ADAHESSIAN = dict(lr=0.1, betas=(0.9, 0.99), eps=1e-4, weight_decay=0.1)


def _adahessian_by_hand(steps, power, average=True, bias_correction=True):
    """The paper's Algorithm 1 on the quadratic, flat lists: kernel then bias."""
    lr, (b1, b2), eps, wd = (ADAHESSIAN["lr"], ADAHESSIAN["betas"], ADAHESSIAN["eps"],
                             ADAHESSIAN["weight_decay"])
    a = [v for row in KERNEL_A for v in row] + BIAS_A
    c = [v for row in KERNEL_C for v in row] + BIAS_C
    # spatial averaging: each output channel's kernel shares the mean of its 4 estimates
    d = ([sum(row) / 4 for row in KERNEL_A for _ in row] if average else
         [v for row in KERNEL_A for v in row]) + BIAS_A
    p = [0.5 * (i % 3) - 0.5 for i in range(10)]
    m, v = [0.0] * 10, [0.0] * 10
    for t in range(1, steps + 1):
        g = [a[i] * p[i] + c[i] for i in range(10)]
        m = [b1 * m[i] + (1 - b1) * g[i] for i in range(10)]
        v = [b2 * v[i] + (1 - b2) * d[i] ** 2 for i in range(10)]
        c1, c2 = (1 - b1 ** t, 1 - b2 ** t) if bias_correction else (1.0, 1.0)
        p = [p[i] - lr * wd * p[i]
             - lr * (m[i] / c1) / (math.sqrt(v[i] / c2) ** power + eps) for i in range(10)]
    return p


def _adahessian_run(steps, power):
    start = [0.5 * (i % 3) - 0.5 for i in range(10)]
    kernel = torch.tensor(start[:8], dtype=torch.float64).reshape(2, 1, 2, 2).requires_grad_()
    bias = torch.tensor(start[8:], dtype=torch.float64, requires_grad=True)
    a_k = torch.tensor(KERNEL_A, dtype=torch.float64).reshape(2, 1, 2, 2)
    c_k = torch.tensor(KERNEL_C, dtype=torch.float64).reshape(2, 1, 2, 2)
    a_b, c_b = (torch.tensor(v, dtype=torch.float64) for v in (BIAS_A, BIAS_C))

    def loss():
        return ((0.5 * a_k * kernel ** 2 + c_k * kernel).sum()
                + (0.5 * a_b * bias ** 2 + c_b * bias).sum())
    opt = AdaHessian([kernel, bias], hessian_power=power, **ADAHESSIAN)
    for _ in range(steps):
        opt.step(loss)
    return kernel.flatten().tolist() + bias.tolist()


@pytest.mark.parametrize("power", [1.0, 0.5])
def test_adahessian_follows_the_papers_algorithm_for_four_steps(power):
    # the optimizer's own seeded Rademacher probes: on a diagonal Hessian any sign works
    mine = _adahessian_run(steps=4, power=power)
    assert mine == pytest.approx(_adahessian_by_hand(4, power), abs=TOL)
    # negative controls: without the spatial averaging, or without the bias corrections
    assert _max_gap(mine, _adahessian_by_hand(4, power, average=False)) > CONTROL_GAP
    assert _max_gap(mine, _adahessian_by_hand(4, power, bias_correction=False)) > CONTROL_GAP


def test_spatial_average_covers_kernels_only():
    kernel = torch.arange(16.0).reshape(2, 2, 2, 2)
    averaged = spatial_average(kernel)
    assert averaged[1, 0].tolist() == [[9.5, 9.5], [9.5, 9.5]]
    assert averaged.shape == kernel.shape
    matrix = torch.arange(6.0).reshape(2, 3)   # a Linear weight: one block per entry
    assert torch.equal(spatial_average(matrix), matrix)


def test_adahessian_refuses_settings_outside_the_paper():
    x = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="hessian_power"):
        AdaHessian([x], hessian_power=1.5)
    with pytest.raises(ValueError, match="betas"):
        AdaHessian([x], betas=(0.9, 1.0))
