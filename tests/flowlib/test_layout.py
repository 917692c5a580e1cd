"""channels_last: the same model and numbers in NHWC, kept NHWC from input to every convolution."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from flowlib import build_model, channels_last
from flowlib.layout import Conv1x1, cat_channels, is_channels_last, to_layout
from flowlib.squeeze import squeeze2d, unsqueeze2d
from flowlib.subnets import InstanceNorm2d
from randomize import randomize

CL = torch.channels_last
MODELS = {  # name -> build_model arguments: the SR and DRIVE flows, c-Glow
    "sr": ("cnf", "image8", (3, 8, 8), (3, 4, 4), dict(levels=2, steps=2, hidden=8,
                                                       encoder_options={"blocks": 1, "growth": 4})),
    "drive": ("cnf", "binary", (1, 8, 8), (3, 8, 8), dict(levels=2, steps=1, hidden=8, encoder="vgg",
                                                          coupling="additive", subnet="drive")),
    "cglow": ("cglow", "continuous", (3, 8, 8), (3, 8, 8), dict(levels=2, steps=1, hidden=8, cond_hidden=4)),
}


def _data(target, y_shape, x_shape, gen):
    y = torch.rand(2, *y_shape, generator=gen, dtype=torch.float64)
    if target == "image8":
        y = (y * 255).round()
    elif target == "binary":
        y = (y > 0.5).double()
    return y, torch.rand(2, *x_shape, generator=gen, dtype=torch.float64)


def _pair(name):
    family, target, y_shape, x_shape, opts = MODELS[name]
    torch.manual_seed(0)
    model = build_model(family, target, y_shape, x_shape, **opts).double()
    y, x = _data(target, y_shape, x_shape, torch.Generator().manual_seed(1))
    with torch.no_grad():
        model.nll(y, x)
    randomize(model, 0.1, seed=2)
    torch.manual_seed(0)
    twin = build_model(family, target, y_shape, x_shape, **opts).double()
    twin.load_state_dict(model.state_dict())
    return model, channels_last(twin), y, x


@pytest.mark.parametrize("name", list(MODELS))
def test_channels_last_model_computes_the_same_density_gradients_and_samples(name):
    model, twin, y, x = _pair(name)
    torch.manual_seed(3)
    ll = model.log_likelihood(y, x)
    ll.sum().backward()
    torch.manual_seed(3)
    ll_cl = twin.log_likelihood(y, x)
    ll_cl.sum().backward()
    torch.testing.assert_close(ll_cl, ll, rtol=1e-10, atol=1e-8)
    for (n, p), q in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-8, atol=1e-8, msg=n)
    torch.manual_seed(4)
    s = model.sample(x, 0.8)
    torch.manual_seed(4)
    torch.testing.assert_close(twin.sample(x, 0.8), s, rtol=1e-8, atol=1e-8)


class _ConvInputs(TorchDispatchMode):
    """Records the layout of every convolution input with more than one channel and pixel."""

    def __init__(self):
        super().__init__()
        self.layouts = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.convolution.default and args[0].shape[1] > 1 and args[0][0, 0].numel() > 1:
            self.layouts.append((tuple(args[0].shape), is_channels_last(args[0])))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", ["sr", "drive"])
def test_every_convolution_of_a_channels_last_model_sees_nhwc(name):
    _, twin, y, x = _pair(name)
    with _ConvInputs() as spy:
        twin.nll(y, x).sum().backward()
        with torch.no_grad():
            twin.sample(x)
    assert spy.layouts, "no convolution recorded"
    nchw = [shape for shape, cl in spy.layouts if not cl]
    assert not nchw, f"convolutions fed NCHW (a layout copy each): {nchw}"


def test_squeeze_cat_conv1x1_and_instance_norm_keep_nhwc_and_values():
    u = torch.randn(2, 3, 4, 6, dtype=torch.float64)
    ucl = u.contiguous(memory_format=CL)
    s = squeeze2d(ucl)
    assert is_channels_last(s) and torch.equal(s, squeeze2d(u))
    assert is_channels_last(unsqueeze2d(s)) and torch.equal(unsqueeze2d(s), u)

    one = torch.randn(2, 1, 4, 6, dtype=torch.float64)  # 1-channel: NCHW strides unless converted
    assert not is_channels_last(one) and is_channels_last(to_layout(one, CL))
    cat = cat_channels([one, ucl])
    assert is_channels_last(cat) and torch.equal(cat, torch.cat([one, u], 1))
    assert not is_channels_last(cat_channels([one, u])), "NCHW inputs stay NCHW"

    conv = Conv1x1(3, 5).double()
    torch.testing.assert_close(conv(ucl), F.conv2d(u, conv.weight, conv.bias), rtol=1e-12, atol=1e-12)
    assert is_channels_last(conv(ucl)) and not is_channels_last(conv(u))

    norm = InstanceNorm2d(3).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2)
        norm.bias.normal_()
    torch.testing.assert_close(norm(ucl), norm(u), rtol=1e-10, atol=1e-10)
    assert is_channels_last(norm(ucl))
