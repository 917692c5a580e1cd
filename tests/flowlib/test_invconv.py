"""InvConv1x1's cached weight: used only without a graph, invalidated by every parameter change."""
from __future__ import annotations

import pytest
import torch

from flowlib.flows import build_flow
from flowlib.invconv import InvConv1x1
from randomize import randomize


def _layer(lu=True):
    torch.manual_seed(0)
    return randomize(InvConv1x1(4, lu=lu).double(), 0.3, seed=1)


@pytest.mark.parametrize("lu", [True, False])
def test_cached_weight_matches_the_parameters_and_follows_an_optimizer_step(lu):
    layer = _layer(lu)
    u = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    with torch.no_grad():
        v0, ld0 = layer(u)
    assert layer._cache is not None, "no-grad forward should fill the cache"
    fresh_w, fresh_ld = layer._compute_weight()
    torch.testing.assert_close(layer._weight()[0], fresh_w.detach(), rtol=0, atol=0)

    opt = torch.optim.SGD(layer.parameters(), lr=1e-3)
    v, ld = layer(u)  # training direction: the graph is built from the parameters, never from the cache
    (v.square().sum() + ld.sum()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())
    opt.step()

    with torch.no_grad():
        v1, ld1 = layer(u)
        w1, logdet1 = layer._compute_weight()
    assert not torch.allclose(v1, v0), "the optimizer step must reach the cached weight"
    torch.testing.assert_close(v1, torch.nn.functional.conv2d(u, w1.view(4, 4, 1, 1)), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ld1, (9 * logdet1).expand(2), rtol=1e-12, atol=1e-12)
    with torch.no_grad():  # the cached inverse follows too
        torch.testing.assert_close(layer.inverse(v1)[0], u, rtol=1e-10, atol=1e-10)


def test_cache_is_dropped_by_load_state_dict_dtype_changes_and_train():
    layer = _layer()
    u = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    with torch.no_grad():
        before = layer(u)[0]
        other = randomize(InvConv1x1(4).double(), 0.3, seed=7)
        layer.load_state_dict(other.state_dict())
        torch.testing.assert_close(layer(u)[0], other(u)[0], rtol=0, atol=0)
        assert not torch.allclose(layer(u)[0], before)
        layer.float()
        assert layer(u.float())[0].dtype == torch.float32
    layer.eval()
    with torch.no_grad():
        layer(u.float())
    assert layer._cache is not None
    layer.train()
    assert layer._cache is None, "train() must drop the cached weight"


def test_a_cache_filled_under_inference_mode_does_not_leak_into_training():
    layer = _layer()
    u = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    with torch.inference_mode():
        layer(u)
        layer.inverse(u)
    with torch.no_grad():
        layer(u)  # inference-mode cache entries may serve no-grad calls
    v, ld = layer(u.requires_grad_())
    (v.sum() + ld.sum()).backward()
    assert u.grad is not None and layer.lower.grad is not None


@pytest.mark.parametrize("kind", ["cnf", "cglow"])
def test_eval_and_train_give_the_same_log_density(kind):
    torch.manual_seed(0)
    opts = dict(hidden=8, encoder_blocks=1, encoder_growth=4, context_channels=4) if kind == "cnf" else \
        dict(hidden=8, cond_channels=4, cond_fc_width=8, coupling_cond_channels=2)
    flow = randomize(build_flow(kind, (1, 4, 4), (2, 4, 4), levels=2, steps=2, **opts), 0.2, seed=3)
    y, x = torch.randn(3, 1, 4, 4), torch.rand(3, 2, 4, 4)
    flow.train()
    train = flow.log_prob(y, x)  # graph mode: weights rebuilt from the parameters
    flow.eval()
    with torch.no_grad():
        cached = flow.log_prob(y, x)  # first no-grad call fills the caches, the second one reads them
        again = flow.log_prob(y, x)
    torch.testing.assert_close(cached, train.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(again, cached, rtol=0, atol=0)
