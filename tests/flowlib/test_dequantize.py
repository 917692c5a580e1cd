"""Dequantizers: exact log q (autograd Jacobian), support inside the quantizer cell, and a bound that is a
true lower bound: the bound's probabilities over ALL configurations of a tiny y sum to at most 1."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from flowlib.dequantize import (BinaryDequantizer, UniformDequantizer, VariationalDequantizer,
                                build_dequantizer, quantize, standard_normal_log_prob)


def _perturb(module: torch.nn.Module, scale: float = 0.4, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


class _GaussianDensity:
    """A diagonal Gaussian p(v) on R^D whose quantized probabilities are known in closed form."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        self.dist = torch.distributions.Normal(mean, std)

    def log_prob(self, v: torch.Tensor) -> torch.Tensor:
        return self.dist.log_prob(v).flatten(1).sum(1)

    def cell_log_prob(self, y: torch.Tensor, levels: int) -> torch.Tensor:
        """log P(y) = log prod_i P(v_i in cell(y_i)); the outer cells are half-infinite when ``levels == 2``
        and binary-dequantized, but the uniform/variational cells are [y/L, (y+1)/L)."""
        lo, hi = self.dist.cdf(y / levels), self.dist.cdf((y + 1) / levels)
        return torch.log(hi - lo).flatten(1).sum(1)

    def halfspace_log_prob(self, y: torch.Tensor) -> torch.Tensor:
        below = self.dist.cdf(torch.full_like(y, 0.5))
        return torch.log(torch.where(y > 0.5, 1 - below, below)).flatten(1).sum(1)


def _all_configs(shape, levels):
    d = math.prod(shape)
    return torch.tensor(list(itertools.product(range(levels), repeat=d)), dtype=torch.float64).view(-1, *shape)


def _bound_and_iw(deq, density, y, x, n):
    """Per configuration: MC bound E_q[log p - log q] and the importance-weighted log P estimate."""
    bounds, iws = [], []
    for i in range(y.shape[0]):
        yy = y[i:i + 1].expand(n, *y.shape[1:])
        xx = None if x is None else x[i:i + 1].expand(n, *x.shape[1:])
        with torch.no_grad():
            v, log_q = deq.dequantize(yy, xx)
            w = density.log_prob(v) - log_q
            assert torch.equal(quantize(v, deq.levels), yy), "a dequantized sample left the cell of y"
        bounds.append(w.mean())
        iws.append(torch.logsumexp(w, 0) - math.log(n))
    return torch.stack(bounds), torch.stack(iws)


def test_binary_bound_sums_to_at_most_one_over_all_configurations():
    torch.manual_seed(0)
    shape = (1, 2, 2)  # D = 4, 16 configurations
    deq = BinaryDequantizer(shape, x_shape=(2, 1, 1), steps=2, hidden=8).double()
    _perturb(deq, scale=0.1)
    density = _GaussianDensity(torch.tensor([0.2, 0.7, 0.5, 0.9], dtype=torch.float64).view(1, *shape),
                               torch.tensor([0.5, 0.3, 1.0, 0.4], dtype=torch.float64).view(1, *shape))
    y = _all_configs(shape, 2)
    x = torch.rand(1, 2, 1, 1, dtype=torch.float64).expand(y.shape[0], 2, 1, 1)
    bound, iw = _bound_and_iw(deq, density, y, x, n=4000)
    exact = density.halfspace_log_prob(y)
    assert torch.allclose(exact.exp().sum(), torch.tensor(1.0, dtype=torch.float64))
    assert bound.exp().sum() <= 1.0 + 1e-3
    assert (bound <= exact + 0.02).all(), (bound - exact)
    assert (iw >= bound).all()


@pytest.mark.parametrize("kind", ["uniform", "variational"])
def test_cell_bound_sums_to_at_most_one_with_few_levels(kind):
    torch.manual_seed(1)
    shape, levels = (1, 1, 2), 4  # 16 configurations
    deq = build_dequantizer(kind, shape, x_shape=(1, 1, 2), levels=levels, steps=1, hidden=8).double()
    _perturb(deq, scale=0.1, seed=1)
    density = _GaussianDensity(torch.tensor([0.4, 0.6], dtype=torch.float64).view(1, *shape),
                               torch.tensor([0.3, 0.2], dtype=torch.float64).view(1, *shape))
    y = _all_configs(shape, levels)
    x = torch.rand(y.shape[0], 1, 1, 2, dtype=torch.float64)
    bound, iw = _bound_and_iw(deq, density, y, x, n=3000)
    exact = density.cell_log_prob(y, levels)
    assert exact.exp().sum() < 1.0  # the Gaussian leaks outside [0, 1)^D
    assert bound.exp().sum() <= exact.exp().sum() + 1e-3
    assert (bound <= exact + 0.02).all(), (bound - exact)
    assert (iw >= bound).all()
    if kind == "uniform":
        # q/p is bounded on the cell, so the importance-weighted estimate of log P(y) converges quickly;
        # the flow-based q vanish at the cell edges, where p/q has infinite variance (see the test below)
        assert torch.allclose(iw, exact, atol=0.05), (iw - exact)


@pytest.mark.parametrize("kind", ["binary", "variational"])
def test_q_integrates_to_one_over_the_cell(kind):
    """E_r[q(v|y,x) / r(v)] = 1 for a proposal r covering the cell: catches any missing Jacobian term."""
    torch.manual_seed(5)
    shape, n = (1, 2, 2), 20000
    levels = 2 if kind == "binary" else 4
    deq = build_dequantizer(kind, shape, x_shape=(2, 2, 2), levels=levels, steps=2, hidden=8).double()
    _perturb(deq, scale=0.1, seed=5)
    y = torch.randint(0, levels, (1, *shape)).double().expand(n, *shape)
    x = torch.rand(1, 2, 2, 2, dtype=torch.float64).expand(n, 2, 2, 2)
    with torch.no_grad():
        if kind == "binary":  # half-normal with std 1.2 along the half-space of y
            w = 1.2 * torch.randn(n, *shape, dtype=torch.float64).abs()
            v = 0.5 + (2 * y - 1) * w
            log_r = torch.distributions.HalfNormal(1.2).log_prob(w).flatten(1).sum(1)
        else:  # uniform on the cell [y/L, (y+1)/L)
            v = (y + torch.rand(n, *shape, dtype=torch.float64)) / levels
            log_r = torch.full((n,), 4 * math.log(levels), dtype=torch.float64)
        ratio = torch.exp(deq.log_q(v, y, x) - log_r)
    mean, sem = ratio.mean(), ratio.std() / math.sqrt(n)
    assert abs(mean - 1.0) < max(4 * sem, 0.01), (mean, sem)
    assert sem < 0.05, (mean, sem)


@pytest.mark.parametrize("kind", ["uniform", "binary", "variational"])
def test_log_q_at_a_point_matches_the_sampled_log_q(kind):
    torch.manual_seed(6)
    levels = 2 if kind != "variational" else 256
    deq = build_dequantizer(kind, (3, 2, 4), x_shape=(1, 4, 4), levels=levels, hidden=8).double()
    _perturb(deq, scale=0.1, seed=6)
    y = torch.randint(0, levels, (5, 3, 2, 4)).double()
    x = torch.rand(5, 1, 4, 4, dtype=torch.float64)
    v, log_q = deq.dequantize(y, x)
    assert torch.allclose(deq.log_q(v, y, x), log_q, atol=1e-6)


def test_uniform_log_q_counts_the_rescaling():
    y = torch.randint(0, 256, (3, 3, 4, 4)).double()
    v, log_q = UniformDequantizer(256).dequantize(y)
    assert log_q.shape == (3,)
    assert torch.allclose(log_q, torch.full((3,), 48 * math.log(256.0), dtype=torch.float64))
    assert ((v >= 0) & (v < 1)).all() and torch.equal(quantize(v, 256), y)


@pytest.mark.parametrize("make", [
    lambda: BinaryDequantizer((2, 2, 3), x_shape=(3, 1, 2), steps=2, hidden=6),
    lambda: VariationalDequantizer((2, 2, 3), x_shape=(3, 1, 2), levels=5, steps=2, hidden=6),
    lambda: VariationalDequantizer((2, 2, 3), x_shape=None, levels=256, steps=1, hidden=6),
])
def test_log_q_matches_autograd_jacobian(make):
    torch.manual_seed(2)
    deq = make().double()
    _perturb(deq, scale=0.2, seed=3)
    levels = deq.levels
    b, shape = 2, (2, 2, 3)
    y = torch.randint(0, levels, (b, *shape)).double()
    x = torch.rand(b, 3, 1, 2, dtype=torch.float64) if deq.features is not None else None
    e = torch.randn(b, *shape, dtype=torch.float64)
    v, log_q = deq.dequantize_from_noise(y, x, e)
    assert log_q.shape == (b,)
    for i in range(b):
        xi = None if x is None else x[i:i + 1]
        jac = torch.autograd.functional.jacobian(
            lambda ee: deq.dequantize_from_noise(y[i:i + 1], xi, ee.view(1, *shape))[0].flatten(), e[i].flatten())
        expected = standard_normal_log_prob(e[i:i + 1]) - torch.linalg.slogdet(jac)[1]
        assert torch.allclose(log_q[i:i + 1], expected, atol=1e-8), (log_q[i], expected)


def test_binary_samples_lie_in_their_half_space_and_reach_far():
    torch.manual_seed(4)
    deq = BinaryDequantizer((1, 4, 4), x_shape=(3, 2, 2), hidden=8)
    y = torch.randint(0, 2, (64, 1, 4, 4)).float()
    v, _ = deq.dequantize(y, torch.rand(64, 3, 2, 2))
    assert torch.equal((v > 0.5).float(), y)
    assert (v - 0.5).abs().max() > 1.0  # half-infinite support, not a bounded cell


def test_build_dequantizer_errors_name_the_option():
    with pytest.raises(ValueError, match="dequantization must be one of"):
        build_dequantizer("gaussian", (1, 2, 2))
    with pytest.raises(ValueError, match="levels=2"):
        build_dequantizer("binary", (1, 2, 2), levels=256)
    with pytest.raises(ValueError, match="needs x"):
        BinaryDequantizer((1, 2, 2), x_shape=(1, 2, 2)).dequantize(torch.zeros(1, 1, 2, 2))


def test_checkerboard_masks_built_under_inference_mode_still_train():
    """The coupling's mask is built once per size; one built during evaluation (inference mode) must not be an
    inference tensor, which a later training step could not save for its backward."""
    torch.manual_seed(0)
    deq = BinaryDequantizer((1, 4, 4), (3, 4, 4), steps=1, hidden=4)
    _perturb(deq, 0.1)
    y, x = (torch.rand(2, 1, 4, 4) > 0.5).float(), torch.rand(2, 3, 4, 4)
    with torch.inference_mode():
        deq.dequantize(y, x)
    couplings = [m for m in deq.modules() if hasattr(m, "_masks")]
    assert couplings and all(len(m._masks) == 1 for m in couplings), "masks should be cached per size"
    v, log_q = deq.dequantize(y, x)
    log_q.sum().backward()
    assert all(p.grad is not None for p in deq.parameters())
    masks = [next(iter(m._masks.values())) for m in couplings]
    assert masks[0].sum() + masks[1].sum() == 16, "the two parities cover every pixel once"
