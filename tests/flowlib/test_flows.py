"""Whole conditional flows: normalisation, sampling agrees with the density, exact inverse, gradients, config."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch.autograd.functional import jacobian

from flowlib.actnorm import ActNorm
from flowlib.flows import build_flow
from randomize import randomize

TINY = {  # kind -> build kwargs on y_shape (1, 2, 2): a 4-dimensional density we can integrate
    "cnf": dict(hidden=8, encoder_blocks=1, encoder_growth=4, context_channels=4),
    "cglow": dict(hidden=8, cond_channels=4, cond_fc_width=8, coupling_cond_channels=2),
}


def perturbed_flow(kind, y_shape=(1, 2, 2), x_shape=(2, 2, 2), levels=1, steps=2, scale=0.2, **options):
    """A flow with random non-identity parameters (zero-initialised outputs perturbed), in float64."""
    torch.manual_seed(0)
    flow = build_flow(kind, y_shape, x_shape, levels=levels, steps=steps, **{**TINY[kind], **options}).double()
    return randomize(flow, scale, seed=2).eval()


def importance_weights(flow, x1, n, seed=3):
    """``y ~ q = N(m, 1.5^2 S)`` with ``m, S`` the moments of 4000 model samples; weights ``p(y|x) / q(y)``.

    ``E_q[p/q] = 1`` iff ``p`` is normalised, whatever ``q`` is; fitting ``q`` to the model's samples only
    makes the estimate precise (a wrong sampler would give a worse proposal, not a biased integral).
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        pilot = flow.sample(x1.expand(4000, *x1.shape[1:])).flatten(1)
    q = torch.distributions.MultivariateNormal(pilot.mean(0), covariance_matrix=2.25 * torch.cov(pilot.T))
    y = q.sample((n,))
    with torch.no_grad():
        log_p = flow.log_prob(y.reshape(n, *flow.y_shape), x1.expand(n, *x1.shape[1:]))
    return y, torch.exp(log_p - q.log_prob(y))


@pytest.mark.parametrize("kind", ["cnf", "cglow"])
def test_density_integrates_to_one_and_matches_samples(kind):
    flow = perturbed_flow(kind)
    x1 = torch.rand(1, 2, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    torch.manual_seed(5)
    y, w = importance_weights(flow, x1, 20_000)
    z_hat, stderr = w.mean().item(), (w.std() / math.sqrt(len(w))).item()
    assert stderr < 0.01, f"importance sampling too noisy to test (stderr {stderr:.3f})"
    assert abs(z_hat - 1.0) < max(4 * stderr, 0.01), f"integral of p(y|x) = {z_hat:.4f} +- {stderr:.4f}"

    # Moments of what `sample` draws must match the moments of the density `log_prob` defines.
    with torch.no_grad():
        draws = flow.sample(x1.expand(20_000, *x1.shape[1:])).flatten(1)
    wn = (w / w.sum())[:, None]
    mean_p = (wn * y).sum(0)
    var_p = (wn * (y - mean_p) ** 2).sum(0)
    assert var_p.min() > 1e-3, "degenerate test density"
    torch.testing.assert_close(draws.mean(0), mean_p, rtol=0, atol=0.05 * var_p.sqrt().max().item())
    torch.testing.assert_close(draws.var(0), var_p, rtol=0.1, atol=0)


@pytest.mark.parametrize("kind,options,y_shape,x_shape,levels", [
    ("cnf", {}, (3, 8, 8), (3, 4, 4), 2),                                                   # SR: x half size
    ("cnf", dict(encoder="vgg", coupling="additive", subnet="drive", encoder_width=4), (1, 8, 8), (3, 8, 8), 2),
    ("cnf", dict(encoder="none", lu=False), (2, 2, 2), (3, 2, 2), 1),
    ("cglow", {}, (3, 8, 8), (3, 8, 8), 3),
    ("cglow", {}, (2, 2, 2), (3, 2, 2), 1),
])
def test_encode_decode_sample_temperature(kind, options, y_shape, x_shape, levels):
    flow = perturbed_flow(kind, y_shape, x_shape, levels=levels, scale=0.05, **options)
    y = torch.randn(2, *y_shape, dtype=torch.float64)
    x = torch.rand(2, *x_shape, dtype=torch.float64)
    latents = flow.encode(y, x)
    assert len(latents) == levels
    assert sum(z[0].numel() for z in latents) == math.prod(y_shape)
    torch.testing.assert_close(flow.decode(latents, x), y, rtol=1e-9, atol=1e-9)
    assert flow.log_prob(y, x).shape == (2,)

    cold = flow.sample(x, temperature=0.0)
    assert cold.shape == (2, *y_shape)
    torch.testing.assert_close(flow.sample(x, temperature=0.0), cold, rtol=0, atol=0)
    assert not torch.allclose(flow.sample(x, temperature=1.0), cold)
    # The mode of the latents depends on x, so different inputs give different cold samples.
    assert not torch.allclose(flow.sample(x.flip(0), temperature=0.0), cold)


@pytest.mark.parametrize("kind,options", [
    ("cnf", {}), ("cnf", dict(encoder="vgg", coupling="additive", subnet="drive", encoder_width=4)), ("cglow", {}),
])
def test_gradients_reach_every_parameter(kind, options):
    # Perturbing every parameter first: zero-initialised output layers would otherwise block the gradient to
    # the layers before them on the very first step (by design, not a bug).
    flow = perturbed_flow(kind, (1, 8, 8), (3, 8, 8), levels=2, **options).train()
    y = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    (-flow.log_prob(y, x).mean()).backward()
    missing = [n for n, p in flow.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, f"no gradient reaches {missing}"
    if kind == "cnf":
        assert any(n.startswith("encoder.") for n, _ in flow.named_parameters())


def test_fresh_flow_runs_actnorm_data_init_and_config_rebuilds():
    torch.manual_seed(0)
    flow = build_flow("cnf", (3, 8, 8), (3, 4, 4), levels=2, steps=2, **TINY["cnf"])
    y, x = 3 + 2 * torch.randn(16, 3, 8, 8), torch.rand(16, 3, 4, 4)
    lp = flow.log_prob(y, x)
    assert torch.isfinite(lp).all()
    first = flow.levels[0].layers[1]
    assert isinstance(first, ActNorm) and bool(first.initialized)
    from flowlib.squeeze import squeeze2d
    out, _ = first(squeeze2d(y))
    torch.testing.assert_close(out.mean(dim=(0, 2, 3)), torch.zeros(12), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std(dim=(0, 2, 3)), torch.ones(12), atol=1e-3, rtol=0)

    config = json.loads(json.dumps(flow.config))
    rebuilt = build_flow(**config)
    rebuilt.load_state_dict(flow.state_dict())
    assert all(bool(m.initialized) for m in rebuilt.modules() if isinstance(m, ActNorm))
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.log_prob(y, x), flow.log_prob(y, x))


def test_build_flow_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['encodr'\].*allowed.*encoder"):
        build_flow("cnf", (1, 4, 4), (1, 4, 4), encodr="vgg")
    with pytest.raises(ValueError, match="cond_channels"):
        build_flow("cnf", (1, 4, 4), (1, 4, 4), cond_channels=3)
    with pytest.raises(ValueError, match="subnet"):
        build_flow("cnf", (1, 4, 4), (1, 4, 4), subnet="unet")
    with pytest.raises(ValueError, match="divisible"):
        build_flow("cnf", (1, 6, 6), (1, 6, 6), levels=2)
    with pytest.raises(ValueError, match="kind"):
        build_flow("realnvp", (1, 4, 4), (1, 4, 4))


# Built on 16x16 patches, evaluated on other sizes: SR (y = 2x x, RRDB) and DRIVE-like (same grid, VGG).
SIZE_CASES = {
    "sr": (dict(coupling="affine"), 3, 3, 2),
    "drive": (dict(encoder="vgg", coupling="additive", subnet="drive", encoder_width=4), 1, 3, 1),
}


@pytest.mark.parametrize("case", sorted(SIZE_CASES))
@pytest.mark.parametrize("eval_size", [(24, 24), (16, 40)])
def test_cnf_runs_at_any_size_and_matches_a_flow_built_there(case, eval_size):
    options, cy, cx, ratio = SIZE_CASES[case]
    flow = perturbed_flow("cnf", (cy, 16, 16), (cx, 16 // ratio, 16 // ratio), levels=3, scale=0.05, **options)
    (h, w), gen = eval_size, torch.Generator().manual_seed(7)
    y = torch.randn(2, cy, h, w, dtype=torch.float64, generator=gen)
    x = torch.rand(2, cx, h // ratio, w // ratio, dtype=torch.float64, generator=gen)
    with torch.no_grad():
        latents = flow.encode(y, x)
        assert [tuple(z.shape[-2:]) for z in latents] == [(h // 2, w // 2), (h // 4, w // 4), (h // 8, w // 8)]
        assert sum(z[0].numel() for z in latents) == y[0].numel()
        torch.testing.assert_close(flow.decode(latents, x), y, rtol=1e-9, atol=1e-9)
        log_p = flow.log_prob(y, x)
        cold = flow.sample(x, temperature=0.0)
        warm = flow.sample(x, temperature=1.0)
    assert log_p.shape == (2,) and torch.isfinite(log_p).all()
    assert cold.shape == warm.shape == (2, cy, h, w)
    assert not torch.allclose(warm, cold)

    # The same weights in a flow built at the evaluation size give the same numbers: nothing depends on the
    # build size but the y/x ratio.
    there = build_flow(**{**flow.config, "y_shape": [cy, h, w], "x_shape": [cx, h // ratio, w // ratio]}).double()
    there.load_state_dict(flow.state_dict())
    there.eval()
    with torch.no_grad():
        torch.testing.assert_close(there.log_prob(y, x), log_p, rtol=0, atol=1e-6)
        torch.testing.assert_close(there.sample(x, temperature=0.0), cold, rtol=0, atol=1e-9)
        for a, b in zip(there.encode(y, x), latents):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-9)
    # ... and the build-size flow still evaluates at its build size after running elsewhere.
    y16 = torch.randn(2, cy, 16, 16, dtype=torch.float64, generator=gen)
    x16 = torch.rand(2, cx, 16 // ratio, 16 // ratio, dtype=torch.float64, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(flow.log_prob(y16, x16), there.log_prob(y16, x16), rtol=0, atol=1e-6)
        assert flow.sample(x16).shape == (2, cy, 16, 16)


def test_size_errors_name_the_shape_and_the_multiple():
    sr = perturbed_flow("cnf", (3, 16, 16), (3, 8, 8), levels=3, scale=0.05)
    with pytest.raises(ValueError, match=r"y of spatial size 20x16: .*multiples of 2\*\*levels = 8"):
        sr.log_prob(torch.zeros(1, 3, 20, 16, dtype=torch.float64), torch.zeros(1, 3, 10, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"y of size 18x24 \(inferred from x of shape \(1, 3, 9, 12\)\).*= 8"):
        sr.sample(torch.zeros(1, 3, 9, 12, dtype=torch.float64))

    cglow = perturbed_flow("cglow", (1, 8, 8), (2, 8, 8), levels=2, scale=0.05)
    y16, x16 = torch.zeros(1, 1, 16, 16, dtype=torch.float64), torch.zeros(1, 2, 16, 16, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"c-Glow models evaluate at their trained size 8x8; got y of spatial size 16"):
        cglow.log_prob(y16, x16)
    with pytest.raises(ValueError, match=r"c-Glow models evaluate at their trained size 8x8.*\(1, 2, 16, 16\)"):
        cglow.sample(x16)
    # At the trained size it runs; for the density, x of another size is resampled to y's grid as before.
    y, x = torch.randn(1, 1, 8, 8, dtype=torch.float64), torch.rand(1, 2, 8, 8, dtype=torch.float64)
    assert torch.isfinite(cglow.log_prob(y, x)).all() and cglow.sample(x).shape == (1, 1, 8, 8)
    assert torch.isfinite(cglow.log_prob(y, torch.rand(1, 2, 16, 16, dtype=torch.float64))).all()


# ------------------------------------------------------------------------------- c-Glow's priors (issue 12)


def _prior_terms(flow, latents, conds):
    """``log p`` of the latents under the split priors and the top prior given ``conds``: the sampling path
    (the kept half ``z_0`` of level ``l`` is level ``l + 1``'s input, decoded from the deeper latents)."""
    z = latents[-1]
    total = flow.prior.log_prob(z, conds[-1])
    for l in reversed(range(len(flow.levels))):
        if l < len(flow.levels) - 1:
            total = total + flow.split_priors[l].log_prob(latents[l], torch.cat([z, conds[l]], dim=1))
            z = torch.cat([z, latents[l]], dim=1)
        z, _ = flow.levels[l].inverse(z, conds[l])
    return total


def _cglow_pair(priors=None, levels=2, scale=0.2):
    flow = perturbed_flow("cglow", (1, 4, 4), (2, 4, 4), levels=levels, scale=scale,
                          **({} if priors is None else {"priors": priors}))
    gen = torch.Generator().manual_seed(11)
    y = torch.randn(2, 1, 4, 4, dtype=torch.float64, generator=gen)
    x1, x2 = (torch.rand(2, 2, 4, 4, dtype=torch.float64, generator=gen) for _ in range(2))
    return flow, y, x1, x2


def test_cglow_default_priors_are_the_papers_and_do_not_see_x():
    from flowlib.priors import ConditionalPrior, ConditionalSplitPrior, DiagonalGaussian, SplitPrior

    flow, y, x1, x2 = _cglow_pair()
    assert flow.config["priors"] == "unconditional"
    assert isinstance(flow.prior, DiagonalGaussian) and not isinstance(flow.prior, ConditionalPrior)
    assert [type(p) for p in flow.split_priors] == [SplitPrior]
    assert not isinstance(flow.split_priors[0], ConditionalSplitPrior)
    with torch.no_grad():
        latents = flow.encode(y, x1)
        c1, c2 = flow.conditions(x1), flow.conditions(x2)
        assert not torch.allclose(c1[-1], c2[-1])
        z_keep = flow.levels[1].inverse(latents[-1], c1[1])[0]  # z_0 of level 0: level 1's input
        split = flow.split_priors[0]
        # Same z, other x: neither the split prior term nor the top prior term changes.
        torch.testing.assert_close(split.log_prob(latents[0], torch.cat([z_keep, c1[0]], 1)),
                                   split.log_prob(latents[0], torch.cat([z_keep, c2[0]], 1)), rtol=0, atol=0)
        torch.testing.assert_close(flow.prior.log_prob(latents[-1], c1[-1]), flow.prior.log_prob(latents[-1], c2[-1]),
                                   rtol=0, atol=0)
        # ... but the split prior does see z_0, and the perturbed priors are not N(0, I).
        assert not torch.allclose(split.log_prob(latents[0], torch.cat([z_keep, c1[0]], 1)),
                                  split.log_prob(latents[0], torch.cat([z_keep + 1, c1[0]], 1)))
    # No gradient reaches x through the prior terms: only the step components are conditional.
    x = x1.clone().requires_grad_(True)
    conds = flow.conditions(x)
    terms = (flow.prior.log_prob(latents[-1], conds[-1]).sum()
             + split.log_prob(latents[0], torch.cat([z_keep, conds[0]], 1)).sum())
    grad, = torch.autograd.grad(terms, x, allow_unused=True)
    assert grad is None or not torch.any(grad != 0)


def test_cglow_conditional_priors_variant_sees_x():
    from flowlib.priors import ConditionalPrior, ConditionalSplitPrior

    flow, y, x1, x2 = _cglow_pair("conditional")
    assert isinstance(flow.prior, ConditionalPrior)
    assert [type(p) for p in flow.split_priors] == [ConditionalSplitPrior]
    with torch.no_grad():
        latents = flow.encode(y, x1)
        c1, c2 = flow.conditions(x1), flow.conditions(x2)
        z_keep = flow.levels[1].inverse(latents[-1], c1[1])[0]
        assert not torch.allclose(flow.split_priors[0].log_prob(latents[0], torch.cat([z_keep, c1[0]], 1)),
                                  flow.split_priors[0].log_prob(latents[0], torch.cat([z_keep, c2[0]], 1)))
        assert not torch.allclose(flow.prior.log_prob(latents[-1], c1[-1]), flow.prior.log_prob(latents[-1], c2[-1]))
    with pytest.raises(ValueError, match="priors"):
        build_flow("cglow", (1, 4, 4), (2, 4, 4), priors="winkler")
    with pytest.raises(ValueError, match="actnorm_bound"):
        build_flow("cglow", (1, 4, 4), (2, 4, 4), actnorm_bound=-1.0)
    with pytest.raises(ValueError, match="priors"):
        build_flow("cnf", (1, 4, 4), (1, 4, 4), priors="unconditional")  # a c-Glow option only


@pytest.mark.parametrize("priors", ["unconditional", "conditional"])
def test_cglow_log_prob_is_priors_plus_autograd_log_det_and_decode_is_exact(priors):
    """``log p(y|x)`` = the priors' log-density of the latents + ``log|det d latents / d y|`` (autograd, float64),
    and ``decode`` inverts ``encode`` exactly, for both prior choices (levels=2: a split prior and the top)."""
    flow, y, x1, _ = _cglow_pair(priors)
    with torch.no_grad():
        latents = flow.encode(y, x1)
        torch.testing.assert_close(flow.decode(latents, x1), y, rtol=1e-10, atol=1e-10)
        log_p = flow.log_prob(y, x1)
    for b in range(y.shape[0]):
        xb = x1[b:b + 1]
        jac = jacobian(lambda yb: torch.cat([z.reshape(-1) for z in flow.encode(yb.reshape(1, 1, 4, 4), xb)]),
                       y[b].reshape(-1))
        with torch.no_grad():
            lat = flow.encode(y[b:b + 1], xb)
            expected = _prior_terms(flow, lat, flow.conditions(xb)) + torch.linalg.slogdet(jac)[1]
        torch.testing.assert_close(log_p[b:b + 1], expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("priors", ["unconditional", "conditional"])
@pytest.mark.parametrize("temperature", [0.0, 0.5, 1.0])
def test_cglow_temperature_scales_every_prior_std(priors, temperature):
    """A sample's latents are ``mu + T sigma eps`` at the top and at the split, with the noise ``eps`` given.

    (Smaller perturbations than elsewhere: re-encoding a sample must be well conditioned to read its latents.)"""
    flow, _, x1, _ = _cglow_pair(priors, scale=0.1)
    with torch.no_grad():
        conds = flow.conditions(x1)
        noise = flow.noise(2, (4, 4), temperature, torch.float64)
        y = flow.sample_from(conds, temperature, noise)
        latents = flow.encode(y, x1)
        eps = noise if temperature else [torch.zeros_like(z) for z in (latents[-1], latents[0])]
        top_mean, top_log_std = ((flow.prior.mean, flow.prior.log_std) if priors == "unconditional"
                                 else flow.prior.params(conds[-1]))
        torch.testing.assert_close(latents[-1], top_mean + temperature * top_log_std.exp() * eps[0],
                                   rtol=1e-8, atol=1e-8)
        z_keep = flow.levels[1].inverse(latents[-1], conds[1])[0]
        mean, log_std = flow.split_priors[0].params(torch.cat([z_keep, conds[0]], 1))
        assert log_std.abs().max() > 1e-3  # a perturbed, non-standard prior
        torch.testing.assert_close(latents[0], mean + temperature * log_std.exp() * eps[1], rtol=1e-8, atol=1e-8)
        assert flow.sample(x1, temperature).shape == (2, 1, 4, 4)
