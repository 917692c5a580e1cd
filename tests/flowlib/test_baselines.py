"""Factorized baselines: normalised over their discrete supports, exact moments, eq. 9's normaliser, budget."""
from __future__ import annotations

import math

import pytest
import torch

from flowlib.baselines import (BASELINE_ENCODERS, Categorical, DiscretizedLogistic, WeightedBernoulli,
                               build_baseline, count_parameters)

TINY = dict(hidden=6, encoder_blocks=1, encoder_growth=4, context_channels=4, encoder_width=4)


def test_discretized_logistic_sums_to_one_over_256_values():
    torch.manual_seed(0)
    model = build_baseline("logistic", (3, 4, 4), (3, 2, 2), **TINY).double()
    # parameters covering the edge cases: means beyond both ends, tiny and large scales
    mu = torch.tensor([-1.3, -1.0, -0.2, 0.0, 0.5, 1.0, 1.4], dtype=torch.float64)
    log_s = torch.tensor([-7.0, -5.0, -3.0, -1.0, 0.5], dtype=torch.float64)
    mu, log_s = torch.meshgrid(mu, log_s, indexing="ij")
    theta = torch.stack([mu.reshape(-1), log_s.reshape(-1)])[None, :, :, None, None]  # (1, 2, N, 1, 1)
    values = torch.arange(256, dtype=torch.float64).view(256, 1, 1, 1, 1)
    logp = torch.stack([model.log_prob_elements(v.expand(1, mu.numel(), 1, 1), theta) for v in values])
    total = logp.exp().sum(0).flatten()
    torch.testing.assert_close(total, torch.ones_like(total), rtol=0, atol=2e-3)
    assert torch.isfinite(logp).all()


def test_discretized_logistic_moments_are_the_exact_bin_moments():
    torch.manual_seed(1)
    model = build_baseline("logistic", (1, 3, 3), (1, 3, 3), encoder="none", hidden=4).double()
    with torch.no_grad():
        model.head[-1].bias.copy_(torch.tensor([0.3, -2.0], dtype=torch.float64))
    x = torch.rand(2, 1, 3, 3, dtype=torch.float64)
    theta = model._theta(x)
    values = torch.arange(256, dtype=torch.float64)
    p = torch.stack([model.log_prob_elements(torch.full((2, 1, 3, 3), float(v), dtype=torch.float64), theta)
                     for v in values]).exp()
    mean = (p * values.view(-1, 1, 1, 1, 1)).sum(0)
    std = ((p * values.view(-1, 1, 1, 1, 1) ** 2).sum(0) - mean ** 2).sqrt()
    m, s = model.moments(x)
    torch.testing.assert_close(m, mean, rtol=1e-3, atol=0.05)
    torch.testing.assert_close(s, std, rtol=1e-2, atol=0.05)
    y = model.sample(x)
    assert y.shape == (2, 1, 3, 3) and torch.equal(y, y.round()) and y.min() >= 0 and y.max() <= 255


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_weighted_bernoulli_normalised_probabilities_sum_to_one(beta):
    torch.manual_seed(2)
    model = build_baseline("bernoulli", (1, 4, 4), (3, 4, 4), encoder="vgg", beta=beta, **TINY)
    x = torch.rand(3, 3, 4, 4)
    theta = model._theta(x) * 5.0
    p1 = model.log_prob_elements(torch.ones(3, 1, 4, 4), theta).exp()
    p0 = model.log_prob_elements(torch.zeros(3, 1, 4, 4), theta).exp()
    torch.testing.assert_close(p0 + p1, torch.ones_like(p0))
    # the numerator alone (the training loss) is not normalised: that is what the normaliser is for
    log_on, log_off, _ = model._terms(theta)
    assert (log_on.exp() + log_off.exp() > 1 + 1e-6).all()
    theta1 = model._theta(x)
    torch.testing.assert_close(model.probability(x), model.log_prob_elements(torch.ones(3, 1, 4, 4), theta1).exp())


def test_weighted_bernoulli_loss_is_the_numerator_and_likelihood_adds_the_normaliser():
    torch.manual_seed(3)
    model = build_baseline("bernoulli", (1, 4, 4), (3, 4, 4), encoder="conditioning", beta=0.9, **TINY)
    x, y = torch.rand(2, 3, 4, 4), torch.randint(0, 2, (2, 1, 4, 4)).float()
    p = torch.sigmoid(model._theta(x)[:, 0])
    wce = -(0.9 * y * torch.log(p) + 0.1 * (1 - y) * torch.log(1 - p)).flatten(1).sum(1)
    norm = torch.log(p ** 0.9 + (1 - p) ** 0.1).flatten(1).sum(1)
    torch.testing.assert_close(model.nll(y, x), wce)
    torch.testing.assert_close(model.log_likelihood(y, x), -wce - norm)


def test_categorical_sums_to_one_and_samples_valid_classes():
    torch.manual_seed(4)
    model = build_baseline("categorical", (1, 4, 4), (3, 4, 4), encoder="conditioning", num_classes=3, **TINY)
    x = torch.rand(2, 3, 4, 4)
    total = sum(model.log_likelihood(torch.full((2, 1, 4, 4), float(k)), x).exp() for k in range(3))
    # the product over pixels of per-pixel sums: check per pixel instead
    theta = model._theta(x)
    per_pixel = sum(model.log_prob_elements(torch.full((2, 1, 4, 4), float(k)), theta).exp() for k in range(3))
    torch.testing.assert_close(per_pixel, torch.ones_like(per_pixel))
    assert (total < 1).all()
    s = model.sample(x)
    assert s.shape == (2, 1, 4, 4) and set(s.unique().tolist()) <= {0.0, 1.0, 2.0}
    mean, std = model.moments(x)
    assert mean.shape == (2, 3, 4, 4)
    torch.testing.assert_close(mean.sum(1), torch.ones(2, 4, 4))
    torch.testing.assert_close(model.moments(x, temperature=0.0)[0].argmax(1), mean.argmax(1))


def test_gaussian_log_likelihood_and_temperature():
    torch.manual_seed(5)
    model = build_baseline("gaussian", (2, 4, 4), (1, 4, 4), encoder="none", hidden=4)
    x, y = torch.rand(2, 1, 4, 4), torch.randn(2, 2, 4, 4)
    theta = model._theta(x)
    ref = torch.distributions.Normal(theta[:, 0], theta[:, 1].exp()).log_prob(y).flatten(1).sum(1)
    torch.testing.assert_close(model.log_likelihood(y, x), ref)
    torch.testing.assert_close(model.sample(x, temperature=0.0), theta[:, 0])


@pytest.mark.parametrize("encoder", BASELINE_ENCODERS)
def test_gradients_reach_every_parameter_and_sizes_may_change(encoder):
    torch.manual_seed(6)
    model = build_baseline("logistic", (3, 8, 8), (3, 4, 4), encoder=encoder, **TINY)
    x, y = torch.rand(2, 3, 4, 4), torch.randint(0, 256, (2, 3, 8, 8)).float()
    model.nll(y, x).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, missing
    # evaluation on a larger image than the training grid (full Set5 images after patch training)
    assert model.log_likelihood(torch.zeros(1, 3, 12, 16), torch.rand(1, 3, 6, 8)).shape == (1,)
    assert model.sample(torch.rand(1, 3, 6, 8)).shape == (1, 3, 12, 16)
    assert model.moments(torch.rand(1, 3, 6, 8))[0].shape == (1, 3, 12, 16)


def test_param_budget_matches_a_target_count_and_config_rebuilds():
    target = 20_000
    model = build_baseline("logistic", (3, 8, 8), (3, 4, 4), encoder="rrdb", param_budget=target,
                           encoder_blocks=1, encoder_growth=4, context_channels=8)
    n = count_parameters(model)
    wider = build_baseline(**{**model.config, "hidden": model.config["hidden"] + 1})
    narrower = build_baseline(**{**model.config, "hidden": model.config["hidden"] - 1})
    assert abs(n - target) <= min(abs(count_parameters(wider) - target), abs(count_parameters(narrower) - target))
    assert count_parameters(build_baseline(**model.config)) == n


def test_errors_name_the_option():
    with pytest.raises(ValueError, match="distribution 'poisson'"):
        build_baseline("poisson", (1, 2, 2), (1, 2, 2))
    with pytest.raises(ValueError, match="encoder='unet'"):
        build_baseline("gaussian", (1, 2, 2), (1, 2, 2), encoder="unet")
    with pytest.raises(ValueError, match="unknown option"):
        build_baseline("gaussian", (1, 2, 2), (1, 2, 2), blocks=3)
    with pytest.raises(ValueError, match="beta"):
        build_baseline("bernoulli", (1, 2, 2), (1, 2, 2), beta=1.5)
