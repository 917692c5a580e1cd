"""Priors: exact Gaussian log-densities, N(0, I) at initialisation, temperature semantics."""
from __future__ import annotations

import math

import torch

from flowlib.priors import ConditionalPrior, ConditionalSplitPrior, DiagonalGaussian


def test_priors_start_at_standard_normal():
    z = torch.randn(3, 2, 4, 4)
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(z).flatten(1).sum(1)
    cond = torch.randn(3, 5, 4, 4)
    for prior, c in [(DiagonalGaussian((2, 4, 4)), None), (ConditionalPrior(2, 5, 8), cond),
                     (ConditionalSplitPrior(2, 5, 8), cond)]:
        torch.testing.assert_close(prior.log_prob(z, c), expected)


def test_conditional_prior_matches_torch_normal_and_temperature():
    torch.manual_seed(0)
    prior = ConditionalPrior(2, 3, 8)
    with torch.no_grad():
        for p in prior.parameters():
            p.add_(0.3 * torch.randn_like(p))
    cond = torch.randn(2, 3, 2, 2)
    mean, log_std = prior.params(cond)
    z = torch.randn(2, 2, 2, 2)
    ref = torch.distributions.Normal(mean, log_std.exp()).log_prob(z).flatten(1).sum(1)
    torch.testing.assert_close(prior.log_prob(z, cond), ref)

    torch.testing.assert_close(prior.sample(cond, temperature=0.0), mean)
    big = cond[:1].expand(20000, -1, -1, -1)
    for t in (0.5, 1.0):
        draws = prior.sample(big, temperature=t)
        ratio = draws.std(0) / (t * log_std[0].exp())
        assert torch.all((ratio - 1).abs() < 0.05), f"temperature {t} must scale the std"


def test_diagonal_gaussian_sample_needs_batch_size():
    prior = DiagonalGaussian((1, 2, 2))
    assert prior.sample(batch_size=4).shape == (4, 1, 2, 2)
    assert prior.sample(torch.zeros(3, 7, 2, 2), temperature=0).abs().sum() == 0
    assert math.isclose(prior.log_prob(torch.zeros(1, 1, 2, 2)).item(), -2 * math.log(2 * math.pi), rel_tol=1e-6)
