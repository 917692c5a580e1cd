"""build_model: every family x target trains a step with gradients everywhere, predicts in data space, and the
flows' dequantization bounds are true lower bounds (their probabilities over all configurations sum to <= 1)."""
from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from flowlib.baselines import count_parameters
from flowlib.models import FAMILIES, TARGETS, build_model, parameter_counts
from randomize import randomize

TINY = {
    "cnf": dict(levels=1, steps=1, hidden=8, encoder_options={"blocks": 1, "growth": 4}, context_channels=4),
    "cglow": dict(levels=1, steps=1, hidden=8, cond_hidden=4),
    "factorized": dict(hidden=8, encoder_options={"blocks": 1, "growth": 4, "width": 4}, context_channels=4),
}
K = 3


def _shapes(target):
    return ((1, 4, 4) if target in ("binary", "categorical") else (3, 4, 4)), (3, 4, 4)


def _data(target, y_shape, b=2, gen=None):
    if target == "image8":
        return torch.randint(0, 256, (b, *y_shape), generator=gen).float()
    if target == "binary":
        return torch.randint(0, 2, (b, *y_shape), generator=gen).float()
    if target == "categorical":
        return torch.randint(0, K, (b, *y_shape), generator=gen).float()
    return torch.randn(b, *y_shape, generator=gen)


def _build(family, target, **extra):
    y_shape, x_shape = _shapes(target)
    opts = {**TINY[family], **({"num_classes": K} if target == "categorical" else {}), **extra}
    return build_model(family, target, y_shape, x_shape, **opts), y_shape, x_shape


_perturb = randomize


@pytest.mark.parametrize("family,target", list(itertools.product(FAMILIES, TARGETS)))
def test_every_combination_trains_a_step_and_predicts_in_data_space(family, target):
    torch.manual_seed(0)
    model, y_shape, x_shape = _build(family, target)
    json.dumps(model.config)
    gen = torch.Generator().manual_seed(1)
    y, x = _data(target, y_shape, gen=gen), torch.rand(2, *x_shape, generator=gen)
    with torch.no_grad():
        model.nll(y, x)  # data-dependent initialisation, as the training loop does
    _perturb(model)
    loss = model.nll(y, x)
    assert loss.shape == (2,) and torch.isfinite(loss).all()
    loss.mean().backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()
            or p.grad.abs().sum() == 0]
    assert not dead, f"no gradient reaches {dead}"
    if family != "factorized" or target != "binary":
        ll = model.log_likelihood(y, x)
        assert torch.isfinite(ll).all()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer.step()
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()))

    model.eval()
    s = model.sample(x, temperature=0.7)
    assert s.shape == y.shape
    out = model.predict(x, n_samples=3, temperature=0.7)
    mean_channels = K if target == "categorical" else y_shape[0]
    assert out["mean"].shape == (2, mean_channels, *y_shape[1:])
    assert out["std"].shape == out["mean"].shape
    assert out["prediction"].shape == y.shape
    pred = out["prediction"]
    if target == "image8":
        assert torch.equal(s, s.round()) and s.min() >= 0 and s.max() <= 255
        assert torch.equal(pred, pred.round()) and pred.min() >= 0 and pred.max() <= 255
        assert (pred - out["mean"]).abs().max() <= 0.5
    elif target == "binary":
        assert set(s.unique().tolist()) <= {0.0, 1.0} and set(pred.unique().tolist()) <= {0.0, 1.0}
        assert ((out["mean"] >= 0) & (out["mean"] <= 1)).all()
        assert torch.equal(pred, (out["mean"] > 0.5).float())
    elif target == "categorical":
        assert set(s.unique().tolist()) <= set(range(K))
        torch.testing.assert_close(out["mean"].sum(1), torch.ones(2, *y_shape[1:]))
        assert torch.equal(pred[:, 0], out["mean"].argmax(1).float())
    else:
        assert torch.equal(pred, out["mean"])


def _bound_probabilities(model, configs, x1, n):
    """exp of the Monte Carlo dequantization bound of every configuration (one sample of x)."""
    c = configs.shape[0]
    y = configs.repeat_interleave(n, dim=0)  # one batch: config-major
    with torch.no_grad():
        ll = model.log_likelihood(y, x1.expand(c * n, *x1.shape[1:]))
    return ll.view(c, n).mean(1).exp()


@pytest.mark.parametrize("family,dequantization", [("cnf", "binary"), ("cnf", "uniform"), ("cnf", "variational"),
                                                    ("cglow", "uniform")])
def test_binary_flow_bound_sums_to_at_most_one_over_all_configurations(family, dequantization):
    torch.manual_seed(2)
    y_shape, x_shape = (1, 2, 2), (2, 2, 2)  # D = 4: all 16 configurations
    opts = {**TINY[family], "hidden": 6, "dequantization": dequantization}
    if family == "cnf":
        opts["encoder"] = "none"
    model = _perturb(build_model(family, "binary", y_shape, x_shape, **opts).double(), scale=0.2).eval()
    configs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=4)), dtype=torch.float64).view(16, *y_shape)
    x1 = torch.rand(1, *x_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    probs = _bound_probabilities(model, configs, x1, n=1500)
    assert probs.sum() <= 1.0 + 1e-3, probs.sum()
    if dequantization == "binary":  # half-spaces tile R^D: a bound this loose would mean the test measures nothing
        assert probs.sum() > 0.05, probs.sum()


def test_categorical_flow_bound_sums_to_at_most_one_over_all_configurations():
    torch.manual_seed(4)
    y_shape, x_shape = (1, 2, 2), (1, 2, 2)  # 3^4 = 81 label maps, 12 one-hot dimensions
    model = build_model("cglow", "categorical", y_shape, x_shape, num_classes=K, levels=1, steps=1, hidden=6,
                        cond_hidden=4)
    model = _perturb(model.double(), scale=0.2).eval()
    configs = torch.tensor(list(itertools.product(range(K), repeat=4)), dtype=torch.float64).view(-1, *y_shape)
    x1 = torch.rand(1, *x_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    probs = _bound_probabilities(model, configs, x1, n=200)
    assert probs.sum() <= 1.0 + 1e-3, probs.sum()


def test_image8_bound_counts_the_256_rescaling():
    """A continuous flow on v - 1/2 and the bound differ by exactly D log 256 for uniform dequantization."""
    torch.manual_seed(6)
    model = _perturb(build_model("cnf", "image8", (3, 4, 4), (3, 2, 2), **TINY["cnf"]).double()).eval()
    y = torch.randint(0, 256, (2, 3, 4, 4)).double()
    x = torch.rand(2, 3, 2, 2, dtype=torch.float64)
    torch.manual_seed(7)
    ll = model.log_likelihood(y, x)
    torch.manual_seed(7)
    v = (y + torch.rand_like(y)) / 256
    expected = model.flow.log_prob(v - 0.5, x) - 48 * math.log(256)
    torch.testing.assert_close(ll, expected)
    assert model.num_dims(y) == 48


def test_temperature_zero_predictions_are_deterministic():
    model = _perturb(_build("cnf", "continuous")[0]).eval()
    x = torch.rand(2, 3, 4, 4)
    a, b = model.predict(x, n_samples=2, temperature=0.0), model.predict(x, n_samples=2, temperature=0.0)
    torch.testing.assert_close(a["mean"], b["mean"])
    assert a["std"].abs().max() < 1e-5


@pytest.mark.parametrize("family,target", [("cnf", "binary"), ("cnf", "image8"), ("cglow", "continuous"),
                                           ("cglow", "categorical")])
def test_temperature_zero_decodes_once_and_counts_every_draw(family, target):
    """At T = 0 every draw is the decoded prior mean: predict decodes it once, equal to the sample-mean of the
    n draws a loop of `sample` calls makes, and ``draws`` still counts n per image (nothing was dropped)."""
    torch.manual_seed(0)
    model, y_shape, x_shape = _build(family, target, levels=2, steps=2)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(2, *x_shape, generator=gen)
    with torch.no_grad():
        model.nll(_data(target, y_shape, gen=gen), x)
    _perturb(model, 0.05)
    model.eval()
    draws = torch.stack([model.sample(x, 0.0) for _ in range(3)])
    if target == "categorical":
        draws = torch.nn.functional.one_hot(draws[:, :, 0].long(), K).permute(0, 1, 4, 2, 3).float()
    passes = []
    decode = model.flow.sample_from
    model.flow.sample_from = lambda conds, t, noise=None: passes.append(conds[0].shape[0]) or decode(conds, t, noise)
    out = model.predict(x, n_samples=16, temperature=0.0)
    assert passes == [2], "one decode of the batch, not 16"
    torch.testing.assert_close(out["mean"], draws.mean(0))
    assert out["draws"].tolist() == [16, 16] and float(out["std"].abs().max()) == 0.0


def test_config_rebuilds_the_same_architecture():
    for family, target in [("cnf", "binary"), ("cglow", "categorical"), ("factorized", "image8")]:
        model = _build(family, target)[0]
        clone = build_model(**json.loads(json.dumps(model.config)))
        clone.load_state_dict(model.state_dict())
        assert count_parameters(clone) == count_parameters(model)


def test_factorized_param_budget_matches_a_flow():
    flow = _build("cnf", "image8")[0]
    budget = parameter_counts(flow)["total"]
    base = build_model("factorized", "image8", (3, 4, 4), (3, 4, 4), param_budget=budget,
                       encoder_options={"blocks": 1, "growth": 4}, context_channels=4)
    counts = parameter_counts(base)
    assert abs(counts["total"] - budget) / budget < 0.05, (counts, budget)
    assert "param_budget" not in base.config and base.config["hidden"] == base.baseline.config["hidden"]
    assert counts["encoder"] > 0 and counts["total"] == counts["encoder"] + counts["dequantizer"] + counts["rest"]


@pytest.mark.parametrize("kwargs,match", [
    (dict(family="vae", target="binary"), "family='vae'"),
    (dict(family="cnf", target="depth"), "target='depth'"),
    (dict(family="cnf", target="image8", dequantization="binary"), "dequantization"),
    (dict(family="cnf", target="continuous", dequantization="uniform"), "discrete targets"),
    (dict(family="cnf", target="categorical"), "num_classes"),
    (dict(family="cnf", target="binary", beta=0.9), "beta"),
    (dict(family="factorized", target="binary", steps=2), "option steps"),
    (dict(family="factorized", target="binary", encoder="unet"), "encoder='unet'"),
    (dict(family="cnf", target="binary", encoder_options={"depth": 3}), "encoder_options.depth"),
    (dict(family="cnf", target="binary", coupling="spline"), "coupling"),
    (dict(family="cglow", target="binary", encoder="rrdb"), "option encoder"),
])
def test_invalid_options_name_the_option(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_model(y_shape=(1, 4, 4), x_shape=(3, 4, 4), **kwargs)


# (family, target, build y_shape, build x_shape, options); evaluated at other sizes with the same y/x ratio.
SIZE_MODELS = {
    "drive": ("cnf", "binary", (1, 16, 16), (3, 16, 16),
              dict(levels=2, steps=1, hidden=8, encoder="vgg", encoder_options={"width": 4}, coupling="additive",
                   subnet="drive", dequantization="binary")),
    "sr": ("cnf", "image8", (3, 16, 16), (3, 8, 8), {**TINY["cnf"], "levels": 2, "dequantization": "variational"}),
    "parts": ("cnf", "categorical", (1, 16, 16), (3, 16, 16), {**TINY["cnf"], "levels": 2, "num_classes": K}),
    "sr-factorized": ("factorized", "image8", (3, 16, 16), (3, 8, 8), TINY["factorized"]),
}


@pytest.mark.parametrize("name,eval_size", [("drive", (32, 32)), ("sr", (24, 24)), ("sr", (16, 40)),
                                            ("parts", (16, 40)), ("sr-factorized", (24, 24))])
def test_models_evaluate_at_other_sizes_like_a_model_built_there(name, eval_size):
    family, target, y_shape, x_shape, opts = SIZE_MODELS[name]
    torch.manual_seed(0)
    model = _perturb(build_model(family, target, y_shape, x_shape, **opts).double(), scale=0.05).eval()
    (h, w), ratio = eval_size, y_shape[1] // x_shape[1]
    gen = torch.Generator().manual_seed(1)
    y = _data(target, (y_shape[0], h, w), gen=gen).double()
    x = torch.rand(2, x_shape[0], h // ratio, w // ratio, dtype=torch.float64, generator=gen)
    there = build_model(**{**model.config, "y_shape": [y_shape[0], h, w], "x_shape": [x_shape[0], h // ratio,
                                                                                       w // ratio]}).double()
    there.load_state_dict(model.state_dict())
    there.eval()

    results = []
    for m in (model, there):
        torch.manual_seed(3)  # the same dequantization noise and prior draws for both
        with torch.no_grad():
            ll = m.log_likelihood(y, x)
            nll = m.nll(y, x)
            s = m.sample(x, temperature=0.7)
            out = m.predict(x, n_samples=2, temperature=0.7)
        results.append((ll, nll, s, out))
    (ll, nll, s, out), (ll2, nll2, s2, out2) = results
    assert ll.shape == nll.shape == (2,) and torch.isfinite(ll).all() and torch.isfinite(nll).all()
    assert s.shape == y.shape and out["prediction"].shape == y.shape
    channels = K if target == "categorical" else y_shape[0]
    assert out["mean"].shape == out["std"].shape == (2, channels, h, w)
    torch.testing.assert_close(ll2, ll, rtol=0, atol=1e-6)
    torch.testing.assert_close(nll2, nll, rtol=0, atol=1e-6)
    torch.testing.assert_close(s2, s, rtol=0, atol=1e-6)
    torch.testing.assert_close(out2["mean"], out["mean"], rtol=0, atol=1e-6)
    if target == "image8":
        assert torch.equal(s, s.round()) and s.min() >= 0 and s.max() <= 255
    elif target == "binary":
        assert set(s.unique().tolist()) <= {0.0, 1.0}
    else:
        assert set(s.unique().tolist()) <= set(range(K))


def test_flow_models_reject_sizes_they_cannot_evaluate():
    family, target, y_shape, x_shape, opts = SIZE_MODELS["drive"]
    model = build_model(family, target, y_shape, x_shape, **opts).eval()
    with pytest.raises(ValueError, match=r"y of shape \(2, 1, 18, 18\): height and width must be multiples of "
                                         r"2\*\*levels = 4"):
        model.log_likelihood(torch.zeros(2, 1, 18, 18), torch.zeros(2, 3, 18, 18))
    with pytest.raises(ValueError, match=r"y of shape \(2, 1, 16, 18\).*= 4"):
        model.nll(torch.zeros(2, 1, 16, 18), torch.zeros(2, 3, 16, 18))
    with pytest.raises(ValueError, match=r"y of size 18x16 \(inferred from x of shape \(1, 3, 18, 16\)\).*= 4"):
        model.predict(torch.zeros(1, 3, 18, 16), n_samples=1)

    cglow = build_model("cglow", "binary", (1, 8, 8), (3, 8, 8), **TINY["cglow"]).eval()
    with pytest.raises(ValueError, match=r"c-Glow models evaluate at their trained size 8x8; got y of shape "
                                         r"\(1, 1, 16, 16\)"):
        cglow.log_likelihood(torch.zeros(1, 1, 16, 16), torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match=r"c-Glow models evaluate at their trained size 8x8"):
        cglow.sample(torch.zeros(1, 3, 16, 16))
    assert cglow.sample(torch.zeros(1, 3, 8, 8)).shape == (1, 1, 8, 8)


def test_residual_flow_models_y_minus_ax_with_unit_jacobian():
    """c-Glow's residual denoising: log p(y|x) = log p_flow(y - a x | x); samples are a x plus flow samples."""
    torch.manual_seed(0)
    model = build_model("cglow", "continuous", (3, 8, 8), (3, 8, 8), residual=1.0, **TINY["cglow"]).double()
    randomize(model, 0.1, seed=3)
    y, x = torch.rand(2, 3, 8, 8, dtype=torch.float64), torch.rand(2, 3, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(model.log_likelihood(y, x), model.flow.log_prob(y - x, x))
    torch.manual_seed(7)
    s = model.sample(x, temperature=0.0)
    torch.testing.assert_close(s - x, model.flow.sample(x, temperature=0.0))
    rebuilt = build_model(**model.config).double()
    rebuilt.load_state_dict(model.state_dict())
    torch.testing.assert_close(rebuilt.log_likelihood(y, x), model.log_likelihood(y, x))


def test_sr_residual_flow_models_v_minus_the_bicubic_upsampled_x():
    """8-bit y given a smaller x: the flow models v - 1/2 - a (bicubic(x) - 1/2), a translation of Jacobian 1,
    so log p(y|x) is the flow's density of that residual less log q, and a T = 0 decode is the upsampled x plus
    the flow's own T = 0 decode (SR's residual learning)."""
    import torch.nn.functional as F

    model = build_model("cnf", "image8", (3, 8, 8), (3, 4, 4), residual=1.0, **TINY["cnf"]).double()
    randomize(model, 0.1, seed=5)
    y = torch.randint(0, 256, (2, 3, 8, 8)).double()
    x = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    up = F.interpolate(x, size=(8, 8), mode="bicubic", align_corners=False)
    torch.manual_seed(11)
    got = model.log_likelihood(y, x)
    torch.manual_seed(11)
    v, log_q = model.dequantizer.dequantize(y, x)
    torch.testing.assert_close(got, model.flow.log_prob(v - up, x) - log_q)
    # the same model without the translation scores v itself: the offset is really applied
    plain = build_model("cnf", "image8", (3, 8, 8), (3, 4, 4), **TINY["cnf"]).double()
    plain.load_state_dict(model.state_dict())
    torch.manual_seed(11)
    assert not torch.allclose(plain.log_likelihood(y, x), got)
    s = model.sample(x, temperature=0.0)
    expected = torch.clamp(torch.floor((model.flow.sample(x, temperature=0.0) + up) * 256), 0, 255)
    torch.testing.assert_close(s, expected)
    # test-time sizes: x of any grid is resized to y's (here 16x16 from 8x8)
    assert model.sample(torch.rand(1, 3, 8, 8, dtype=torch.float64), 0.0).shape == (1, 3, 16, 16)
    rebuilt = build_model(**model.config).double()
    rebuilt.load_state_dict(model.state_dict())
    torch.manual_seed(11)
    torch.testing.assert_close(rebuilt.log_likelihood(y, x), got)


@pytest.mark.parametrize("family,target,x_shape", [("cnf", "image8", (1, 4, 4)), ("cnf", "continuous", (3, 4, 4)),
                                                     ("factorized", "continuous", (3, 8, 8)),
                                                     ("cnf", "binary", (1, 8, 8))])
def test_residual_is_rejected_where_it_means_nothing(family, target, x_shape):
    opts = {} if family == "factorized" else {"levels": 1, "steps": 1}
    with pytest.raises(ValueError, match="residual"):
        build_model(family, target, (3, 8, 8), x_shape, residual=1.0, hidden=8, **opts)


@pytest.mark.parametrize("family,target", [("cnf", "image8"), ("cnf", "binary"), ("cnf", "categorical"),
                                           ("cnf", "continuous"), ("cglow", "continuous")])
def test_batched_predict_equals_the_loop_of_samples_with_the_same_seed(family, target):
    """Seeded equality: the batched passes draw each sample's noise in the order a loop of `sample` calls
    draws it, so with one seed they decode the very same samples (float64: rounding far below 1e-9)."""
    torch.manual_seed(0)
    model, y_shape, x_shape = _build(family, target, levels=2, steps=2)
    model.double()
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(2, *x_shape, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        model.nll(_data(target, y_shape, gen=gen).double(), x)
    _perturb(model, 0.05)
    model.eval()
    n = 5
    torch.manual_seed(7)
    draws = [model.sample(x, 0.9) for _ in range(n)]
    if target == "categorical":
        draws = [torch.nn.functional.one_hot(d[:, 0].long(), K).permute(0, 3, 1, 2).double() for d in draws]
    stack = torch.stack(draws)
    assert not torch.equal(stack[0], stack[1]), "draws should differ"
    mean, std = stack.mean(0), stack.var(0, unbiased=False).sqrt()
    for max_elements in (10 ** 9, 1):  # every draw in one pass; one draw per pass
        torch.manual_seed(7)
        out = model.predict(x, n_samples=n, temperature=0.9, max_batch_elements=max_elements)
        torch.testing.assert_close(out["mean"], mean, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(out["std"], std, rtol=1e-6, atol=1e-6)


def test_predict_encodes_x_once_and_bounds_every_pass():
    torch.manual_seed(0)
    model, y_shape, x_shape = _build("cnf", "image8", levels=2, steps=1)
    x = torch.rand(2, *x_shape)
    encoder_calls, pass_batches = [], []
    model.flow.encoder.register_forward_hook(lambda m, i, o: encoder_calls.append(i[0].shape[0]))
    decode = model.flow.sample_from
    model.flow.sample_from = lambda conds, t, noise=None: pass_batches.append(conds[0].shape[0]) or decode(conds, t,
                                                                                                          noise)
    d = x.shape[0] * math.prod(y_shape)  # y elements of one draw of the batch
    out = model.predict(x, n_samples=5, max_batch_elements=2 * d)
    assert encoder_calls == [2], "h = g(x) should be computed once per predict, not once per sample"
    assert pass_batches == [4, 4, 2], "passes of at most 2 draws of the batch of 2"
    assert out["mean"].shape == (2, *y_shape)
    with pytest.raises(ValueError, match="max_batch_elements"):
        model.predict(x, n_samples=2, max_batch_elements=0)


@pytest.mark.parametrize("target", ["continuous", "categorical"])
def test_predict_leaves_overflowing_draws_out_of_the_mean(target):
    """A draw with a non-finite value (float32 overflow in an inverse) is dropped from its image's mean and std;
    ``draws`` counts what is left, and an image whose every draw overflowed gets NaN and ``draws == 0``."""
    torch.manual_seed(0)
    model, y_shape, x_shape = _build("cnf", target, levels=1, steps=1)
    model.eval()
    x = torch.rand(2, *x_shape)
    n = 4
    torch.manual_seed(3)
    clean = [model.sample(x, 0.8) for _ in range(n)]
    broken = {(1, 0), (2, 0), (1, 1), (2, 1), (3, 1)}  # (draw, image): image 1 keeps only its first draw
    passes = model._sample_passes

    def overflowing(*args):
        done = 0
        for k, s in passes(*args):  # pass-major rows: draw j of image i is row j * 2 + i
            s = s.clone()
            for j in range(k):
                for i in range(2):
                    if (done + j, i) in broken:
                        s[j * 2 + i, 0, 0, 0] = float("nan") if i else float("inf")
            done += k
            yield k, s

    model._sample_passes = overflowing
    for max_elements in (10 ** 9, 1):
        torch.manual_seed(3)
        out = model.predict(x, n_samples=n, temperature=0.8, max_batch_elements=max_elements)
        assert out["draws"].tolist() == [2, 1]
        for i, kept in ((0, [0, 3]), (1, [0])):
            draws = [clean[j][i] for j in kept]
            if target == "categorical":
                draws = [torch.nn.functional.one_hot(d[0].long(), K).permute(2, 0, 1).float() for d in draws]
            torch.testing.assert_close(out["mean"][i], torch.stack(draws).mean(0))
        assert torch.isfinite(out["mean"]).all() and torch.isfinite(out["std"]).all()
    broken |= {(j, 1) for j in range(n)}
    out = model.predict(x, n_samples=n, temperature=0.8)
    assert out["draws"].tolist() == [2, 0] and torch.isnan(out["mean"][1]).all()


def test_cglow_defaults_to_the_papers_priors_and_records_them():
    from flowlib.priors import DiagonalGaussian, SplitPrior

    model = build_model("cglow", "binary", (1, 8, 8), (3, 8, 8), **{**TINY["cglow"], "levels": 2})
    assert model.config["priors"] == "unconditional" and model.config["actnorm_bound"] == 1.0
    assert isinstance(model.flow.prior, DiagonalGaussian)
    assert all(isinstance(p, SplitPrior) for p in model.flow.split_priors)
    assert all(m.scale_bound == 1.0 for m in model.modules() if type(m).__name__ == "ConditionalActNorm")


def test_a_cglow_checkpoint_from_before_the_priors_option_loads_as_conditional(tmp_path):
    """Checkpoints saved before ``priors`` / ``actnorm_bound`` existed had conditional priors and an unbounded
    actnorm log-scale; their configs lack both keys and must rebuild that model, not today's default."""
    from flowlib.checkpoint import load_model, save_checkpoint
    from flowlib.priors import ConditionalPrior, ConditionalSplitPrior

    torch.manual_seed(0)
    opts = {**TINY["cglow"], "levels": 2, "steps": 2}
    model = _perturb(build_model("cglow", "binary", (1, 8, 8), (3, 8, 8), priors="conditional", actnorm_bound=0,
                                 **opts), 0.1, seed=1).eval()
    path = save_checkpoint(tmp_path / "model.pt", model)
    ckpt = torch.load(path, weights_only=False)
    ckpt["config"] = {k: v for k, v in ckpt["config"].items() if k not in ("priors", "actnorm_bound")}
    torch.save(ckpt, path)

    loaded = load_model(path).eval()  # strict: the unconditional priors' parameters would not match
    assert loaded.config["priors"] == "conditional" and loaded.config["actnorm_bound"] == 0
    assert isinstance(loaded.flow.prior, ConditionalPrior)
    assert all(isinstance(p, ConditionalSplitPrior) for p in loaded.flow.split_priors)
    assert all(m.scale_bound is None for m in loaded.modules() if type(m).__name__ == "ConditionalActNorm")
    gen = torch.Generator().manual_seed(3)
    y, x = _data("binary", (1, 8, 8), 3, gen), torch.rand(3, 3, 8, 8, generator=gen)
    torch.manual_seed(5)
    expected = model.log_likelihood(y, x)
    torch.manual_seed(5)
    torch.testing.assert_close(loaded.log_likelihood(y, x), expected, rtol=0, atol=0)
    # ... while a new model saved without naming the options reloads as the paper's c-Glow.
    fresh = build_model("cglow", "binary", (1, 8, 8), (3, 8, 8), **opts)
    again = load_model(save_checkpoint(tmp_path / "fresh.pt", fresh))
    assert again.config["priors"] == "unconditional" and type(again.flow.prior) is type(fresh.flow.prior)
