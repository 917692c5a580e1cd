"""One contract test for every bijection: exact inverse and log-determinant against the autograd Jacobian."""
from __future__ import annotations

import pytest
import torch

from torch.autograd.functional import jacobian

from flowlib.actnorm import ActNorm, ConditionalActNorm
from flowlib.bijection import Sequential
from flowlib.coupling import AdditiveCoupling, AffineCoupling
from flowlib.encoders.conditioning import CouplingFeatureNetwork
from flowlib.flows import build_flow
from flowlib.invconv import ConditionalInvConv1x1, InvConv1x1
from flowlib.layout import to_layout
from flowlib.squeeze import Squeeze
from randomize import randomize

U_SHAPE = (4, 2, 2)  # (C, H, W) of u: 16 dims per sample
COND_CHANNELS = 3


def _level(kind, level):
    """A whole level (squeeze + K steps) of a built flow, and the cond the model hands it."""
    y_shape, x_shape = ((1, 4, 4), (3, 2, 2)) if kind == "cnf" else ((1, 4, 4), (2, 4, 4))
    flow = build_flow(kind, y_shape, x_shape, levels=2, steps=2, hidden=8, context_channels=4, encoder_blocks=1,
                      encoder_growth=4) if kind == "cnf" else \
        build_flow(kind, y_shape, x_shape, levels=2, steps=2, hidden=8, cond_channels=4, cond_fc_width=8,
                   coupling_cond_channels=2)
    shape = (1, 4, 4) if level == 0 else (2, 2, 2)
    return flow, flow.levels[level], shape, x_shape


# name -> (factory(cond_channels) -> layer, u shape, conditioning: "optional" | "required" | "none")
CASES = {
    "squeeze": (lambda cc: Squeeze(), U_SHAPE, "none"),
    "actnorm": (lambda cc: ActNorm(4), U_SHAPE, "none"),
    "conditional_actnorm": (lambda cc: ConditionalActNorm(4, cc, (2, 2), conv_channels=4, fc_width=6), U_SHAPE,
                            "required"),
    "invconv_lu": (lambda cc: InvConv1x1(4, lu=True), U_SHAPE, "none"),
    "invconv_plain": (lambda cc: InvConv1x1(3, lu=False), (3, 2, 2), "none"),
    "conditional_invconv": (lambda cc: ConditionalInvConv1x1(4, cc, (2, 2), conv_channels=4, fc_width=6), U_SHAPE,
                            "required"),
    "affine_sr": (lambda cc: AffineCoupling(4, cc, hidden=6, subnet="sr"), U_SHAPE, "optional"),
    "affine_odd_glow": (lambda cc: AffineCoupling(5, cc, hidden=6, subnet="glow"), (5, 2, 2), "optional"),
    "affine_drive": (lambda cc: AffineCoupling(4, cc, hidden=6, subnet="drive"), U_SHAPE, "optional"),
    "affine_cglow_features": (lambda cc: AffineCoupling(4, cc, hidden=6, subnet="glow",
                                                        cond_net=CouplingFeatureNetwork(cc, 2)), U_SHAPE, "required"),
    "additive_drive": (lambda cc: AdditiveCoupling(4, cc, hidden=6, subnet="drive"), U_SHAPE, "optional"),
    "additive_odd_sr": (lambda cc: AdditiveCoupling(3, cc, hidden=6, subnet="sr"), (3, 2, 2), "optional"),
    "step_sequence": (lambda cc: Sequential([ActNorm(4), InvConv1x1(4), AffineCoupling(4, cc, hidden=6)]), U_SHAPE,
                      "optional"),
}
PARAMS = [(name, with_cond) for name, (_, _, mode) in CASES.items()
          for with_cond in {"none": [False], "optional": [False, True], "required": [True]}[mode]]
PARAMS += [("cnf_level0", True), ("cnf_level1", True), ("cglow_level0", True), ("cglow_level1", True)]


def perturb(module: torch.nn.Module, scale: float = 0.3) -> None:
    """Random non-identity parameters: zero-initialised outputs would otherwise make couplings the identity."""
    randomize(module, scale, seed=1)


def make_case(name: str, with_cond: bool):
    torch.manual_seed(0)
    if name.startswith(("cnf_level", "cglow_level")):
        kind, level = name.split("_level")
        flow, layer, shape, x_shape = _level(kind, int(level))
        flow.double()
        perturb(flow)
        x = torch.rand(2, *x_shape, dtype=torch.float64)
        cond = flow.conditions(x)[int(level)]
        return layer, torch.randn(2, *shape, dtype=torch.float64), cond
    factory, shape, _ = CASES[name]
    layer = factory(COND_CHANNELS if with_cond else 0).double()
    perturb(layer)
    cond = torch.randn(2, COND_CHANNELS, *shape[1:], dtype=torch.float64) if with_cond else None
    return layer, torch.randn(2, *shape, dtype=torch.float64), cond


def brute_force_logdet(layer, u, cond, layout=torch.contiguous_format):
    out = []
    for b in range(u.shape[0]):
        c = None if cond is None else to_layout(cond[b:b + 1], layout)
        jac = jacobian(lambda ub: layer(to_layout(ub.reshape(1, *u.shape[1:]), layout), c)[0].reshape(-1),
                       u[b].reshape(-1))
        out.append(torch.linalg.slogdet(jac)[1])
    return torch.stack(out)


LAYOUTS = {"nchw": torch.contiguous_format, "nhwc": torch.channels_last}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("name,with_cond", PARAMS, ids=[f"{n}-{'cond' if c else 'nocond'}" for n, c in PARAMS])
def test_bijection_contract(name, with_cond, layout):
    """Round trip and log-determinant; also in channels-last layout, and through the no-graph (cached) path."""
    layer, u, cond = make_case(name, with_cond)
    fmt = LAYOUTS[layout]
    layer.to(memory_format=fmt)
    u = to_layout(u, fmt)
    cond = None if cond is None else to_layout(cond, fmt)
    v, logdet = layer(u, cond)
    assert v.shape[0] == u.shape[0] and v.numel() == u.numel()
    assert logdet.shape == (u.shape[0],)
    if name != "squeeze":
        assert not torch.allclose(v.reshape(u.shape), u), "perturbed layer should not be the identity"

    u_back, logdet_inv = layer.inverse(v, cond)
    torch.testing.assert_close(u_back, u, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(logdet_inv, -logdet, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(logdet, brute_force_logdet(layer, u, cond, fmt), rtol=1e-7, atol=1e-7)

    # Without a graph (evaluation, sampling) layers may serve cached weights: the same map, the same inverse.
    with torch.no_grad():
        for _ in range(2):  # the first call fills the caches, the second reads them
            v_cached, logdet_cached = layer(u, cond)
            u_cached, logdet_inv_cached = layer.inverse(v, cond)
    torch.testing.assert_close(v_cached, v.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(logdet_cached, logdet.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(u_cached, u_back.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(logdet_inv_cached, logdet_inv.detach(), rtol=1e-12, atol=1e-12)

    if cond is not None:
        # The conditioning must actually change the map, or "conditional" is only a name.
        v_other, _ = layer(u, cond + 0.5 * torch.randn_like(cond))
        assert not torch.allclose(v_other, v)


def test_conditional_layer_rejects_missing_cond():
    with pytest.raises(ValueError, match="cond"):
        AffineCoupling(4, 3, hidden=4)(torch.randn(1, 4, 2, 2))
    with pytest.raises(ValueError, match="cond"):
        ConditionalActNorm(4, 3, (2, 2))(torch.randn(1, 4, 2, 2))
