"""One split through a model: bits/dim from ``log_likelihood``, predictions from ``predict``, the task's scorer.

Predictions are the mean of ``n_samples`` samples at ``temperature`` (Lu & Huang 2020, sec. 4.3; Winkler et al.
2019, sec. 5.2 takes the mean of 100 samples as the soft map). Bits/dim is the total NLL over the total number
of dimensions of the *real* pixels: the likelihood is computed on each image without its padding (the
``unpadded`` extra of ``Task.prepare``), cut at the bottom/right to the model's size multiple (``2**L`` for a
flow, times the SR scale; DRIVE's 584x565 becomes 584x564), and D counts exactly those pixels, so padding never
enters bits/dim and an image padded to any multiple scores as the unpadded one does. 8-bit targets are discrete
over 256 levels, binary / categorical flows report the dequantization lower bound, factorized models the exact
normalised likelihood. With ``bpd_crops`` (Winkler et al. 2019, Table 2: "an average over 1000 randomly cropped
128 x 128 patches") the likelihood is that of random crops instead (:func:`crop_windows`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import torch

from pipelines.data.augment import key_rng
from pipelines.io import Progress
from pipelines.tasks import Task
from pipelines.tasks.base import UNPADDED


@dataclass(frozen=True)
class CropProtocol:
    """Bits/dim over ``count`` random ``size`` x ``size`` crops of a split's targets, shared equally by its images.

    Image ``i`` of ``n`` (in split order) gets ``count // n`` crops, one more when ``i < count % n``; each crop's
    top-left corner is uniform over the image's real pixels, on the input grid (SR: even positions, so the LR
    crop aligns), drawn from ``key_rng(key, seed, "bpd-crops")``. An image smaller than ``size`` on a side is
    used whole for each of its crops (our choice; the paper does not say). D is the crop's own.
    """

    count: int = 1000
    size: int = 128

    @classmethod
    def parse(cls, spec: Any, where: str) -> "CropProtocol":
        """``{count: N, size: S}`` (either may be left out) from params; errors name ``where``."""
        if not isinstance(spec, Mapping) or set(spec) - {"count", "size"}:
            raise ValueError(f"{where}: expected {{count: N, size: S}}, got {spec!r}")
        out = cls(**spec)
        if not (isinstance(out.count, int) and out.count > 0 and isinstance(out.size, int) and out.size > 0):
            raise ValueError(f"{where}: count and size must be positive integers, got {spec!r}")
        return out

    def crops_of(self, index: int, n_images: int) -> int:
        return self.count // n_images + (1 if index < self.count % n_images else 0)


def size_multiple(model) -> int:
    """What the model's spatial sizes must be multiples of: ``2**L`` for a flow, 1 for a factorized model."""
    return int(getattr(getattr(model, "flow", None), "multiple", 1))


def real_size(batch: Mapping[str, Any], i: int) -> tuple[int, int]:
    """The unpadded ``(H, W)`` of sample ``i`` of a batch (padding is bottom/right; no marker: all of ``y``)."""
    marker = batch.get(UNPADDED)
    if marker is None:
        return tuple(batch["y"].shape[-2:])
    m = marker[i, 0] > 0.5
    return int(m.any(dim=1).sum()), int(m.any(dim=0).sum())


def _cut(y: torch.Tensor, x: torch.Tensor, size: tuple[int, int], top_left: tuple[int, int], scale: int):
    """``y`` cut to ``size`` at ``top_left``, ``x`` to the matching window when it lies on ``y``'s grid / scale.

    An ``x`` on another grid (inpainting: the whole image around ``y``'s block) is kept whole, which is only
    right when ``y`` is not cut at all."""
    (h, w), (top, left) = size, top_left
    hy, wy = y.shape[-2:]
    y_cut = y[..., top: top + h, left: left + w]
    if tuple(x.shape[-2:]) == (hy // scale, wy // scale):
        return y_cut, x[..., top // scale: (top + h) // scale, left // scale: (left + w) // scale]
    if (h, w) != (hy, wy) or (top, left) != (0, 0):
        raise ValueError(f"x of shape {tuple(x.shape)} is not on the grid of y {tuple(y.shape)} / {scale}, so y "
                         f"cannot be cut to its {h}x{w} real pixels for bits/dim (choose data.size and "
                         "data.pad_multiple so that no padding is needed)")
    return y_cut, x


def real_likelihood(model, batch: Mapping[str, Any], task: Task) -> tuple[list[float], list[int]]:
    """Per-sample log-likelihoods (nats) and D of the real pixels of each target of ``batch``.

    Samples of one real size run as one batch; each is cut to the multiple of ``size_multiple(model)`` and of
    the SR scale that fits inside its real pixels.
    """
    y, x = batch["y"].float(), batch["x"].float()
    scale = task.input_scale
    step = math.lcm(size_multiple(model), scale)
    groups: dict[tuple[int, int], list[int]] = {}
    for i in range(y.shape[0]):
        h, w = real_size(batch, i)
        groups.setdefault((h - h % step, w - w % step), []).append(i)
    ll, dims = [0.0] * y.shape[0], [0] * y.shape[0]
    for size, members in groups.items():
        if min(size) == 0:
            raise ValueError(f"an image of {real_size(batch, members[0])} real pixels is smaller than the model's "
                             f"size multiple {step}")
        index = torch.tensor(members)
        yy, xx = _cut(y[index], x[index], size, (0, 0), scale)
        try:
            values = model.log_likelihood(yy, xx)
        except ValueError as exc:
            raise ValueError(f"bits/dim over the real {size[0]}x{size[1]} pixels: {exc}") from None
        for j, i in enumerate(members):
            ll[i], dims[i] = float(values[j]), int(model.num_dims(yy))
    return ll, dims


def crop_windows(key: str, real: tuple[int, int], count: int, size: int, step: int, seed: int):
    """``count`` (top, left) corners of ``size`` crops inside ``real`` (H, W), on multiples of ``step``; an image
    smaller than ``size`` on a side gives ``None`` (use it whole)."""
    h, w = real
    if h < size or w < size:
        return None
    rng = key_rng(key, seed, "bpd-crops")
    tops = rng.integers(0, (h - size) // step + 1, count) * step
    lefts = rng.integers(0, (w - size) // step + 1, count) * step
    return list(zip(tops.tolist(), lefts.tolist()))


def crop_likelihood(model, batch: Mapping[str, Any], task: Task, protocol: CropProtocol, first_index: int,
                    n_images: int, seed: int, chunk: int = 16) -> tuple[list[float], list[int], int]:
    """Log-likelihoods and D of the crops of every sample of ``batch`` (sample ``i`` is image
    ``first_index + i`` of ``n_images``), and how many images were used whole."""
    y, x = batch["y"].float(), batch["x"].float()
    scale = task.input_scale
    step = math.lcm(size_multiple(model), scale)
    if protocol.size % step:
        raise ValueError(f"bpd_crops.size {protocol.size} is not a multiple of the model's {step}")
    keys = list(batch.get("key", []))
    ll, dims, whole = [], [], 0
    for i in range(y.shape[0]):
        count = protocol.crops_of(first_index + i, n_images)
        if not count:
            continue
        key = keys[i] if i < len(keys) else str(first_index + i)
        real = real_size(batch, i)
        corners = crop_windows(key, real, count, protocol.size, scale, seed)
        if corners is None:  # smaller than a crop: the whole image (cut to the model's multiple) for each crop
            whole += 1
            size = (real[0] - real[0] % step, real[1] - real[1] % step)
            yy, xx = _cut(y[i: i + 1], x[i: i + 1], size, (0, 0), scale)
            value = float(model.log_likelihood(yy, xx)[0])
            ll.extend([value] * count)
            dims.extend([int(model.num_dims(yy))] * count)
            continue
        for start in range(0, count, chunk):
            pieces = [_cut(y[i: i + 1], x[i: i + 1], (protocol.size, protocol.size), corner, scale)
                      for corner in corners[start: start + chunk]]
            yy, xx = torch.cat([p[0] for p in pieces]), torch.cat([p[1] for p in pieces])
            ll.extend(float(v) for v in model.log_likelihood(yy, xx))
            dims.extend([int(model.num_dims(yy))] * len(pieces))
    return ll, dims, whole


def evaluate_split(model, batches: Iterable[Mapping[str, Any]], task: Task, *, n_samples: int, temperature: float,
                   scatter_samples: int | None = None, label: str = "eval", total: int | None = None,
                   max_batches: int | None = None, bpd_crops: CropProtocol | None = None, seed: int = 0) -> dict:
    """Run ``model`` over ``batches`` of one split and return ``task.scorer()``'s summary.

    ``batches`` are loader batches ``{"x", "y", "mask", "key", "unpadded", extras...}``. Tasks whose protocol
    scores individual samples (vessel: the PR scatter) get ``min(scatter_samples, n_samples)`` of them per
    image, ``scatter_samples`` defaulting to the task's. ``max_batches`` stops early; ``total`` (samples) is
    for the progress line and, with ``bpd_crops``, the number of images the crops are shared by (required
    then). The summary adds ``bpd_protocol`` (what bits/dim averages over).
    """
    if bpd_crops is not None and not total:
        raise ValueError(f"[{label}] bpd_crops needs the split's image count (total)")
    scorer = task.scorer()
    per_image = scorer.scatter_samples if scatter_samples is None else scatter_samples
    per_image = min(per_image, n_samples) if scorer.scatter_samples else 0
    progress = Progress(f"[{label}]", total, unit="samples")
    seen, whole, dropped = 0, 0, 0
    model.eval()
    with torch.inference_mode():
        for b, batch in enumerate(batches):
            if max_batches is not None and b >= max_batches:
                break
            if bpd_crops is None:
                ll, dims = real_likelihood(model, batch, task)
            else:
                ll, dims, used_whole = crop_likelihood(model, batch, task, bpd_crops, seen, total, seed)
                whole += used_whole
            for value, d in zip(ll, dims):
                scorer.add_likelihood([value], d)
            x = batch["x"].float()
            out = model.predict(x, n_samples=n_samples, temperature=temperature)
            draws = out.get("draws")
            if draws is not None:  # flows: draws that overflowed float32 are left out of the mean
                if bool((draws == 0).any()):
                    lost = [k for k, d in zip(batch["key"], draws.tolist()) if d == 0]
                    raise FloatingPointError(
                        f"[{label}] every one of the {n_samples} draws at temperature {temperature} overflowed "
                        f"(non-finite) for image(s) {lost}: no sample-mean prediction; a lower eval.temperature "
                        "(or a sweep with select) samples away from the prior's tails")
                dropped += int(n_samples * x.shape[0] - int(draws.sum()))
            samples = [model.sample(x, temperature=temperature) for _ in range(per_image)]
            scorer.add(batch, out, samples)
            seen += batch["y"].shape[0]
            progress.step(batch["y"].shape[0], what=f"(batch {b + 1})")
    if progress.n == 0:
        raise ValueError(f"[{label}] no batches to evaluate")
    summary = scorer.summary()
    # Draws left out of the sample means because they overflowed (Lu & Huang 2020, sec. 4.3: "the sample
    # average can smooth out some anomalous values"; a non-finite one would make the average NaN instead).
    summary["nonfinite_draws"] = dropped
    if bpd_crops is None:
        summary["bpd_protocol"] = "whole images, real pixels only (no padding in D)"
    else:
        summary["bpd_protocol"] = (f"{bpd_crops.count} random {bpd_crops.size}x{bpd_crops.size} crops"
                                   + (f"; {whole} of {seen} images smaller than {bpd_crops.size} px used whole"
                                      if whole else ""))
        summary["bpd_crops"] = len(scorer.ll)
    return summary


def finite_scalars(result: Mapping[str, Any]) -> dict[str, float | int]:
    """The finite numbers of a result (what is printed and tracked; lists, curves, labels and inf are not)."""
    return {k: v for k, v in result.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}
