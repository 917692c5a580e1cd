r"""Factorized likelihood baselines ``p(y|x) = \prod_i p(y_i | \theta_i(x))`` sharing the flows' encoders.

Each baseline is ``h = g(x)`` (RRDB for super-resolution, VGG for DRIVE, c-Glow's coupling feature network
otherwise), resampled to ``y``'s resolution and concatenated with ``x``, then a small convolutional head that
outputs per-pixel parameters ``\theta``. This is the "likelihood baseline ... the exact same architecture as
the flow but run a feedforward model" of Winkler et al. 2019, sec. 5.1 and 5.2. Every baseline exposes
``nll``, ``log_likelihood``, ``sample(x, temperature)`` and ``moments(x, temperature) -> (mean, std)``.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .bijection import sum_except_batch
from .encoders.conditioning import CouplingFeatureNetwork
from .encoders.rrdb import RRDBEncoder
from .encoders.vgg import VGGEncoder

__all__ = [
    "DiscretizedLogistic", "WeightedBernoulli", "DiagonalGaussian", "Categorical", "FactorizedBaseline",
    "build_baseline", "count_parameters", "BASELINES", "BASELINE_ENCODERS",
]

BASELINE_ENCODERS = ("rrdb", "vgg", "conditioning", "none")
ENCODER_DEFAULTS: dict[str, Any] = {"encoder_blocks": 2, "encoder_growth": 16, "context_channels": 32,
                                    "encoder_width": 32, "encoder_levels": 2}


def count_parameters(module: nn.Module) -> int:
    """Number of trainable scalars of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _resample(t: Tensor, size) -> Tensor:
    if tuple(t.shape[-2:]) == tuple(size):
        return t
    return F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False)


def _make_encoder(name: str, x_channels: int, opts: dict[str, Any]) -> tuple[Optional[nn.Module], int]:
    """The encoder ``g`` and the channel count of its (concatenated) features."""
    if name == "rrdb":
        enc = RRDBEncoder(x_channels, opts["context_channels"], opts["encoder_blocks"], opts["encoder_growth"])
        return enc, enc.out_channels
    if name == "vgg":
        enc = VGGEncoder(x_channels, opts["encoder_width"], opts["encoder_levels"])
        return enc, enc.out_channels * opts["encoder_levels"]
    if name == "conditioning":
        enc = CouplingFeatureNetwork(x_channels, opts["encoder_width"])
        # c-Glow zero-initialises this net because its output is added inside a flow; as the only feature
        # extractor of a feed-forward model a zero output would block every gradient to the layers below it.
        last = enc.net[-1]
        nn.init.kaiming_uniform_(last.weight, a=math.sqrt(5))
        nn.init.uniform_(last.bias, -0.01, 0.01)
        return enc, enc.out_channels
    return None, 0


class FactorizedBaseline(nn.Module):
    r"""Feed-forward ``\theta(x)`` on ``y``'s grid and a factorized distribution over ``y`` given ``\theta``.

    .. math:: \log p(y|x) = \sum_i \log p(y_i | \theta_i(x)), \qquad
              \theta(x) = \mathrm{head}([\mathrm{resample}(g(x)), \mathrm{resample}(x)])

    Subclasses set ``params_per_channel`` and implement the distribution. Source: Winkler et al. 2019, sec. 5
    ("factorized baseline ... comparable architectures and parameter budget").

    Args:
        y_shape: ``(C, H, W)`` of ``y`` (the grid; ``H``/``W`` may differ at call time).
        x_shape: ``(Cx, Hx, Wx)`` of ``x``.
        encoder: one of ``BASELINE_ENCODERS``; hidden: width of the head.
    """

    params_per_channel = 1
    name = ""
    networks = ("encoder", "head")  # see flowlib.precision

    def __init__(self, y_shape, x_shape, encoder: str = "rrdb", hidden: int = 32, **encoder_options: Any):
        super().__init__()
        if encoder not in BASELINE_ENCODERS:
            raise ValueError(f"build_baseline: option encoder={encoder!r} not in {BASELINE_ENCODERS}")
        unknown = sorted(set(encoder_options) - set(ENCODER_DEFAULTS))
        if unknown:
            raise ValueError(f"build_baseline: unknown option(s) {unknown}; allowed: "
                             f"{sorted(ENCODER_DEFAULTS) + ['encoder', 'hidden', 'param_budget']}")
        if int(hidden) < 1:
            raise ValueError(f"build_baseline: option hidden must be >= 1, got {hidden}")
        self.y_shape = tuple(int(s) for s in y_shape)
        self.x_shape = tuple(int(s) for s in x_shape)
        opts = {**ENCODER_DEFAULTS, **encoder_options}
        self.encoder, feat = _make_encoder(encoder, self.x_shape[0], opts)
        out = self.params_per_channel * self.out_channels
        self.head = nn.Sequential(
            nn.Conv2d(feat + self.x_shape[0], hidden, 3, padding=1), nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(),
            nn.Conv2d(hidden, out, 1),
        )
        self.config: dict[str, Any] = {"distribution": self.name, "y_shape": list(self.y_shape),
                                       "x_shape": list(self.x_shape), "encoder": encoder, "hidden": int(hidden),
                                       **{k: opts[k] for k in sorted(encoder_options)}}

    @property
    def out_channels(self) -> int:
        return self.y_shape[0]

    def parameters_of(self, x: Tensor, size) -> Tensor:
        """``\\theta(x)`` on the grid ``size = (H, W)``: ``(B, params_per_channel, C, H, W)``."""
        feats = [_resample(x, size)]
        if self.encoder is not None:
            h = self.encoder(x)
            feats += [_resample(t, size) for t in (h if isinstance(h, (list, tuple)) else [h])]
        theta = self.head(torch.cat(feats, dim=1))
        return theta.view(x.shape[0], self.params_per_channel, self.out_channels, *theta.shape[-2:])

    def grid_of(self, x: Tensor) -> tuple[int, int]:
        """``y``'s grid for an ``x`` of any size: the build-time ratio of ``y`` to ``x`` (SR: the scale factor)."""
        (_, hy, wy), (_, hx, wx) = self.y_shape, self.x_shape
        return round(x.shape[-2] * hy / hx), round(x.shape[-1] * wy / wx)

    def _theta(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        return self.parameters_of(x, self.grid_of(x) if y is None else y.shape[-2:])

    # subclasses: elementwise log-probabilities from theta
    def log_prob_elements(self, y: Tensor, theta: Tensor) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def log_likelihood(self, y: Tensor, x: Tensor) -> Tensor:
        """Exact normalised ``\\log p(y|x)`` in nats, shape ``(B,)``."""
        return sum_except_batch(self.log_prob_elements(y, self._theta(x, y)))

    def nll(self, y: Tensor, x: Tensor) -> Tensor:
        """Training objective in nats, shape ``(B,)`` (the negative log-likelihood unless stated otherwise)."""
        return -self.log_likelihood(y, x)


class DiscretizedLogistic(FactorizedBaseline):
    r"""Discretized logistic over the 256 values of 8-bit ``y`` (Salimans et al. 2017, sec. 2.1).

    With ``\tilde y = y / 127.5 - 1`` and bin half-width ``\delta = 1/255``:

    .. math:: P(y) = \sigma\!\left(\tfrac{\tilde y + \delta - \mu}{s}\right)
                     - \sigma\!\left(\tfrac{\tilde y - \delta - \mu}{s}\right),

    with the lowest bin extended to ``-\infty`` and the highest to ``+\infty`` so the 256 probabilities sum to 1.
    Where the difference underflows, the density at the bin centre times ``2\delta`` is used (as in PixelCNN++).
    Source: Salimans et al. 2017; Winkler et al. 2019, sec. 5.1 (factorized SR baseline).
    """

    params_per_channel = 2
    name = "logistic"
    _min_log_scale = -7.0

    def _mu_log_s(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        return theta[:, 0], theta[:, 1].clamp_min(self._min_log_scale)

    def log_prob_elements(self, y: Tensor, theta: Tensor) -> Tensor:
        mu, log_s = self._mu_log_s(theta)
        yt = y / 127.5 - 1.0
        inv_s = torch.exp(-log_s)
        plus_in = inv_s * (yt - mu + 1.0 / 255.0)
        min_in = inv_s * (yt - mu - 1.0 / 255.0)
        log_cdf_plus = plus_in - F.softplus(plus_in)  # log sigma(plus_in), for y = 0
        log_one_minus_cdf_min = -F.softplus(min_in)  # log(1 - sigma(min_in)), for y = 255
        cdf_delta = torch.sigmoid(plus_in) - torch.sigmoid(min_in)
        mid_in = inv_s * (yt - mu)
        log_pdf_mid = mid_in - log_s - 2.0 * F.softplus(mid_in) + math.log(2.0 / 255.0)
        log_delta = torch.where(cdf_delta > 1e-5, torch.log(cdf_delta.clamp_min(1e-12)), log_pdf_mid)
        return torch.where(y < 0.5, log_cdf_plus, torch.where(y > 254.5, log_one_minus_cdf_min, log_delta))

    def sample(self, x: Tensor, temperature: float = 1.0) -> Tensor:
        """Integer values ``0..255``: a logistic draw with scale ``T s``, binned."""
        mu, log_s = self._mu_log_s(self._theta(x))
        u = torch.rand_like(mu).clamp(1e-6, 1 - 1e-6)
        yt = mu + temperature * torch.exp(log_s) * (torch.log(u) - torch.log1p(-u))
        return torch.round((yt + 1.0) * 127.5).clamp(0, 255)

    def moments(self, x: Tensor, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
        r"""Exact mean and std over the 256 bins: ``E[y] = \sum_{k=1}^{255} P(y \ge k)``,
        ``E[y^2] = \sum_{k=1}^{255} (2k - 1) P(y \ge k)``."""
        mu, log_s = self._mu_log_s(self._theta(x))
        s = torch.exp(log_s) * temperature
        m1, m2 = torch.zeros_like(mu), torch.zeros_like(mu)
        for k in range(1, 256):  # 255 elementwise passes instead of a (..., 256) tensor: full-size images fit
            edge = (k - 0.5) / 127.5 - 1.0
            if temperature > 0:
                tail = torch.sigmoid((mu - edge) / s)
            else:
                tail = (mu > edge).to(mu.dtype)
            m1 = m1 + tail
            m2 = m2 + (2 * k - 1) * tail
        return m1, (m2 - m1 ** 2).clamp_min(0).sqrt()


class DiagonalGaussian(FactorizedBaseline):
    r"""Per-pixel Gaussian ``y_i \sim N(\mu_i(x), \sigma_i(x)^2)`` for continuous targets.

    .. math:: \log p(y|x) = \sum_i -\tfrac12 \left(\tfrac{y_i - \mu_i}{\sigma_i}\right)^2 - \log\sigma_i
              - \tfrac12 \log 2\pi

    Source: the factorized counterpart of a conditional flow (Winkler et al. 2019, sec. 2.2).
    """

    params_per_channel = 2
    name = "gaussian"

    def log_prob_elements(self, y: Tensor, theta: Tensor) -> Tensor:
        mu, log_sigma = theta[:, 0], theta[:, 1].clamp(-9.0, 9.0)
        return -0.5 * ((y - mu) * torch.exp(-log_sigma)) ** 2 - log_sigma - 0.5 * math.log(2 * math.pi)

    def sample(self, x: Tensor, temperature: float = 1.0) -> Tensor:
        theta = self._theta(x)
        mu, sigma = theta[:, 0], torch.exp(theta[:, 1].clamp(-9.0, 9.0))
        return mu + temperature * sigma * torch.randn_like(mu)

    def moments(self, x: Tensor, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
        theta = self._theta(x)
        return theta[:, 0], temperature * torch.exp(theta[:, 1].clamp(-9.0, 9.0))


class WeightedBernoulli(FactorizedBaseline):
    r"""Weighted Bernoulli of Winkler et al. 2019, eq. 9, with its normaliser.

    .. math:: L = \prod_j \frac{p_j^{\beta y_j} (1 - p_j)^{(1 - \beta)(1 - y_j)}}{p_j^{\beta} + (1 - p_j)^{1 - \beta}},
              \qquad p_j = \sigma(\ell_j(x))

    Summing the numerator over ``y_j \in \{0, 1\}`` gives the denominator, so ``L`` is a normalised
    distribution with ``P(y_j = 1) = p_j^\beta / (p_j^\beta + (1 - p_j)^{1-\beta})``. ``nll`` is the weighted
    cross-entropy (the numerator only: "the numerator of this likelihood is used as a loss function");
    ``log_likelihood`` includes the normaliser ("we report likelihood values including the normalizer").
    ``beta`` weights the positive (vessel) term. The paper's "class balancing constant set to ~10%" is the
    vessel fraction; balancing it (as in HED, and as "cheaper to overdilate" in sec. 5.2 implies) weights the
    positives by ``beta = 0.9``, the default.
    """

    params_per_channel = 1
    name = "bernoulli"

    def __init__(self, y_shape, x_shape, beta: float = 0.9, **kwargs: Any):
        super().__init__(y_shape, x_shape, **kwargs)
        if not 0.0 < float(beta) < 1.0:
            raise ValueError(f"build_baseline: option beta must be in (0, 1), got {beta}")
        self.beta = float(beta)
        self.config["beta"] = self.beta

    def _terms(self, theta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        logit = theta[:, 0]
        log_on = self.beta * F.logsigmoid(logit)  # log p^beta
        log_off = (1.0 - self.beta) * F.logsigmoid(-logit)  # log (1-p)^(1-beta)
        return log_on, log_off, torch.logaddexp(log_on, log_off)

    def log_prob_elements(self, y: Tensor, theta: Tensor) -> Tensor:
        log_on, log_off, log_norm = self._terms(theta)
        return y * log_on + (1 - y) * log_off - log_norm

    def weighted_cross_entropy(self, y: Tensor, x: Tensor) -> Tensor:
        """``-\\sum_j [\\beta y_j \\log p_j + (1 - \\beta)(1 - y_j) \\log(1 - p_j)]``, shape ``(B,)``."""
        log_on, log_off, _ = self._terms(self._theta(x, y))
        return -sum_except_batch(y * log_on + (1 - y) * log_off)

    def nll(self, y: Tensor, x: Tensor) -> Tensor:
        return self.weighted_cross_entropy(y, x)

    def probability(self, x: Tensor, temperature: float = 1.0) -> Tensor:
        """Normalised ``P(y_j = 1 | x)`` with the logit of that probability divided by ``temperature``."""
        log_on, log_off, _ = self._terms(self._theta(x))
        logit = log_on - log_off
        if temperature <= 0:
            return (logit > 0).to(logit.dtype)
        return torch.sigmoid(logit / temperature)

    def sample(self, x: Tensor, temperature: float = 1.0) -> Tensor:
        return torch.bernoulli(self.probability(x, temperature))

    def moments(self, x: Tensor, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
        p = self.probability(x, temperature)
        return p, (p * (1 - p)).sqrt()


class Categorical(FactorizedBaseline):
    r"""Per-pixel categorical over ``K`` classes, ``y_i \sim \mathrm{Cat}(\mathrm{softmax}(\ell_i(x)))``.

    .. math:: \log p(y|x) = \sum_i \ell_{i, y_i} - \log \sum_k e^{\ell_{i,k}}

    ``y`` holds class indices ``(B, 1, H, W)``; ``moments`` returns class probabilities ``(B, K, H, W)``.
    Source: the factorized (FCN-style) baseline of Lu & Huang 2020, sec. 5.3.
    """

    name = "categorical"

    def __init__(self, y_shape, x_shape, num_classes: int = 2, **kwargs: Any):
        if int(num_classes) < 2:
            raise ValueError(f"build_baseline: option num_classes must be >= 2, got {num_classes}")
        if int(y_shape[0]) != 1:
            raise ValueError(f"Categorical: y holds class indices, so y_shape[0] must be 1, got {tuple(y_shape)}")
        self.num_classes = int(num_classes)
        super().__init__(y_shape, x_shape, **kwargs)
        self.config["num_classes"] = self.num_classes

    @property
    def out_channels(self) -> int:
        return self.num_classes

    def log_prob_elements(self, y: Tensor, theta: Tensor) -> Tensor:
        logp = F.log_softmax(theta[:, 0], dim=1)  # (B, K, H, W)
        return logp.gather(1, y.long())

    def probabilities(self, x: Tensor, temperature: float = 1.0) -> Tensor:
        logits = self._theta(x)[:, 0]
        if temperature <= 0:
            return F.one_hot(logits.argmax(1), self.num_classes).permute(0, 3, 1, 2).to(logits.dtype)
        return F.softmax(logits / temperature, dim=1)

    def sample(self, x: Tensor, temperature: float = 1.0) -> Tensor:
        p = self.probabilities(x, temperature)
        b, k, h, w = p.shape
        flat = p.permute(0, 2, 3, 1).reshape(-1, k)
        return torch.multinomial(flat, 1).view(b, h, w, 1).permute(0, 3, 1, 2).to(p.dtype)

    def moments(self, x: Tensor, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
        p = self.probabilities(x, temperature)
        return p, (p * (1 - p)).sqrt()


BASELINES = {"logistic": DiscretizedLogistic, "bernoulli": WeightedBernoulli, "gaussian": DiagonalGaussian,
             "categorical": Categorical}


def build_baseline(distribution: str, y_shape, x_shape, encoder: str = "rrdb", hidden: int = 32,
                   param_budget: Optional[int] = None, **options: Any) -> FactorizedBaseline:
    """Build a factorized baseline: ``distribution in {"logistic", "bernoulli", "gaussian", "categorical"}``.

    ``options``: ``beta`` (bernoulli), ``num_classes`` (categorical), and the encoder's ``encoder_blocks``,
    ``encoder_growth``, ``context_channels`` (RRDB), ``encoder_width`` (VGG, conditioning), ``encoder_levels``
    (VGG). ``param_budget``: choose the head width ``hidden`` whose total parameter count is closest to the
    budget, matching the baseline to a flow as in Winkler et al. 2019, sec. 5.1 ("comparable architectures
    and parameter budget"); the chosen width is in ``config["hidden"]``.
    """
    if distribution not in BASELINES:
        raise ValueError(f"build_baseline: distribution {distribution!r} not in {tuple(BASELINES)}")
    cls = BASELINES[distribution]
    if param_budget is None:
        return cls(y_shape, x_shape, encoder=encoder, hidden=hidden, **options)
    if int(param_budget) < 1:
        raise ValueError(f"build_baseline: option param_budget must be >= 1, got {param_budget}")

    def size(width: int) -> int:
        return count_parameters(cls(y_shape, x_shape, encoder=encoder, hidden=width, **options))

    lo, hi = 1, 1
    while size(hi) < param_budget and hi < 4096:
        lo, hi = hi, hi * 2
    while hi - lo > 1:  # count is increasing in the width: bisect
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if size(mid) < param_budget else (lo, mid)
    best = min((lo, hi), key=lambda w: abs(size(w) - param_budget))
    return cls(y_shape, x_shape, encoder=encoder, hidden=best, **options)
