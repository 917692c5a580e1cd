"""``build_flow``: the two conditional flow families of the papers as :class:`ConditionalFlow` instances."""
from __future__ import annotations

import math
from typing import Any, Sequence

from torch import nn

from .actnorm import ActNorm, ConditionalActNorm
from .bijection import Sequential
from .coupling import AdditiveCoupling, AffineCoupling
from .encoders.conditioning import CouplingFeatureNetwork
from .encoders.rrdb import RRDBEncoder
from .encoders.vgg import VGGEncoder
from .invconv import ConditionalInvConv1x1, InvConv1x1
from .multiscale import ConditionalFlow
from .priors import ConditionalPrior, ConditionalSplitPrior, DiagonalGaussian, SplitPrior
from .squeeze import Squeeze
from .subnets import SUBNETS

KINDS = ("cnf", "cglow")
# Defaults are small enough for CPU tests; the papers' sizes are set from params.yaml
# (Winkler Table 8: encoder_blocks=16, encoder_growth=32; Table 6: hidden=512; c-Glow: hidden=256).
CNF_DEFAULTS: dict[str, Any] = {"encoder": "rrdb", "encoder_blocks": 2, "encoder_growth": 16, "context_channels": 32,
                                "encoder_width": 32, "coupling": "affine", "subnet": "sr", "lu": True}
# c-Glow's priors: "unconditional" (the paper's model: Glow's learned split priors on z_0 and learned top prior) or
# "conditional" (a variant, not the paper's c-Glow: Winkler et al.'s conditional split priors and prior).
# actnorm_bound: S of the conditional actnorm's log-scale s = S tanh(r / S); 1 is the authors' tanh, 0 unbounded.
CGLOW_DEFAULTS: dict[str, Any] = {"cond_channels": 32, "cond_fc_width": 32, "coupling_cond_channels": 16,
                                  "coupling": "affine", "subnet": "glow", "priors": "unconditional",
                                  "actnorm_bound": 1.0}
ENCODERS = ("rrdb", "vgg", "none")
COUPLINGS = ("affine", "additive")
CGLOW_PRIORS = ("unconditional", "conditional")


def _resolve(kind: str, options: dict[str, Any]) -> dict[str, Any]:
    defaults = CNF_DEFAULTS if kind == "cnf" else CGLOW_DEFAULTS
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise ValueError(f"build_flow({kind!r}): unknown option(s) {unknown}; allowed: {sorted(defaults)}")
    opts = {**defaults, **options}
    for key, allowed in (("encoder", ENCODERS), ("coupling", COUPLINGS), ("subnet", SUBNETS),
                         ("priors", CGLOW_PRIORS)):
        if key in opts and opts[key] not in allowed:
            raise ValueError(f"build_flow({kind!r}): option {key}={opts[key]!r} not in {allowed}")
    if "actnorm_bound" in opts:
        bound = opts["actnorm_bound"]
        if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not (math.isfinite(bound) and bound >= 0):
            raise ValueError(f"build_flow({kind!r}): option actnorm_bound={bound!r} must be a finite number >= 0 "
                             "(0: unbounded log-scale)")
        opts["actnorm_bound"] = float(bound)
    return opts


def _coupling(kind: str, channels: int, cond_channels: int, hidden: int, subnet: str, **kw) -> nn.Module:
    cls = AffineCoupling if kind == "affine" else AdditiveCoupling
    return cls(channels, cond_channels, hidden, subnet, **kw)


def build_flow(kind: str, y_shape: Sequence[int], x_shape: Sequence[int], levels: int = 2, steps: int = 4,
               hidden: int = 64, **options: Any) -> ConditionalFlow:
    """Build a conditional flow ``p(y|x)`` of family ``kind`` with ``levels`` x ``steps`` steps.

    - ``"cnf"`` (Winkler et al. 2019, sec. 3.1/5): step = ActNorm, 1x1 conv (LU if ``lu``), coupling
      (``coupling`` in ``{"affine", "additive"}``, ``subnet`` in ``{"sr", "drive", "glow"}``) on ``[z_1, h_l]``;
      ``h = g(x)`` from ``encoder`` in ``{"rrdb", "vgg", "none"}`` (``encoder_blocks``, ``encoder_growth``,
      ``context_channels`` for RRDB; ``encoder_width`` for VGG), resampled to each level.
      Conditional split priors on ``[z_0, h_l]`` and a conditional final prior on ``h_L`` (Winkler sec. 3.1).
    - ``"cglow"`` (Lu & Huang 2020, sec. 4): step = conditional actnorm (log-scale bounded by
      ``actnorm_bound * tanh(. / actnorm_bound)``; 0: unbounded), conditional 1x1 conv (conditioning networks
      with ``cond_channels`` conv and ``cond_fc_width`` FC widths), affine coupling with a
      ``coupling_cond_channels``-wide feature network on ``x``; ``x`` reaches level ``l`` squeezed ``l + 1`` times.
      Conditioning enters only these three components (sec. 4.1): with ``priors="unconditional"`` (default,
      the paper's model as the authors' code, github.com/yolu1055/conditional-glow, builds it) the split priors
      are Glow's learned ``p(z_1 | z_0)`` and the top prior a learned diagonal Gaussian, neither seeing ``x``.
      ``priors="conditional"`` is a sound variant, not c-Glow: Winkler's conditional split priors and prior.

    ``y_shape``/``x_shape`` are ``(C, H, W)``;
    ``H`` and ``W`` of ``y`` must be divisible by ``2**levels``. Unknown options raise ``ValueError``.
    A ``"cnf"`` flow is fully convolutional: it runs at any ``y`` size divisible by ``2**levels`` (``sample``
    infers ``y``'s size from ``x`` by the build-time ratio of the shapes), and its ``state_dict`` does not
    depend on the build size. A ``"cglow"`` flow's conditioning networks are fully connected, so it runs at
    its build size only.
    The returned model's ``config`` rebuilds it: ``build_flow(**model.config)``.
    """
    if kind not in KINDS:
        raise ValueError(f"build_flow: kind {kind!r} not in {KINDS}")
    y_shape = tuple(int(s) for s in y_shape)
    x_shape = tuple(int(s) for s in x_shape)
    if len(y_shape) != 3 or len(x_shape) != 3:
        raise ValueError(f"build_flow: y_shape and x_shape must be (C, H, W); got {y_shape}, {x_shape}")
    if levels < 1 or steps < 1:
        raise ValueError(f"build_flow: levels and steps must be >= 1; got levels={levels}, steps={steps}")
    c, hy, wy = y_shape
    if hy % (2 ** levels) or wy % (2 ** levels):
        raise ValueError(f"build_flow: y_shape {y_shape} spatial size must be divisible by 2**levels={2 ** levels}")
    opts = _resolve(kind, options)
    cx = x_shape[0]

    encoder = None
    cond_mode = "interpolate"
    if kind == "cnf":
        if opts["encoder"] == "rrdb":
            encoder = RRDBEncoder(cx, opts["context_channels"], opts["encoder_blocks"], opts["encoder_growth"])
            h_channels = [encoder.out_channels] * levels
        elif opts["encoder"] == "vgg":
            encoder = VGGEncoder(cx, opts["encoder_width"], levels)
            h_channels = [encoder.out_channels] * levels
        else:
            h_channels = [cx] * levels
    else:
        cond_mode = "squeeze"
        h_channels = [cx * 4 ** (l + 1) for l in range(levels)]

    unconditional_priors = kind == "cglow" and opts["priors"] == "unconditional"
    level_modules, split_priors = [], []
    channels = c
    for l in range(levels):
        channels *= 4
        size = (hy >> (l + 1), wy >> (l + 1))
        hc = h_channels[l]
        layers: list[nn.Module] = [Squeeze()]
        for _ in range(steps):
            if kind == "cnf":
                layers += [ActNorm(channels), InvConv1x1(channels, lu=opts["lu"]),
                           _coupling(opts["coupling"], channels, hc, hidden, opts["subnet"])]
            else:
                cw, fw = opts["cond_channels"], opts["cond_fc_width"]
                layers += [ConditionalActNorm(channels, hc, size, cw, fw, scale_bound=opts["actnorm_bound"]),
                           ConditionalInvConv1x1(channels, hc, size, cw, fw),
                           _coupling(opts["coupling"], channels, hc, hidden, opts["subnet"],
                                     cond_net=CouplingFeatureNetwork(hc, opts["coupling_cond_channels"]))]
        level_modules.append(Sequential(layers))
        if l < levels - 1:
            keep, out = channels - channels // 2, channels // 2
            split_priors.append(SplitPrior(out, keep) if unconditional_priors else
                                ConditionalSplitPrior(out, keep + hc, hidden))
            channels = keep
    top = (channels, hy >> levels, wy >> levels)
    prior = DiagonalGaussian(top) if unconditional_priors else ConditionalPrior(channels, h_channels[-1], hidden)

    flow = ConditionalFlow(y_shape, x_shape, encoder, level_modules, split_priors, prior, cond_mode)
    flow.config = {"kind": kind, "y_shape": list(y_shape), "x_shape": list(x_shape), "levels": int(levels),
                   "steps": int(steps), "hidden": int(hidden), **opts}
    return flow
