"""Encoders h = g(x) and c-Glow conditioning networks: shapes, block counts, zero-initialised outputs."""
from __future__ import annotations

import torch

from flowlib.encoders.conditioning import ConditioningNetwork, CouplingFeatureNetwork
from flowlib.encoders.rrdb import RRDB, ResidualDenseBlock, RRDBEncoder
from flowlib.encoders.vgg import VGGEncoder


def test_rrdb_encoder_shape_and_block_counts():
    enc = RRDBEncoder(3, context_channels=8, blocks=3, growth=4)
    h = enc(torch.rand(2, 3, 6, 10))
    assert h.shape == (2, 8, 6, 10)  # keeps the resolution of x (odd sizes too)
    assert sum(isinstance(m, RRDB) for m in enc.modules()) == 3
    assert sum(isinstance(m, ResidualDenseBlock) for m in enc.modules()) == 9  # three dense blocks per RRDB
    dense = next(m for m in enc.modules() if isinstance(m, ResidualDenseBlock))
    assert [c.in_channels for c in dense.convs] == [8, 12, 16, 20, 24]  # growth 4 per dense layer
    h.sum().backward()
    assert all(p.grad is not None for p in enc.parameters())


def test_rrdb_residual_scaling_keeps_block_near_identity():
    block = RRDB(8, 4)
    a = torch.randn(1, 8, 5, 5)
    with torch.no_grad():
        change = (block(a) - a).norm() / a.norm()
    assert 0 < change < 0.5


def test_vgg_encoder_outputs_one_map_per_level_at_level_resolution():
    enc = VGGEncoder(3, width=6, levels=3)
    outs = enc(torch.rand(2, 3, 32, 32))
    assert [tuple(o.shape) for o in outs] == [(2, 6, 16, 16), (2, 6, 8, 8), (2, 6, 4, 4)]
    assert len(VGGEncoder(1, width=4, levels=1)(torch.rand(1, 1, 2, 2))) == 1  # 1x1 maps: no InstanceNorm crash


def test_conditioning_network_fixed_output_and_zero_init():
    for size in [(16, 16), (5, 7), (1, 1)]:
        net = ConditioningNetwork(3, size, out_features=10, conv_channels=4, fc_width=6)
        out = net(torch.rand(2, 3, *size))
        assert out.shape == (2, 10)
        assert torch.count_nonzero(out) == 0  # zero-initialised last layer: conditional layers start unconditioned
    feats = CouplingFeatureNetwork(5, 3)
    assert feats(torch.rand(2, 5, 4, 4)).shape == (2, 3, 4, 4)
