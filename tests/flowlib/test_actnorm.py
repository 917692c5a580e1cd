"""Conditional actnorm (c-Glow): identity at initialisation, log-scale bounded by ``S tanh(r / S)``, exact inverse
and log-determinant against autograd in float64 for every bound."""
from __future__ import annotations

import pytest
import torch
from torch.autograd.functional import jacobian

from flowlib.actnorm import ConditionalActNorm
from randomize import randomize

C, CC, SIZE = 4, 3, (2, 2)


def _layer(scale_bound=1.0, seed=0):
    torch.manual_seed(seed)
    return ConditionalActNorm(C, CC, SIZE, conv_channels=4, fc_width=6, scale_bound=scale_bound).double()


def _raw(layer, cond):
    """The conditioning network's output ``(r, b)`` before any bound."""
    out = layer.net(cond)
    return out[:, :C], out[:, C:]


def test_starts_as_the_identity():
    layer = _layer()
    u, cond = torch.randn(2, C, *SIZE, dtype=torch.float64), torch.randn(2, CC, *SIZE, dtype=torch.float64)
    v, logdet = layer(u, cond)
    torch.testing.assert_close(v, u, rtol=0, atol=0)
    torch.testing.assert_close(logdet, torch.zeros(2, dtype=torch.float64), rtol=0, atol=0)


@pytest.mark.parametrize("bound", [1.0, 0.5, 3.0])
def test_log_scale_is_bounded_for_huge_conditioning_outputs(bound):
    layer = _layer(bound)
    last = layer.net.net[-1]
    with torch.no_grad():  # the conditioning network's raw log-scales: +-1e4
        last.bias[:C] = torch.tensor([1e4, -1e4, 1e4, -1e4], dtype=torch.float64)
    u, cond = torch.randn(2, C, *SIZE, dtype=torch.float64), torch.randn(2, CC, *SIZE, dtype=torch.float64)
    log_scale, _ = layer._params(cond)
    assert log_scale.abs().max() <= bound
    v, logdet = layer(u, cond)
    assert torch.isfinite(v).all() and torch.isfinite(logdet).all()
    assert logdet.abs().max() <= SIZE[0] * SIZE[1] * C * bound  # |log det| <= H W C S
    ratio = (v / u).flatten(2)[:, :, 0]  # bias 0: v = u e^{s}, s -> +-S
    torch.testing.assert_close(ratio, torch.tensor([1, -1, 1, -1], dtype=torch.float64).mul(bound).exp().expand(2, C))
    u_back, _ = layer.inverse(v, cond)
    torch.testing.assert_close(u_back, u, rtol=1e-9, atol=1e-9)


def test_log_scale_is_s_tanh_r_over_s_and_unbounded_without_a_bound():
    cond = torch.randn(2, CC, *SIZE, dtype=torch.float64)
    for bound in (1.0, 0.5):
        layer = randomize(_layer(bound), 2.0, seed=3)
        r, b = _raw(layer, cond)
        log_scale, bias = layer._params(cond)
        torch.testing.assert_close(log_scale[:, :, 0, 0], bound * torch.tanh(r / bound))
        torch.testing.assert_close(bias[:, :, 0, 0], b)  # the bias is not bounded
    for bound in (None, 0.0):  # models saved before the bound: the raw output itself
        layer = randomize(_layer(bound), 2.0, seed=3)
        assert layer.scale_bound is None
        torch.testing.assert_close(layer._params(cond)[0][:, :, 0, 0], _raw(layer, cond)[0])
    with pytest.raises(ValueError, match="scale_bound"):
        _layer(-1.0)


@pytest.mark.parametrize("bound", [1.0, 0.2, None])
def test_round_trip_and_log_det_against_autograd(bound):
    # With bound 0.2 the raw log-scales reach ~1.5 S: the tanh is in its nonlinear range, so a log-det that
    # ignored it would show.
    layer = randomize(_layer(bound), 0.3, seed=1)
    u, cond = torch.randn(2, C, *SIZE, dtype=torch.float64), torch.randn(2, CC, *SIZE, dtype=torch.float64)
    v, logdet = layer(u, cond)
    assert not torch.allclose(v, u)
    u_back, logdet_inv = layer.inverse(v, cond)
    torch.testing.assert_close(u_back, u, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(logdet_inv, -logdet, rtol=1e-9, atol=1e-9)
    for i in range(2):
        jac = jacobian(lambda ub: layer(ub.reshape(1, C, *SIZE), cond[i:i + 1])[0].reshape(-1), u[i].reshape(-1))
        torch.testing.assert_close(logdet[i], torch.linalg.slogdet(jac)[1], rtol=1e-9, atol=1e-9)
    if bound == 0.2:
        r = _raw(layer, cond)[0]
        assert r.abs().max() > bound and layer._params(cond)[0].abs().max() < bound
