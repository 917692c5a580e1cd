"""Conditioning networks of c-Glow that turn ``x`` into layer parameters (Lu & Huang 2020, Appendix A)."""
from __future__ import annotations

from torch import Tensor, nn

from ..layout import Conv1x1


def _downscale_conv(in_channels: int, out_channels: int, in_size: tuple[int, int], out_size: tuple[int, int]) -> nn.Conv2d:
    """The "RConv" of c-Glow Figure 5: stride ``H_in // H_out``, kernel ``H_in - (H_out - 1) stride``, no padding.

    With these the output is exactly ``out_size`` for any input size, so the FC layers see a fixed length.
    """
    stride = tuple(max(1, i // o) for i, o in zip(in_size, out_size))
    kernel = tuple(i - (o - 1) * s for i, o, s in zip(in_size, out_size, stride))
    return nn.Conv2d(in_channels, out_channels, kernel, stride=stride)


class ConditioningNetwork(nn.Module):
    """Six-layer network ``x -> theta``: three convolutions that downscale, three fully connected layers.

    .. math:: \\theta(x) = \\mathrm{FC}_3 \\circ \\mathrm{ReLU} \\circ \\mathrm{FC}_2 \\circ \\mathrm{ReLU} \\circ
              \\mathrm{FC}_1 \\circ \\mathrm{ReLU} \\circ \\mathrm{Conv}_{3\\times3} \\circ \\mathrm{ReLU} \\circ
              \\mathrm{RConv} \\circ \\mathrm{ReLU} \\circ \\mathrm{Conv}_{3\\times3}(x)

    Source: Lu & Huang 2020, sec. 5.1 and Appendix A, Figure 5a/5b (conditional actnorm and 1x1 convolution).
    ReLU follows every layer but the last; the last layer is zero-initialised (as Glow does) so the layer it
    feeds starts at its unconditional initial value. Only the last layer is zero: zeroing every layer, as the
    appendix states, would make all hidden units identical forever.

    Args:
        in_channels, in_size: channels and ``(H, W)`` of ``x``.
        out_features: length of ``theta`` per sample, output shape ``(B, out_features)``.
        conv_channels, fc_width: widths of the convolutions and hidden FC layers.
        reduced_size: spatial side the downscaling convolution maps to (capped by the input size).
    """

    def __init__(self, in_channels: int, in_size: tuple[int, int], out_features: int, conv_channels: int = 32,
                 fc_width: int = 32, reduced_size: int = 4):
        super().__init__()
        in_size = (int(in_size[0]), int(in_size[1]))
        out_size = (min(in_size[0], reduced_size), min(in_size[1], reduced_size))
        last = nn.Linear(fc_width, out_features)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.in_size = in_size
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, conv_channels, 3, padding=1), nn.ReLU(),
            _downscale_conv(conv_channels, conv_channels, in_size, out_size), nn.ReLU(),
            nn.Conv2d(conv_channels, conv_channels, 3, padding=1), nn.ReLU(),
            nn.Flatten(),
            nn.Linear(conv_channels * out_size[0] * out_size[1], fc_width), nn.ReLU(),
            nn.Linear(fc_width, fc_width), nn.ReLU(),
            last,
        )

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[-2:]) != self.in_size:
            raise ValueError(f"ConditioningNetwork built for cond of size {self.in_size}, got {tuple(x.shape)}")
        return self.net(x)


class CouplingFeatureNetwork(nn.Module):
    """Three-layer convolutional feature extractor whose output is concatenated to ``z_1`` in c-Glow's coupling.

    .. math:: \\phi(x) = \\mathrm{Conv}_{3\\times3} \\circ \\mathrm{ReLU} \\circ \\mathrm{Conv}_{1\\times1}
              \\circ \\mathrm{ReLU} \\circ \\mathrm{Conv}_{3\\times3}(x)

    Source: Lu & Huang 2020, sec. 5.1 and Appendix A, Figure 5c. The paper's middle layer downscales ``x`` to
    the level's resolution; here the model hands every layer ``cond`` already at that resolution (space-to-depth,
    which loses nothing), so the middle layer is a 1x1 convolution. Last layer zero-initialised.

    Args:
        in_channels: channels of ``cond``; ``out_channels``: feature channels; output ``(B, out_channels, H, W)``.
    """

    def __init__(self, in_channels: int, out_channels: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or out_channels
        last = nn.Conv2d(hidden, out_channels, 3, padding=1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.out_channels = out_channels
        self.net = nn.Sequential(nn.Conv2d(in_channels, hidden, 3, padding=1), nn.ReLU(),
                                 Conv1x1(hidden, hidden), nn.ReLU(), last)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
