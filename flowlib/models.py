r"""``build_model``: structured prediction models ``p(y|x)`` for every target type, the pipeline's one entry point.

A :class:`StructuredModel` wraps either a conditional flow (``"cnf"``, ``"cglow"``) with the dequantizer its
discrete target needs, or a factorized baseline (``"factorized"``). All share one interface: ``nll`` (training
objective), ``log_likelihood`` (reporting), ``num_dims``, ``sample``, ``predict`` and ``config`` (see
docs/architecture.md). Prediction is the sample mean of Lu & Huang 2020, sec. 4.3,

.. math:: \hat y = \frac{1}{N}\sum_{n=1}^{N} y^{(n)}, \qquad y^{(n)} \sim p(y|x),

rounded for binary and 8-bit targets, and the most frequent class for categorical targets.

``MODEL_OPTIONS`` declares, per family, every option ``build_model`` accepts (type, allowed values, meaning);
``pipelines.params`` validates params.yaml's ``model`` sections against the same declaration.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .baselines import BASELINE_ENCODERS, build_baseline, count_parameters
from .dequantize import DEQUANTIZATIONS, build_dequantizer, quantize
from .flows import CGLOW_DEFAULTS, CGLOW_PRIORS, COUPLINGS, ENCODERS, build_flow
from .layout import to_layout
from .subnets import SUBNETS

__all__ = ["StructuredModel", "FlowModel", "FactorizedModel", "build_model", "parameter_counts", "upgrade_config",
           "Option", "MODEL_OPTIONS", "FAMILIES", "TARGETS"]

FAMILIES = ("cnf", "cglow", "factorized")
TARGETS = ("image8", "binary", "categorical", "continuous")
# Quantization levels per element of the flow's y (categorical: each one-hot channel is binary).
QUANTIZATION_LEVELS = {"image8": 256, "binary": 2, "categorical": 2}
# Dequantizations each discrete target admits, the first being the default. Binary CNF: Winkler et al. 2019,
# sec. 3.2 ("CNF uniform" is their Table 3 ablation); 8-bit SR: uniform noise (sec. 5.1); c-Glow: uniform.
DEQUANTIZATION_CHOICES = {"image8": ("uniform", "variational"), "binary": ("binary", "uniform", "variational"),
                          "categorical": ("uniform", "variational", "binary")}
BASELINE_OF = {"image8": "logistic", "binary": "bernoulli", "categorical": "categorical", "continuous": "gaussian"}
# predict's default bound on y elements decoded in one pass (samples x batch x C x H x W): e.g. 85 samples of a
# 3x64x64 batch of 1, or one 1024x1024 DRIVE image.
PREDICT_BATCH_ELEMENTS = 2 ** 20
DEFAULT_BASELINE_ENCODER = {"image8": "rrdb", "binary": "vgg", "categorical": "conditioning",
                            "continuous": "conditioning"}


# ------------------------------------------------------------------------------------------- the options schema


@dataclass(frozen=True)
class Option:
    """One keyword option of :func:`build_model`: the values it takes and what it sets.

    ``kind`` is ``int``, ``float``, ``str``, ``bool`` or ``dict`` (a nested mapping whose keys are ``fields``);
    ``choices`` lists the allowed values of a string option; ``positive`` asks a number to be > 0. The defaults
    are the builders' (``flowlib.flows``, ``flowlib.baselines``), applied when the option is absent.
    """

    kind: type
    doc: str
    choices: tuple = ()
    positive: bool = False
    fields: Optional[Mapping[str, "Option"]] = None


def _encoder_options(*, scales: bool) -> dict[str, Option]:
    opts = {"blocks": Option(int, "RRDB blocks", positive=True),
            "growth": Option(int, "RRDB growth channels", positive=True),
            "context_channels": Option(int, "channels of the RRDB features h", positive=True),
            "width": Option(int, "channels of the VGG (and c-Glow feature net) blocks", positive=True)}
    if scales:
        opts["scales"] = Option(int, "VGG outputs, one per resolution (the flows' VGG has one per flow level)",
                                positive=True)
    return opts


# `encoder_options` keys -> the flat option names of build_flow / build_baseline (flat names are accepted too)
ENCODER_OPTION_NAMES = {"blocks": "encoder_blocks", "growth": "encoder_growth", "context_channels": "context_channels",
                        "width": "encoder_width", "scales": "encoder_scales"}


def _with_flat(encoder_options: Mapping[str, Option]) -> dict[str, Option]:
    return {ENCODER_OPTION_NAMES[k]: Option(o.kind, f"{o.doc} (flat form of encoder_options.{k})", o.choices,
                                            o.positive) for k, o in encoder_options.items()}


_CNF_ENCODER = _encoder_options(scales=False)
_FACTORIZED_ENCODER = _encoder_options(scales=True)
_FLOW_COMMON = {
    "levels": Option(int, "flow levels L (squeeze, K steps, split)", positive=True),
    "steps": Option(int, "flow steps K per level", positive=True),
    "hidden": Option(int, "width of the coupling networks (and of the conditional prior networks)", positive=True),
}
_FLOW_DISCRETE = {
    "dequantization": Option(str, "dequantizer of a discrete target (default per target)", DEQUANTIZATIONS),
    "dequantizer_steps": Option(int, "coupling steps of the variational/binary dequantizer (2)", positive=True),
    "dequantizer_hidden": Option(int, "width of the dequantizer (= hidden)", positive=True),
    "num_classes": Option(int, "classes K of a categorical target (required there)", positive=True),
    "residual": Option(float, "the flow models y - residual * x: continuous y with x of y's shape, or 8-bit y "
                              "with x of y's channels (resized to y's grid, bicubic: SR's residual to the "
                              "upsampled input)"),
    "coupling": Option(str, "coupling layer", COUPLINGS),
    "subnet": Option(str, "coupling subnet", SUBNETS),
}
#: Every option ``build_model`` accepts, per family: the one declaration that ``pipelines.params`` validates
#: ``params.yaml`` against. ``build_model`` refuses any other name, naming the allowed ones.
MODEL_OPTIONS: dict[str, dict[str, Option]] = {
    "cnf": {
        **_FLOW_COMMON,
        "encoder": Option(str, "encoder g(x) of the features h", ENCODERS),
        "encoder_options": Option(dict, "encoder sizes", fields=_CNF_ENCODER),
        **_FLOW_DISCRETE,
        "lu": Option(bool, "LU-parametrised 1x1 convolutions"),
        **_with_flat(_CNF_ENCODER),
    },
    "cglow": {
        **_FLOW_COMMON,
        "cond_hidden": Option(int, "sets cond_channels, cond_fc_width and coupling_cond_channels unless given",
                              positive=True),
        **_FLOW_DISCRETE,
        "cond_channels": Option(int, "conv width of the conditioning networks", positive=True),
        "cond_fc_width": Option(int, "fully connected width of the conditioning networks", positive=True),
        "coupling_cond_channels": Option(int, "width of the coupling's feature network on x", positive=True),
        "priors": Option(str, "split and top priors: 'unconditional' (default; the paper's c-Glow: Glow's learned "
                              "split prior on z_0 and learned top prior, no x) or 'conditional' (a variant, not "
                              "c-Glow: Winkler et al.'s conditional split priors and prior)", CGLOW_PRIORS),
        "actnorm_bound": Option(float, "S bounding the conditional actnorm log-scale, s = S tanh(r / S) (default 1, "
                                       "the authors' tanh); 0: unbounded (models saved before the bound)"),
    },
    "factorized": {
        "hidden": Option(int, "width of the head", positive=True),
        "encoder": Option(str, "encoder g(x) (default per target)", BASELINE_ENCODERS),
        "encoder_options": Option(dict, "encoder sizes", fields=_FACTORIZED_ENCODER),
        "beta": Option(float, "weighted Bernoulli exponent on the positive term (binary; eq. 9)", positive=True),
        "param_budget": Option(int, "choose hidden to match this parameter count", positive=True),
        "num_classes": Option(int, "classes K of a categorical target (required there)", positive=True),
        **_with_flat(_FACTORIZED_ENCODER),
    },
}
# Option names of checkpoints written before a rename -> today's, per family (factorized models called the
# number of VGG outputs `levels`, the word the flows use for flow levels).
_RENAMED = {"factorized": {"levels": "encoder_scales", "encoder_levels": "encoder_scales"}}
_RENAMED_ENCODER = {"factorized": {"levels": "scales"}}
# c-Glow options added after checkpoints were written, and the value that rebuilds what those were trained as:
# before `priors` existed every c-Glow had conditional split/top priors and an unbounded actnorm log-scale.
# Today's configs always record both (build_model writes the defaults in), so absence means an old checkpoint.
_CGLOW_BEFORE_PRIORS = {"priors": "conditional", "actnorm_bound": 0.0}


def check_options(family: str, options: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the first option (or ``encoder_options`` key) ``family`` does not take."""
    schema = MODEL_OPTIONS[family]
    for name, value in options.items():
        if name not in schema:
            takers = [f for f in FAMILIES if name in MODEL_OPTIONS[f]]
            hint = f" (an option of family {', '.join(map(repr, takers))})" if takers else ""
            raise ValueError(f"build_model: option {name} is not an option of family={family!r}{hint}; "
                             f"allowed: {', '.join(schema)}")
        fields = schema[name].fields
        if fields is not None and value is not None:
            if not isinstance(value, Mapping):
                raise ValueError(f"build_model: option {name} must be a mapping, got {type(value).__name__}")
            for key in value:
                if key not in fields:
                    raise ValueError(f"build_model: option {name}.{key} is not an option of family={family!r}; "
                                     f"allowed: {', '.join(fields)}")


def upgrade_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A checkpoint's ``config`` with option names from before a rename replaced by today's (else unchanged).

    So ``load_model`` rebuilds models saved by older code: factorized ``levels`` / ``encoder_levels`` /
    ``encoder_options.levels`` (VGG outputs) are ``encoder_scales`` / ``encoder_options.scales`` now; a c-Glow
    config without ``priors`` predates the option and rebuilds as trained: ``priors="conditional"``,
    ``actnorm_bound=0`` (unbounded), where a new ``build_model`` call without them gets the paper's c-Glow.
    """
    out = dict(config)
    family = out.get("family")
    if family == "cglow" and "priors" not in out:
        for key, value in _CGLOW_BEFORE_PRIORS.items():
            out.setdefault(key, value)
    for old, new in _RENAMED.get(family, {}).items():
        if old in out:
            out[new] = out.pop(old)
    nested = out.get("encoder_options")
    if isinstance(nested, Mapping):
        renamed = _RENAMED_ENCODER.get(family, {})
        out["encoder_options"] = {renamed.get(k, k): v for k, v in nested.items()}
    return out


def _flatten_encoder_options(options: dict[str, Any]) -> dict[str, Any]:
    opts = dict(options)
    nested = opts.pop("encoder_options", None) or {}
    for key, value in nested.items():
        flat = ENCODER_OPTION_NAMES[key]
        if flat in opts and opts[flat] != value:
            raise ValueError(f"build_model: encoder_options.{key}={value!r} conflicts with {flat}={opts[flat]!r}")
        opts[flat] = value
    return opts


class StructuredModel(nn.Module):
    """Common interface of every model ``build_model`` returns (docs/architecture.md)."""

    target: str = "continuous"
    config: dict

    def nll(self, y: Tensor, x: Tensor) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def log_likelihood(self, y: Tensor, x: Tensor) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def sample(self, x: Tensor, temperature: float = 1.0) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def forward(self, y: Tensor, x: Tensor) -> Tensor:
        """The training objective ``nll(y, x)``, so that DistributedDataParallel can wrap the model."""
        return self.nll(y, x)

    def num_dims(self, y: Tensor) -> int:
        """``D = C H W`` of the data-space target ``y`` (one sample), for bits/dim."""
        return int(y[0].numel())

    def _summarise(self, mean: Tensor, std: Tensor) -> dict[str, Tensor]:
        if self.target == "categorical":
            prediction = mean.argmax(dim=1, keepdim=True).to(mean.dtype)
        elif self.target == "binary":
            prediction = (mean > 0.5).to(mean.dtype)
        elif self.target == "image8":
            prediction = mean.round().clamp(0, 255)
        else:
            prediction = mean
        return {"mean": mean, "prediction": prediction, "std": std}

    @torch.inference_mode()
    def predict(self, x: Tensor, n_samples: int = 8, temperature: float = 1.0,
                max_batch_elements: int = PREDICT_BATCH_ELEMENTS) -> dict[str, Tensor]:
        r"""Sample-mean prediction (Lu & Huang 2020, sec. 4.3): ``mean``, ``prediction`` and ``std``.

        ``mean``: the per-pixel sample mean (binary: frequency of 1, i.e. the probability map; categorical:
        per-class frequencies ``(B, K, H, W)``); ``prediction``: rounded / argmax / the mean itself; ``std``:
        the per-pixel sample standard deviation (categorical: per class); ``draws``: ``(B,)`` how many of the
        ``n_samples`` draws of each image the mean is over.

        A draw with any non-finite value (the inverse of a contracting coupling, ``u_2 = v_2 / s``, can overflow
        float32 for a ``z`` in the tails of the prior) is left out of its image's mean and std rather than
        turning them into NaN; ``draws`` says how many remained (0: every draw overflowed, ``mean`` is NaN).

        The ``n_samples`` draws are batched: each pass decodes as many samples of the whole batch as fit in
        ``max_batch_elements`` elements of ``y`` (at least one sample per pass), so memory stays bounded and
        the cost per sample is that of a large batch rather than of ``n_samples`` small ones. At temperature 0
        every draw decodes the prior means, the same ``y``: one is decoded and stands for all ``n_samples``
        (``draws`` counts them all; ``std`` is 0). Runs under ``torch.inference_mode``.
        """
        if int(n_samples) < 1:
            raise ValueError(f"predict: n_samples must be >= 1, got {n_samples}")
        if int(max_batch_elements) < 1:
            raise ValueError(f"predict: max_batch_elements must be >= 1, got {max_batch_elements}")
        if float(temperature) == 0.0 and int(n_samples) > 1:
            out = self.predict(x, 1, 0.0, max_batch_elements)
            return {**out, "draws": out["draws"] * int(n_samples)}
        n, b = int(n_samples), x.shape[0]
        total = total_sq = None
        draws = torch.zeros(b, dtype=torch.long, device=x.device)
        for k, s in self._sample_passes(x, n, temperature, int(max_batch_elements)):
            s = s.reshape(k, b, *s.shape[1:])  # pass-major: draw j of the pass is rows j*B .. (j+1)*B - 1
            finite = torch.isfinite(s).flatten(2).all(2)  # (k, B): draws without overflow
            s = torch.where(finite.view(k, b, *[1] * (s.dim() - 2)), s, torch.zeros((), dtype=s.dtype,
                                                                                     device=s.device))
            if self.target == "categorical":
                s = F.one_hot(s[:, :, 0].long(), self.num_classes).permute(0, 1, 4, 2, 3).to(x.dtype)
                s = s * finite.view(k, b, 1, 1, 1).to(s.dtype)
            draws += finite.sum(0)
            part, part_sq = s.sum(0), (s * s).sum(0)
            total = part if total is None else total + part
            total_sq = part_sq if total_sq is None else total_sq + part_sq
        count = draws.to(total.dtype).view(b, *[1] * (total.dim() - 1))
        mean = total / count
        std = (total_sq / count - mean * mean).clamp_min(0).sqrt()
        return {**self._summarise(mean, std), "draws": draws}

    def _sample_passes(self, x: Tensor, n: int, temperature: float, max_elements: int):
        """Yield ``(k, samples)``: ``n`` draws in passes of ``k``, ``samples`` of shape ``(k B, ...)``.

        Generic form: ``x`` repeated ``k`` times through :meth:`sample`; flows override it to encode ``x`` once.
        """
        per_draw = max(1, x.shape[0] * self._sample_elements(x))
        done = 0
        while done < n:
            k = min(max(1, max_elements // per_draw), n - done)
            yield k, self.sample(x.repeat(k, *([1] * (x.dim() - 1))), temperature)
            done += k

    def _sample_elements(self, x: Tensor) -> int:
        """Elements of one sample of ``y`` given one ``x`` (sizes the passes of :meth:`predict`)."""
        return int(self.sample(x[:1], 0.0)[0].numel())


class FlowModel(StructuredModel):
    r"""A conditional flow on ``y`` (continuous) or on a dequantized, centred ``v`` (discrete targets).

    .. math:: \log P(y|x) \ge \mathbb{E}_{q(v|y,x)}\left[\log p(v - \tfrac12 \,|\, x) - \log q(v|y,x)\right]

    ``v`` lies in the unit scale of the dequantizer (8-bit: ``(y + u)/256``), so ``\log q`` already holds
    every rescaling's Jacobian; centring by ``1/2`` has Jacobian 1. Categorical ``y`` is one-hot encoded into
    ``K`` channels first (each a binary variable). With ``residual = a`` (continuous targets whose ``x`` has
    ``y``'s shape) the flow models ``y - a x``, c-Glow's residual form for denoising (Lu & Huang 2020, sec. 5.4,
    after Zhang et al. 2017): a translation by ``a x`` has Jacobian 1, so ``log p(y|x) = log p_flow(y - a x | x)``.
    For 8-bit ``y`` (``x`` on [0, 1] with ``y``'s channels) the translation acts on the centred unit scale,

    .. math:: \log p(v|x) = \log p_{\text{flow}}\big(v - \tfrac12 - a\,(\uparrow\! x - \tfrac12) \,\big|\, x\big),

    with ``\uparrow x`` the bicubic resize of ``x`` to ``y``'s grid: for super-resolution the flow then models the
    residual to the bicubic upsampling (VDSR's residual learning, Kim et al. 2016; a choice of ours, Winkler et
    al. model ``v`` itself). Again Jacobian 1, so the bits/dim are those of ``y``.
    Sources: Winkler et al. 2019, sec. 2.1, 3.2 and 5; Lu & Huang 2020, sec. 4.2.
    """

    def __init__(self, flow: nn.Module, dequantizer: Optional[nn.Module], target: str, num_classes: Optional[int],
                 residual: Optional[float] = None):
        super().__init__()
        self.flow = flow
        self.dequantizer = dequantizer
        self.target = target
        self.num_classes = num_classes
        self.quantization_levels = QUANTIZATION_LEVELS.get(target)
        self.residual = float(residual) if residual else None
        # Layout y and x are brought to on entry; flowlib.layout.channels_last sets torch.channels_last.
        self.memory_format = torch.contiguous_format

    def _offset(self, x: Tensor, like: Tensor) -> Tensor | float:
        """The part of the flow's variable it does not model (0 unless ``residual``), on ``like``'s scale.

        Continuous ``y``: ``a x`` (``x`` of ``y``'s shape). 8-bit ``y``: ``a (resize(x) - 1/2)`` on the centred
        unit scale of ``v - 1/2``, ``x`` resized bicubically to ``like``'s grid where the grids differ.
        """
        if self.residual is None:
            return 0.0
        same_grid = x.shape[-2:] == like.shape[-2:]
        if x.shape[:2] != like.shape[:2] or (self.dequantizer is None and not same_grid):
            raise ValueError(f"{type(self).__name__}: residual={self.residual} needs x of y's "
                             f"{'channels' if self.dequantizer is not None else 'shape'}; got x "
                             f"{tuple(x.shape)} and y {tuple(like.shape)}")
        if self.dequantizer is None:
            return self.residual * x
        x = x.to(like.dtype)
        if not same_grid:
            x = F.interpolate(x, size=tuple(like.shape[-2:]), mode="bicubic", align_corners=False)
        return self.residual * (x - 0.5)

    def _flow_target(self, y: Tensor) -> Tensor:
        if self.target == "categorical":
            return F.one_hot(y[:, 0].long(), self.num_classes).permute(0, 3, 1, 2).to(y.dtype)
        return y

    def check_size(self, y: Tensor) -> None:
        """Raise ``ValueError`` naming ``y``'s shape unless the flow runs at that size.

        CNF: height and width multiples of ``2**levels``; c-Glow: its trained size.
        """
        if y.dim() != 4:
            raise ValueError(f"{type(self).__name__}: y must be (B, C, H, W), got shape {tuple(y.shape)}")
        self.flow.check_size(y.shape[-2:], f"y of shape {tuple(y.shape)}")

    def log_likelihood(self, y: Tensor, x: Tensor) -> Tensor:
        """Continuous ``y``: ``log p(y|x)``. Discrete: a one-sample estimate of the dequantization bound.

        Convolutional flows take any ``y`` whose height and width are multiples of ``2**levels``.
        """
        self.check_size(y)
        # x only: the dequantizer draws its noise in y's own layout (rand_like fills storage order), so the
        # draws do not depend on the model's layout; the flow brings v to its layout itself.
        x = to_layout(x, self.memory_format)
        if self.dequantizer is None:
            return self.flow.log_prob(y - self._offset(x, y), x)
        v, log_q = self.dequantizer.dequantize(self._flow_target(y), x)
        return self.flow.log_prob(v - 0.5 - self._offset(x, v), x) - log_q

    def nll(self, y: Tensor, x: Tensor) -> Tensor:
        """Negative ``log_likelihood`` (the negative dequantization bound for discrete targets), shape (B,)."""
        return -self.log_likelihood(y, x)

    @torch.inference_mode()
    def sample(self, x: Tensor, temperature: float = 1.0) -> Tensor:
        """``y ~ p(y|x)`` in data space: quantized (8-bit, binary), argmax of the one-hot channels (categorical).

        ``y``'s grid is ``x``'s times the build-time ratio ``y/x``; it must be a multiple of ``2**levels``.
        Runs under ``torch.inference_mode`` (the flow's own ``sample`` stays differentiable).
        """
        return self._to_data(self.flow.sample(x, temperature), x)

    def _to_data(self, v: Tensor, x: Tensor) -> Tensor:
        """A flow sample ``v`` (given ``x``) in data space."""
        v = v + self._offset(x, v)
        if self.dequantizer is None:
            return v
        v = v + 0.5
        if self.target == "categorical":
            return v.argmax(dim=1, keepdim=True).to(v.dtype)
        return quantize(v, self.quantization_levels)

    def _sample_elements(self, x: Tensor) -> int:
        c = self.num_classes if self.target == "categorical" else self.flow.y_shape[0]
        h, w = self.flow.y_size_of(x)
        return c * h * w

    def _sample_passes(self, x: Tensor, n: int, temperature: float, max_elements: int):
        """``h = g(x)`` once for all draws; each pass decodes ``k`` draws of the batch as one batch of ``k B``.

        The noise of each draw is drawn in turn, in the order :meth:`sample` draws it, so with the same seed
        the passes decode exactly the samples ``n`` calls of :meth:`sample` would (up to float rounding of
        the larger batch).
        """
        size = self.flow.y_size_of(x)
        conds = self.flow.conditions(x, size)
        per_pass = max(1, max_elements // max(1, x.shape[0] * self._sample_elements(x)))
        done = 0
        while done < n:
            k = min(per_pass, n - done)
            draws = [self.flow.noise(x.shape[0], size, temperature, x.dtype, x.device) for _ in range(k)]
            noise = [None if parts[0] is None else torch.cat(parts) for parts in zip(*draws)]
            rep = (lambda t: t) if k == 1 else (lambda t: t.repeat(k, *([1] * (t.dim() - 1))))
            v = self.flow.sample_from([rep(c) for c in conds], temperature, noise)
            yield k, self._to_data(v, rep(x))
            done += k


class FactorizedModel(StructuredModel):
    """A factorized baseline (flowlib.baselines) behind the StructuredModel interface.

    ``predict`` returns the baseline's exact per-pixel mean and std, the limit of the sample mean of
    Lu & Huang 2020, sec. 4.3 as ``N`` grows (``n_samples`` is then not needed).
    """

    def __init__(self, baseline: nn.Module, target: str, num_classes: Optional[int]):
        super().__init__()
        self.baseline = baseline
        self.target = target
        self.num_classes = num_classes

    def nll(self, y: Tensor, x: Tensor) -> Tensor:
        """Negative log-likelihood; for the weighted Bernoulli the weighted cross-entropy (eq. 9's numerator)."""
        return self.baseline.nll(y, x)

    def log_likelihood(self, y: Tensor, x: Tensor) -> Tensor:
        return self.baseline.log_likelihood(y, x)

    @torch.inference_mode()
    def sample(self, x: Tensor, temperature: float = 1.0) -> Tensor:
        return self.baseline.sample(x, temperature)

    @torch.inference_mode()
    def predict(self, x: Tensor, n_samples: int = 8, temperature: float = 1.0,
                max_batch_elements: int = PREDICT_BATCH_ELEMENTS) -> dict[str, Tensor]:
        mean, std = self.baseline.moments(x, temperature)
        return self._summarise(mean, std)


def _check_choice(name: str, value: Any, allowed: Sequence[Any]) -> None:
    if value not in allowed:
        raise ValueError(f"build_model: option {name}={value!r} not in {tuple(allowed)}")


def build_model(family: str, target: str, y_shape: Sequence[int], x_shape: Sequence[int],
                **options: Any) -> StructuredModel:
    """Build the model of ``family`` for a ``target`` of shape ``y_shape`` given ``x`` of shape ``x_shape``.

    ``family in {"cnf", "cglow", "factorized"}``, ``target in {"image8", "binary", "categorical",
    "continuous"}``; shapes are ``(C, H, W)`` of one data-space sample (categorical: ``C = 1`` of class indices).

    Options: exactly those of ``MODEL_OPTIONS[family]`` (each declared with its type, allowed values and
    meaning; any other name raises a ``ValueError`` listing the allowed ones):
      - every family: ``hidden``, ``num_classes`` (categorical targets, required); ``encoder`` and
        ``encoder_options`` (``blocks``, ``growth``, ``context_channels``, ``width``; factorized also ``scales``,
        the VGG outputs), also accepted flat as ``encoder_blocks``, ``encoder_growth``, ``context_channels``,
        ``encoder_width``, ``encoder_scales``; c-Glow has no encoder (it conditions through its own networks).
      - flows: ``levels``, ``steps``, ``dequantization`` (per target, see ``DEQUANTIZATION_CHOICES``),
        ``dequantizer_steps`` (2), ``dequantizer_hidden`` (= ``hidden``), ``coupling``, ``subnet``,
        ``residual`` (continuous targets, ``x`` of ``y``'s shape: the flow models ``y - residual * x``, c-Glow's
        residual denoising); cnf: ``lu``; cglow: ``cond_hidden`` (sets ``cond_channels``, ``cond_fc_width``
        and ``coupling_cond_channels`` unless given) and those three, ``priors`` (``"unconditional"``: the
        paper's c-Glow, default; ``"conditional"``: a variant) and ``actnorm_bound`` (1; 0 unbounded); the
        config records both, so checkpoints from before they existed are told apart (``upgrade_config``).
      - factorized: ``beta`` (weighted Bernoulli, eq. 9), ``param_budget`` (choose ``hidden`` to match a
        parameter count), ``encoder`` in ``BASELINE_ENCODERS`` with a per-target default (RRDB for 8-bit SR,
        VGG for binary DRIVE, c-Glow's feature net otherwise).

    The model's ``config`` rebuilds it: ``build_model(**model.config)``.
    """
    _check_choice("family", family, FAMILIES)
    _check_choice("target", target, TARGETS)
    check_options(family, options)
    y_shape = [int(s) for s in y_shape]
    x_shape = [int(s) for s in x_shape]
    if len(y_shape) != 3 or len(x_shape) != 3:
        raise ValueError(f"build_model: y_shape and x_shape must be (C, H, W), got {y_shape} and {x_shape}")
    opts = _flatten_encoder_options(options)
    num_classes = opts.pop("num_classes", None)
    if target == "categorical":
        if num_classes is None or int(num_classes) < 2:
            raise ValueError(f"build_model: target='categorical' needs option num_classes >= 2, got {num_classes}")
        if y_shape[0] != 1:
            raise ValueError(f"build_model: categorical y holds class indices, so y_shape[0] must be 1: {y_shape}")
        num_classes = int(num_classes)
    elif num_classes is not None:
        raise ValueError(f"build_model: option num_classes is only for target='categorical', not {target!r}")
    config = {"family": family, "target": target, "y_shape": y_shape, "x_shape": x_shape, **options}

    if family == "factorized":
        if "encoder_scales" in opts:  # build_baseline's name for the VGG outputs
            opts["encoder_levels"] = opts.pop("encoder_scales")
        opts.setdefault("encoder", DEFAULT_BASELINE_ENCODER[target])
        _check_choice("encoder", opts["encoder"], BASELINE_ENCODERS)
        if "beta" in opts and target != "binary":
            raise ValueError(f"build_model: option beta is for target='binary' (weighted Bernoulli), not {target!r}")
        if target == "categorical":
            opts["num_classes"] = num_classes
        baseline = build_baseline(BASELINE_OF[target], y_shape, x_shape, **opts)
        if "param_budget" in config:  # record the width the budget chose, so the rebuild needs no search
            config.pop("param_budget")
            config["hidden"] = baseline.config["hidden"]
        model: StructuredModel = FactorizedModel(baseline, target, num_classes)
        model.config = config
        return model

    deq_kind = opts.pop("dequantization", None)
    deq_steps = int(opts.pop("dequantizer_steps", 2))
    deq_hidden = opts.pop("dequantizer_hidden", None)
    cond_hidden = opts.pop("cond_hidden", None)
    if cond_hidden is not None:
        for key in ("cond_channels", "cond_fc_width", "coupling_cond_channels"):
            opts.setdefault(key, int(cond_hidden))
    if family == "cglow":
        # Recorded even when defaulted: a config without `priors` is one saved before the option (upgrade_config).
        for key in _CGLOW_BEFORE_PRIORS:
            config.setdefault(key, CGLOW_DEFAULTS[key])

    residual = opts.pop("residual", None)
    if residual is not None:
        fits = ((target == "continuous" and list(x_shape) == list(y_shape))
                or (target == "image8" and x_shape[0] == y_shape[0]))
        if not fits:
            raise ValueError(f"build_model: option residual is for target='continuous' with x_shape == y_shape "
                             f"or target='image8' with x of y's channels; got target={target!r}, "
                             f"y_shape {y_shape}, x_shape {x_shape}")
        if not math.isfinite(float(residual)):
            raise ValueError(f"build_model: option residual must be a finite number, got {residual!r}")
    if target == "continuous":
        if deq_kind is not None:
            raise ValueError(f"build_model: option dequantization={deq_kind!r} is for discrete targets, "
                             "not target='continuous'")
        dequantizer = None
        flow_shape = y_shape
    else:
        choices = DEQUANTIZATION_CHOICES[target]
        if deq_kind is None:
            deq_kind = "uniform" if family == "cglow" else choices[0]
        _check_choice(f"dequantization (target={target!r})", deq_kind, choices)
        flow_shape = [num_classes, *y_shape[1:]] if target == "categorical" else y_shape
        hidden = int(deq_hidden if deq_hidden is not None else opts.get("hidden", 32))
        dequantizer = build_dequantizer(deq_kind, flow_shape, x_shape, levels=QUANTIZATION_LEVELS[target],
                                        steps=deq_steps, hidden=hidden)
    flow = build_flow(family, flow_shape, x_shape, **opts)
    model = FlowModel(flow, dequantizer, target, num_classes, residual)
    model.config = config
    return model


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Trainable parameter counts: ``total``, ``encoder`` (``h = g(x)``), ``dequantizer``, ``rest``.

    For logging a matched parameter budget (Winkler et al. 2019, sec. 5.1) next to every run.
    """
    total = count_parameters(model)
    encoder = 0
    for name in ("flow", "baseline"):
        part = getattr(model, name, None)
        if part is not None and getattr(part, "encoder", None) is not None:
            encoder += count_parameters(part.encoder)
    deq = getattr(model, "dequantizer", None)
    dequantizer = count_parameters(deq) if deq is not None else 0
    return {"total": total, "encoder": encoder, "dequantizer": dequantizer,
            "rest": total - encoder - dequantizer}
