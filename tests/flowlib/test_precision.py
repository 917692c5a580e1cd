"""mixed_precision: bfloat16 networks, float32 bijections; the flow stays invertible and its log-det exact."""
from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from flowlib import build_model, channels_last, mixed_precision
from flowlib.coupling import AffineCoupling
from flowlib.invconv import InvConv1x1
from flowlib.precision import compute_dtype, network_modules
from randomize import randomize

MODELS = {  # name -> build_model arguments: the SR and DRIVE flows, c-Glow, a factorized baseline
    "sr": ("cnf", "image8", (3, 8, 8), (3, 4, 4), dict(levels=2, steps=2, hidden=8,
                                                       encoder_options={"blocks": 1, "growth": 4})),
    "drive": ("cnf", "binary", (1, 8, 8), (3, 8, 8), dict(levels=2, steps=1, hidden=8, encoder="vgg",
                                                          coupling="additive", subnet="drive",
                                                          dequantization="binary")),
    "cglow": ("cglow", "continuous", (3, 8, 8), (3, 8, 8), dict(levels=2, steps=1, hidden=8, cond_hidden=4)),
    "factorized": ("factorized", "binary", (1, 8, 8), (3, 8, 8), dict(encoder="vgg", hidden=8)),
}


def _model(name, dtype=torch.float32):
    family, target, y_shape, x_shape, opts = MODELS[name]
    torch.manual_seed(0)
    model = build_model(family, target, y_shape, x_shape, **opts).to(dtype)
    gen = torch.Generator().manual_seed(1)
    y = torch.rand(3, *y_shape, generator=gen, dtype=dtype)
    y = (y * 255).round() if target == "image8" else (y > 0.5).to(dtype) if target == "binary" else y
    x = torch.rand(3, *x_shape, generator=gen, dtype=dtype)
    with torch.no_grad():
        model.nll(y, x)
    randomize(model, 0.1, seed=2)
    return model, y, x


class OpDtypes(TorchDispatchMode):
    """The input dtype of every aten.convolution / mm / addmm call, split by whether an InvConv1x1 ran it."""

    def __init__(self, model):
        super().__init__()
        self.network, self.mixing, self.inside = [], [], 0
        for m in model.modules():
            if isinstance(m, InvConv1x1):
                m.register_forward_pre_hook(lambda *_: setattr(self, "inside", self.inside + 1))
                m.register_forward_hook(lambda *_: setattr(self, "inside", self.inside - 1))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten.convolution.default, torch.ops.aten.mm.default, torch.ops.aten.addmm.default):
            (self.mixing if self.inside else self.network).append(args[0].dtype)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", list(MODELS))
def test_networks_run_in_bfloat16_and_everything_else_in_float32(name):
    model, y, x = _model(name)
    mixed_precision(model)
    assert compute_dtype(model) == torch.bfloat16
    rec = OpDtypes(model)
    with rec:
        ll = model.log_likelihood(y, x)
    assert ll.dtype == torch.float32 and torch.isfinite(ll).all()
    assert set(rec.network) == {torch.bfloat16}, "every network convolution runs in bfloat16"
    assert set(rec.mixing) <= {torch.float32}, "the 1x1 convolution W u stays float32"
    assert bool(rec.mixing) == (name in ("sr", "drive"))


@pytest.mark.parametrize("name", ["sr", "drive", "cglow"])
def test_flow_with_bfloat16_networks_inverts_to_float32_precision(name):
    model, y, x = _model(name)
    flow = model.flow
    mixed_precision(model)
    v = torch.randn(3, *flow.y_shape, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        latents = flow.encode(v, x)
        back = flow.decode(latents, x)
    torch.testing.assert_close(back, v, rtol=1e-4, atol=1e-4)


def test_coupling_log_det_is_that_of_the_map_applied():
    """With a bfloat16 subnet the layer is still triangular: autograd's Jacobian of the float32 map has the
    log-determinant the layer reports."""
    torch.manual_seed(0)
    layer = randomize(AffineCoupling(4, cond_channels=2, hidden=8), 0.3, seed=1)
    mixed_precision(layer)
    assert list(network_modules(layer)) == [layer.subnet]
    u = torch.randn(1, 4, 2, 2)
    h = torch.randn(1, 2, 2, 2)
    _, logdet = layer(u, h)
    jac = torch.autograd.functional.jacobian(lambda t: layer(t.view(1, 4, 2, 2), h)[0].reshape(-1), u.reshape(-1))
    torch.testing.assert_close(torch.linalg.slogdet(jac)[1], logdet[0], rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        back, _ = layer.inverse(layer(u, h)[0], h)
    torch.testing.assert_close(back, u, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", list(MODELS))
def test_float64_models_are_untouched(name):
    model, y, x = _model(name, torch.float64)
    torch.manual_seed(3)
    before = model.log_likelihood(y, x)
    mixed_precision(model)
    torch.manual_seed(3)
    torch.testing.assert_close(model.log_likelihood(y, x), before, rtol=0, atol=0)


def test_state_dict_copies_and_undo():
    model, y, x = _model("sr")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(3)
    full = model.log_likelihood(y, x)
    channels_last(mixed_precision(model))
    assert model.state_dict().keys() == state.keys()
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    torch.manual_seed(3)
    mixed = model.log_likelihood(y, x)
    assert not torch.equal(mixed, full)  # the networks did run in bfloat16
    torch.testing.assert_close(mixed, full, rtol=1e-2, atol=0)
    for twin in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        torch.manual_seed(3)
        torch.testing.assert_close(twin.log_likelihood(y, x), mixed, rtol=0, atol=0)
    mixed_precision(model, None)
    assert compute_dtype(model) is None
    torch.manual_seed(3)
    torch.testing.assert_close(model.log_likelihood(y, x), full, rtol=1e-6, atol=1e-3)


def test_training_step_keeps_float32_parameters_and_gradients():
    model, y, x = _model("drive")
    mixed_precision(model)
    model.nll(y, x).mean().backward()
    for n, p in model.named_parameters():
        assert p.dtype == torch.float32, n
        if p.grad is not None:
            assert p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all(), n


def test_bad_dtype_is_refused():
    model, _, _ = _model("sr")
    with pytest.raises(ValueError, match="dtype 'int8'"):
        mixed_precision(model, "int8")
    with pytest.raises(ValueError, match="reduced float"):
        mixed_precision(model, torch.float64)
