"""The multi-scale conditional flow: L levels of K steps with split priors and a final conditional prior."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .bijection import Bijection
from .layout import cat_channels, to_layout
from .squeeze import squeeze2d

COND_MODES = ("interpolate", "squeeze")


def resample(h: Tensor, size: tuple[int, int]) -> Tensor:
    """Bring features ``(B, C, H', W')`` to spatial ``size``: average-pool by integer factors, else bilinear."""
    hs = tuple(h.shape[-2:])
    if hs == tuple(size):
        return h
    if all(a >= b and a % b == 0 for a, b in zip(hs, size)):
        # Integer downscaling: average pooling is the exact box filter, no aliasing from skipped pixels.
        return F.avg_pool2d(h, kernel_size=(hs[0] // size[0], hs[1] // size[1]))
    return F.interpolate(h, size=tuple(size), mode="bilinear", align_corners=False)


def split_channels(z: Tensor) -> tuple[Tensor, Tensor]:
    """``z -> (z_0, z_1)``: kept half (``ceil(C/2)`` channels) and factored-out half (``floor(C/2)``)."""
    keep = z.shape[1] - z.shape[1] // 2
    return z[:, :keep], z[:, keep:]


class ConditionalFlow(nn.Module):
    """Conditional density ``p(y|x)`` as a multi-scale flow with split priors and a final prior.

    .. math:: \\log p(y|x) = \\log p(z_L | h_L) + \\sum_{l<L} \\log p(z_l^{out} | z_l^{keep}, h_l)
              + \\sum_{l} \\log|\\det \\partial f_l / \\partial z_{l-1}|

    (Winkler's CNF; c-Glow's priors ignore ``h``: ``p(z_L)`` learned, ``p(z_l^{out} | z_l^{keep})``, and ``x``
    enters through the bijections only. The priors are given, so either kind fits here.)

    Source: Winkler et al. 2019, sec. 3.1 and 5.1 (L levels of K sub-flows, split prior after every level but
    the last, conditional prior on the rest); Dinh et al. 2016 and Kingma & Dhariwal 2018 for the
    architecture. Level ``l`` is one bijection (a squeeze then K steps) that receives ``cond = h_l``: the
    encoder's features ``h = g(x)`` resampled by this model to the level's resolution (``"interpolate"``,
    CNF) or ``x`` brought to ``y``'s size and squeezed ``l + 1`` times (``"squeeze"``, c-Glow: lossless, so the
    conditioning networks see all of ``x``).

    Every layer of a CNF is convolutional, so it runs at any ``y`` size divisible by ``2**L``: level sizes come
    from the actual ``y`` (``sample``: from ``x`` times the build-time ratio ``y/x``). c-Glow's conditioning
    networks end in fully connected layers, so it runs only at its build-time ``y`` size.

    Args:
        y_shape, x_shape: build-time ``(C, H, W)`` of ``y`` and ``x`` (c-Glow's size; the CNF's ``y/x`` ratio).
        encoder: ``g``, returning a tensor or a list with one tensor per level (``None``: ``h = x``).
        levels: one bijection per level, input ``(B, C_l, H_l, W_l)`` before its squeeze.
        split_priors: ``L - 1`` priors of the factored-out halves, ``cond = [z_keep, h_l]`` (an unconditional
            split prior reads ``z_keep`` only).
        prior: final prior, ``cond = h_{L-1}`` (a learned unconditional one ignores it).
        cond_mode: ``"interpolate"`` or ``"squeeze"``.
    """

    networks = ("encoder",)  # g(x); see flowlib.precision

    def __init__(self, y_shape: Sequence[int], x_shape: Sequence[int], encoder: Optional[nn.Module],
                 levels: Sequence[Bijection], split_priors: Sequence[nn.Module], prior: nn.Module,
                 cond_mode: str = "interpolate"):
        super().__init__()
        if cond_mode not in COND_MODES:
            raise ValueError(f"cond_mode {cond_mode!r} not in {COND_MODES}")
        if len(split_priors) != len(levels) - 1:
            raise ValueError(f"need {len(levels) - 1} split priors for {len(levels)} levels, got {len(split_priors)}")
        self.y_shape = tuple(int(s) for s in y_shape)
        self.x_shape = tuple(int(s) for s in x_shape)
        self.encoder = encoder
        self.levels = nn.ModuleList(levels)
        self.split_priors = nn.ModuleList(split_priors)
        self.prior = prior
        self.cond_mode = cond_mode
        # Build-time level sizes; convolutional flows recompute them from each call's y (see `sizes_of`).
        self.level_sizes = self.sizes_of(self.y_shape[1:])
        self.config: dict = {}
        # Layout y and x are brought to on entry; flowlib.layout.channels_last sets torch.channels_last.
        self.memory_format = torch.contiguous_format

    # ---------------------------------------------------------------------------------------------- geometry
    @property
    def multiple(self) -> int:
        """``2**L``: every level squeezes once, so ``y``'s height and width must be multiples of this."""
        return 2 ** len(self.levels)

    @property
    def fixed_size(self) -> bool:
        """c-Glow's conditioning networks end in fully connected layers, so it only runs at its built size."""
        return self.cond_mode == "squeeze"

    def sizes_of(self, size: Sequence[int]) -> list[tuple[int, int]]:
        """``[(H_l, W_l)]``: the spatial size after level ``l``'s squeeze for a ``y`` of spatial ``size``."""
        hy, wy = (int(s) for s in size)
        return [(hy >> (l + 1), wy >> (l + 1)) for l in range(len(self.levels))]

    def check_size(self, size: Sequence[int], what: Optional[str] = None) -> tuple[int, int]:
        """Validate ``y``'s spatial ``size`` (``(H, W)``): a multiple of ``2**L``, and c-Glow's built size.

        ``what`` names the offending tensor in the error (default ``"y of spatial size HxW"``).
        """
        size = tuple(int(s) for s in size)
        what = what or f"y of spatial size {size[0]}x{size[1]}"
        built = self.y_shape[1:]
        if self.fixed_size and size != built:
            raise ValueError(f"c-Glow models evaluate at their trained size {built[0]}x{built[1]}; got {what} "
                             "(resize the input to the trained size first)")
        m = self.multiple
        if size[0] % m or size[1] % m:
            raise ValueError(f"{what}: height and width must be multiples of 2**levels = {m} (pad the input)")
        return size

    def y_size_of(self, x: Tensor) -> tuple[int, int]:
        """``y``'s spatial size for conditioning ``x``: ``x``'s size times the build-time ratio ``y/x``.

        SR (``y`` 2x ``x``): 2x; DRIVE and depth (same grid): 1x. The ratio must map ``x`` to whole pixels.
        """
        (_, hy, wy), (_, hx, wx) = self.y_shape, self.x_shape
        h, w = x.shape[-2:]
        if self.fixed_size and (h, w) != (hx, wx):
            raise ValueError(f"c-Glow models evaluate at their trained size {hy}x{wy} (x: {hx}x{wx}); got x of "
                             f"shape {tuple(x.shape)} (resize the input to the trained size first)")
        if (h * hy) % hx or (w * wy) % wx:
            raise ValueError(f"x of shape {tuple(x.shape)}: its size times the model's y/x ratio "
                             f"({hy}/{hx}, {wy}/{wx}) is not a whole number of pixels")
        size = ((h * hy) // hx, (w * wy) // wx)
        return self.check_size(size, f"y of size {size[0]}x{size[1]} (inferred from x of shape {tuple(x.shape)})")

    # ----------------------------------------------------------------------------------------------- features
    def conditions(self, x: Tensor, size: Optional[Sequence[int]] = None) -> list[Tensor]:
        """``[h_0, ..., h_{L-1}]``: the conditioning each level sees, at that level's resolution.

        ``size`` is ``y``'s spatial ``(H, W)`` (default: inferred from ``x`` by the build-time ratio).
        """
        size = self.y_size_of(x) if size is None else self.check_size(size)
        level_sizes = self.sizes_of(size)
        x = to_layout(x, self.memory_format)
        if self.cond_mode == "squeeze":
            h = resample(x, size)
            out = []
            for _ in level_sizes:
                h = squeeze2d(h)
                out.append(h)
            return out
        h = x if self.encoder is None else self.encoder(x)
        feats = h if isinstance(h, (list, tuple)) else [h]
        return [resample(feats[min(l, len(feats) - 1)], s) for l, s in enumerate(level_sizes)]

    # ------------------------------------------------------------------------------------------ directions
    def _encode(self, y: Tensor, conds: list[Tensor]) -> tuple[list[Tensor], Tensor, Tensor]:
        """``y -> (latents, sum log|det J|, sum of split-prior log-densities)``."""
        z, logdet, log_split = y, y.new_zeros(y.shape[0]), y.new_zeros(y.shape[0])
        latents = []
        for l, level in enumerate(self.levels):
            z, ld = level(z, conds[l])
            logdet = logdet + ld
            if l < len(self.levels) - 1:
                z, z_out = split_channels(z)
                log_split = log_split + self.split_priors[l].log_prob(z_out, cat_channels([z, conds[l]]))
                latents.append(z_out)
        latents.append(z)
        return latents, logdet, log_split

    def _decode(self, latents: Sequence[Tensor], conds: list[Tensor]) -> Tensor:
        z = latents[-1]
        for l in reversed(range(len(self.levels))):
            if l < len(self.levels) - 1:
                z = cat_channels([z, latents[l]])
            z, _ = self.levels[l].inverse(z, conds[l])
        return z

    def log_prob(self, y: Tensor, x: Tensor) -> Tensor:
        """``log p(y|x)`` in nats, shape ``(B,)``; any ``y`` size divisible by ``2**L`` (c-Glow: the built size)."""
        conds = self.conditions(x, y.shape[-2:])
        latents, logdet, log_split = self._encode(to_layout(y, self.memory_format), conds)
        return logdet + log_split + self.prior.log_prob(latents[-1], conds[-1])

    def forward(self, y: Tensor, x: Tensor) -> Tensor:
        """Same as :meth:`log_prob`, so DistributedDataParallel wraps the training objective."""
        return self.log_prob(y, x)

    def encode(self, y: Tensor, x: Tensor) -> list[Tensor]:
        """Latents, one per level (factored-out halves), the final prior's last."""
        return self._encode(to_layout(y, self.memory_format), self.conditions(x, y.shape[-2:]))[0]

    def decode(self, latents: Sequence[Tensor], x: Tensor) -> Tensor:
        """Exact inverse of :meth:`encode`; ``y``'s size is that of the last latent times ``2**L``."""
        m, top = self.multiple, latents[-1]
        return self._decode(latents, self.conditions(x, (top.shape[-2] * m, top.shape[-1] * m)))

    def noise(self, batch: int, size: Sequence[int], temperature: float = 1.0,
              dtype: Optional[torch.dtype] = None, device: Optional[torch.device] = None) -> list[Optional[Tensor]]:
        """The standard-normal noise one :meth:`sample` of ``batch`` draws for a ``y`` of spatial ``size``.

        Order (the order ``sample`` consumes the random stream): the final prior's ``eps``, then the split
        priors' from the deepest level up. ``temperature == 0`` draws nothing (every entry ``None``).
        """
        sizes = self.sizes_of(size)
        shapes = [self.prior.noise_shape(batch, sizes[-1])]
        shapes += [self.split_priors[l].noise_shape(batch, sizes[l]) for l in reversed(range(len(self.split_priors)))]
        if temperature == 0:
            return [None] * len(shapes)
        return [torch.randn(s, dtype=dtype, device=device) for s in shapes]

    def sample_from(self, conds: Sequence[Tensor], temperature: float = 1.0,
                    noise: Optional[Sequence[Optional[Tensor]]] = None) -> Tensor:
        """Decode the priors' samples given the conditions ``conds = self.conditions(x)`` (and optionally the
        ``noise`` of :meth:`noise`): ``y`` with every prior std scaled by ``temperature``.

        With ``conds`` repeated along the batch and the noise of several draws concatenated in the same order,
        this is the same computation as that many calls of :meth:`sample`, in one pass.
        """
        batch, top = conds[-1].shape[0], conds[-1].shape[-2:]
        if noise is None:
            m = self.multiple  # conds[-1] is at the last level's size, y's / 2**L
            noise = self.noise(batch, (top[0] * m, top[1] * m), temperature, conds[-1].dtype, conds[-1].device)
        eps = iter(noise)
        z = self.prior.sample(conds[-1], temperature, next(eps))
        for l in reversed(range(len(self.levels))):
            if l < len(self.levels) - 1:
                z_out = self.split_priors[l].sample(cat_channels([z, conds[l]]), temperature, next(eps))
                z = cat_channels([z, z_out])
            z, _ = self.levels[l].inverse(z, conds[l])
        return z

    def sample(self, x: Tensor, temperature: float = 1.0) -> Tensor:
        """Draw ``y ~ p(y|x)`` with every prior std scaled by ``temperature`` (0: decode the means).

        ``y``'s size is ``x``'s times the build-time ratio ``y/x`` (e.g. 2x for x2 SR, 1x for DRIVE).
        Differentiable; the data-space ``StructuredModel.sample`` runs under ``torch.inference_mode``.
        """
        return self.sample_from(self.conditions(x), temperature)
