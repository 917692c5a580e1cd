"""Evaluation metrics of both papers: bits/dim, PSNR, SSIM, the vessel F-score, IoU, super-pixel accuracy.

Everything here takes numpy arrays or torch tensors and returns plain Python floats or numpy arrays, so
that the pipeline can serialise results without further conversion. Images are channel-first, ``(C, H, W)``
or ``(H, W)``, like the rest of the project; batches are scored one image at a time by the caller because
the benchmarks (Set5, DRIVE) have images of different sizes.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
import torch

__all__ = [
    "bits_per_dim",
    "dataset_bits_per_dim",
    "psnr",
    "ssim",
    "rgb_to_y",
    "shave",
    "precision_recall",
    "vessel_fscore",
    "fscore",
    "iou",
    "superpixel_accuracy",
]


def _numpy(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    return np.asarray(a)


# ----------------------------------------------------------------------------------------------- bits / dim


def bits_per_dim(log_likelihood_nats, num_dims: int):
    r"""Negative log-likelihood in bits per dimension.

    .. math:: \mathrm{bpd} = -\frac{\log p(y \mid x)}{D \ln 2}

    ``log_likelihood_nats`` may be a float, an array or a tensor of per-sample log-likelihoods; the result
    has the same shape. Source: Winkler et al. 2019, sec. 5 ("negative log2-likelihood ... bits per
    dimension").
    """
    if num_dims <= 0:
        raise ValueError(f"num_dims must be positive, got {num_dims}")
    return -log_likelihood_nats / (num_dims * math.log(2.0))


def dataset_bits_per_dim(log_likelihoods_nats: Iterable[float], num_dims: Iterable[int]) -> float:
    r"""Bits/dim of a whole test set: total negative log-likelihood over total dimensions.

    .. math:: \mathrm{bpd} = -\frac{\sum_n \log p(y_n \mid x_n)}{\ln 2 \sum_n D_n}

    Equals the mean of per-sample bits/dim when every sample has the same size; weighting by D keeps
    images of different sizes (Set5, DRIVE) from counting unequally per pixel.
    """
    ll = np.asarray(list(log_likelihoods_nats), dtype=np.float64)
    dims = np.asarray(list(num_dims), dtype=np.float64)
    if ll.shape != dims.shape or ll.size == 0:
        raise ValueError(f"need one num_dims per log-likelihood, got {ll.shape} and {dims.shape}")
    return float(-ll.sum() / (dims.sum() * math.log(2.0)))


# ----------------------------------------------------------------------------------------------- PSNR / SSIM


def rgb_to_y(rgb) -> np.ndarray:
    r"""Luma channel Y of ITU-R BT.601 YCbCr (MATLAB ``rgb2ycbcr``), for RGB values in [0, 1].

    .. math:: Y = 16 + (65.481 R + 128.553 G + 24.966 B), \quad Y \in [16, 235]

    Input ``(3, H, W)`` (or ``(B, 3, H, W)``), channel-first; returns ``(H, W)`` (or ``(B, H, W)``) float64 on
    the 0..255 scale. Source: the SR-literature evaluation protocol (Dong et al. 2015; Wang et al. 2018) that
    Winkler et al. 2019, Table 2 follows.
    """
    a = _numpy(rgb).astype(np.float64)
    if a.ndim < 3 or a.shape[-3] != 3:
        raise ValueError(f"rgb_to_y expects channel-first RGB (..., 3, H, W), got shape {a.shape}")
    r, g, b = a[..., 0, :, :], a[..., 1, :, :], a[..., 2, :, :]
    return 16.0 + 65.481 * r + 128.553 * g + 24.966 * b


def shave(image, border: int):
    """Crop ``border`` pixels from every side of the last two (spatial) axes, as SR evaluations do."""
    if border < 0:
        raise ValueError(f"border must be >= 0, got {border}")
    if border == 0:
        return image
    h, w = image.shape[-2], image.shape[-1]
    if 2 * border >= min(h, w):
        raise ValueError(f"cannot shave {border} px from an image of size {h}x{w}")
    return image[..., border:-border, border:-border]


def psnr(prediction, target, data_range: float = 255.0) -> float:
    r"""Peak signal-to-noise ratio in dB over all elements.

    .. math:: \mathrm{PSNR} = 10 \log_{10} \frac{R^2}{\frac{1}{N}\sum_i (\hat y_i - y_i)^2}

    ``R`` is ``data_range`` (255 for 8-bit images, 1 for [0, 1] images). Returns ``inf`` for identical
    inputs. Matches ``skimage.metrics.peak_signal_noise_ratio``.
    """
    p, t = _numpy(prediction).astype(np.float64), _numpy(target).astype(np.float64)
    if p.shape != t.shape:
        raise ValueError(f"psnr: shapes differ, prediction {p.shape} vs target {t.shape}")
    mse = float(np.mean((p - t) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(data_range**2 / mse)


def _gaussian_kernel(sigma: float, truncate: float = 3.5) -> torch.Tensor:
    # Same radius rule as scipy.ndimage.gaussian_filter, which skimage uses: 11 taps for sigma 1.5.
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def ssim(prediction, target, data_range: float = 255.0, sigma: float = 1.5) -> float:
    r"""Structural similarity with an 11x11 Gaussian window (sigma 1.5), the standard SR-literature SSIM.

    .. math::
        \mathrm{SSIM} = \frac{(2\mu_{\hat y}\mu_y + C_1)(2\sigma_{\hat y y} + C_2)}
        {(\mu_{\hat y}^2 + \mu_y^2 + C_1)(\sigma_{\hat y}^2 + \sigma_y^2 + C_2)},
        \quad C_1 = (0.01 R)^2,\; C_2 = (0.03 R)^2

    Local statistics use the normalised Gaussian window with population (not sample) covariance; the map is
    averaged over the positions where the window fits inside the image ("valid"), and over channels for
    ``(C, H, W)`` inputs. Equals ``skimage.metrics.structural_similarity(..., gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False, data_range=R)`` and MATLAB ``ssim_index`` (Wang et al. 2004).
    """
    p, t = _numpy(prediction).astype(np.float64), _numpy(target).astype(np.float64)
    if p.shape != t.shape:
        raise ValueError(f"ssim: shapes differ, prediction {p.shape} vs target {t.shape}")
    if p.ndim == 2:
        p, t = p[None], t[None]
    if p.ndim != 3:
        raise ValueError(f"ssim expects (H, W) or (C, H, W), got shape {p.shape}")
    k = _gaussian_kernel(sigma)
    if min(p.shape[-2:]) < k.numel():
        raise ValueError(f"ssim: image {p.shape[-2:]} smaller than the {k.numel()}x{k.numel()} window")
    c = p.shape[0]
    kh = k.view(1, 1, -1, 1).expand(c, 1, -1, 1)
    kw = k.view(1, 1, 1, -1).expand(c, 1, 1, -1)

    def blur(a: torch.Tensor) -> torch.Tensor:
        # Separable "valid" filtering: one channel per group so channels never mix.
        return torch.nn.functional.conv2d(torch.nn.functional.conv2d(a, kh, groups=c), kw, groups=c)

    y_hat, y = torch.from_numpy(p)[None], torch.from_numpy(t)[None]
    mu_p, mu_t = blur(y_hat), blur(y)
    var_p = blur(y_hat * y_hat) - mu_p**2
    var_t = blur(y * y) - mu_t**2
    cov = blur(y_hat * y) - mu_p * mu_t
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_p * mu_t + c1) * (2 * cov + c2)) / ((mu_p**2 + mu_t**2 + c1) * (var_p + var_t + c2))
    return float(s.mean(dim=(0, 2, 3)).mean())


# ---------------------------------------------------------------------------------- vessel F-score (DRIU)


def _as_list(images) -> list[np.ndarray]:
    if isinstance(images, (list, tuple)):
        return [_numpy(a) for a in images]
    a = _numpy(images)
    if a.ndim == 2:
        return [a]
    if a.ndim == 4:  # (B, 1, H, W)
        if a.shape[1] != 1:
            raise ValueError(f"expected single-channel maps (B, 1, H, W), got {a.shape}")
        a = a[:, 0]
    return list(a)


def precision_recall(prediction, target, mask=None) -> tuple[np.ndarray, np.ndarray]:
    r"""Per-image precision and recall of binary maps inside the field-of-view mask.

    .. math:: P = \frac{TP}{TP + FP}, \quad R = \frac{TP}{TP + FN}

    ``prediction``, ``target``, ``mask``: one ``(H, W)`` map, a stack ``(N, H, W)`` / ``(N, 1, H, W)`` or a list
    of maps of different sizes; nonzero is positive. An image with no predicted positives has P = 1 (the
    end of a PR curve), one with no true positives has R = 1. Returns two arrays of shape ``(N,)``.
    """
    preds, targets = _as_list(prediction), _as_list(target)
    masks = _as_list(mask) if mask is not None else [np.ones_like(t, dtype=bool) for t in targets]
    if not len(preds) == len(targets) == len(masks):
        raise ValueError(f"precision_recall: {len(preds)} predictions, {len(targets)} targets, {len(masks)} masks")
    precision, recall = np.empty(len(preds)), np.empty(len(preds))
    for i, (p, t, m) in enumerate(zip(preds, targets, masks)):
        m = m.astype(bool).reshape(t.shape)
        p, t = p.reshape(t.shape)[m] > 0, t[m] > 0
        tp = np.count_nonzero(p & t)
        npred, npos = np.count_nonzero(p), np.count_nonzero(t)
        precision[i] = tp / npred if npred else 1.0
        recall[i] = tp / npos if npos else 1.0
    return precision, recall


def fscore(precision: float, recall: float) -> float:
    r"""Harmonic mean :math:`F = 2PR / (P + R)` (0 when both are 0)."""
    return 0.0 if precision + recall == 0 else float(2.0 * precision * recall / (precision + recall))


def vessel_fscore(soft, target, mask=None, thresholds: Sequence[float] | None = None) -> dict:
    r"""Maximum F-score over thresholds with the DRIU protocol, plus the PR curve it is taken from.

    For every threshold :math:`t`, each image's map is binarised as :math:`\hat y \ge t`; precision and recall
    are computed per image inside the FOV mask, averaged over the images, and

    .. math:: F(t) = \frac{2 \bar P(t) \bar R(t)}{\bar P(t) + \bar R(t)}, \qquad F = \max_t F(t)

    (F of the averages, not the average of per-image F). With this protocol the second DRIVE observer
    scores F = 0.791, the "Human" row of Winkler et al. 2019, Table 3 (sourced from Maninis et al. 2016).
    A binary map is the special case with one useful threshold.

    Arguments: ``soft`` maps in [0, 1] (e.g. the mean of 100 samples; Winkler et al. 2019, sec. 5.2),
    ``target`` 0/1 maps, ``mask`` FOV maps; each ``(H, W)``, ``(N, H, W)``, ``(N, 1, H, W)`` or a list.
    ``thresholds`` default to every distinct soft value when there are at most 1024 of them (exact for a
    mean of N samples), else 1000 evenly spaced values in (0, 1].

    Returns a dict: ``f1, precision, recall, threshold`` at the maximum; ``curve`` with lists ``thresholds,
    precision, recall, f1`` (mean precision/recall per threshold); ``per_image`` with the per-image
    ``precision, recall`` at the chosen threshold; ``n`` images.
    """
    softs, targets = _as_list(soft), _as_list(target)
    masks = _as_list(mask) if mask is not None else [np.ones_like(t, dtype=bool) for t in targets]
    if not len(softs) == len(targets) == len(masks) or not softs:
        raise ValueError(f"vessel_fscore: {len(softs)} maps, {len(targets)} targets, {len(masks)} masks")
    values, labels = [], []
    for s, t, m in zip(softs, targets, masks):
        m = m.astype(bool).reshape(t.shape)
        values.append(s.reshape(t.shape)[m].astype(np.float64))
        labels.append(t[m] > 0)
    if thresholds is None:
        distinct = np.unique(np.concatenate(values))
        thresholds = distinct if distinct.size <= 1024 else np.linspace(0.0, 1.0, 1001)[1:]
    th = np.sort(np.asarray(thresholds, dtype=np.float64))
    n, k = len(values), th.size
    precision, recall = np.empty((n, k)), np.empty((n, k))
    for i, (v, y) in enumerate(zip(values, labels)):
        # Counts of positives/negatives with value >= t for all thresholds at once: sort, then search.
        pos, neg = np.sort(v[y]), np.sort(v[~y])
        tp = pos.size - np.searchsorted(pos, th, side="left")
        fp = neg.size - np.searchsorted(neg, th, side="left")
        npred = tp + fp
        precision[i] = np.where(npred > 0, tp / np.maximum(npred, 1), 1.0)
        recall[i] = tp / pos.size if pos.size else 1.0
    mean_p, mean_r = precision.mean(axis=0), recall.mean(axis=0)
    denom = mean_p + mean_r
    f = np.where(denom > 0, 2 * mean_p * mean_r / np.where(denom > 0, denom, 1.0), 0.0)
    best = int(np.argmax(f))
    return {
        "f1": float(f[best]),
        "precision": float(mean_p[best]),
        "recall": float(mean_r[best]),
        "threshold": float(th[best]),
        "n": n,
        "curve": {
            "thresholds": th.tolist(),
            "precision": mean_p.tolist(),
            "recall": mean_r.tolist(),
            "f1": f.tolist(),
        },
        "per_image": {"precision": precision[:, best].tolist(), "recall": recall[:, best].tolist()},
    }


# ------------------------------------------------------------------------------------------- segmentation


def iou(prediction, target, mode: str = "foreground", num_classes: int = 2) -> float:
    r"""Mean intersection-over-union of label maps, averaged over images.

    .. math:: \mathrm{IoU}_n = \frac{|\hat y_n \cap y_n|}{|\hat y_n \cup y_n|}, \qquad
              \mathrm{mIoU} = \frac{1}{N}\sum_n \mathrm{IoU}_n

    ``mode="foreground"`` (default) scores the foreground (label 1) per image and averages over images:
    the Weizmann-horse convention of DVN (Gygli et al. 2017, whose numbers c-Glow's Table 1 reproduces; its
    oracle value is the foreground IoU of one image) that Lu & Huang 2020, sec. 5.2 follow with "mean IOU".
    ``mode="classes"`` averages the IoU of each of ``num_classes`` classes per image, then over images (the
    semantic-segmentation mIoU). A class absent from both maps of an image counts as IoU 1.

    ``prediction``, ``target``: integer label maps ``(H, W)``, ``(N, H, W)``, ``(N, 1, H, W)`` or lists.
    """
    preds, targets = _as_list(prediction), _as_list(target)
    if len(preds) != len(targets) or not preds:
        raise ValueError(f"iou: {len(preds)} predictions vs {len(targets)} targets")
    if mode == "foreground":
        classes = [1]
    elif mode == "classes":
        classes = list(range(num_classes))
    else:
        raise ValueError(f"iou: mode must be 'foreground' or 'classes', got {mode!r}")
    scores = []
    for p, t in zip(preds, targets):
        p = np.rint(p.reshape(t.shape)).astype(np.int64)
        t = np.rint(t).astype(np.int64)
        per_class = []
        for c in classes:
            inter = np.count_nonzero((p == c) & (t == c))
            union = np.count_nonzero((p == c) | (t == c))
            per_class.append(inter / union if union else 1.0)
        scores.append(np.mean(per_class))
    return float(np.mean(scores))


def superpixel_accuracy(prediction, target, superpixels) -> float:
    r"""Super-pixel accuracy (SPA): the fraction of super-pixels whose majority predicted label is right.

    .. math:: \mathrm{SPA} = \frac{1}{|S|}\sum_{s \in S}
              [\operatorname{mode}(\hat y_s) = \operatorname{mode}(y_s)]

    Each super-pixel takes the most frequent predicted pixel label in it (Lu & Huang 2020, sec. 5.3,
    following Tsogkas et al. 2015 and Gygli et al. 2017); its ground truth is the most frequent true label
    (the LFW parts labels of Kae et al. 2013 are constant per super-pixel, so this is their label). Ties go
    to the smaller label. Super-pixels are pooled over all images (each super-pixel counts once).

    ``prediction``, ``target``: integer label maps; ``superpixels``: integer super-pixel ids of the same
    shape (ids need only be unique within an image); each ``(H, W)``, ``(N, H, W)``, ``(N, 1, H, W)`` or lists.
    """
    preds, targets, sps = _as_list(prediction), _as_list(target), _as_list(superpixels)
    if not len(preds) == len(targets) == len(sps) or not preds:
        raise ValueError(f"superpixel_accuracy: {len(preds)} predictions, {len(targets)} targets, {len(sps)} maps")
    correct = total = 0
    for p, t, s in zip(preds, targets, sps):
        p = np.rint(p.reshape(t.shape)).astype(np.int64).ravel()
        t = np.rint(t).astype(np.int64).ravel()
        _, s = np.unique(s.reshape(-1), return_inverse=True)
        k = int(max(p.max(), t.max())) + 1
        if min(p.min(), t.min()) < 0:
            raise ValueError("superpixel_accuracy: labels must be non-negative integers")
        n_sp = int(s.max()) + 1
        # Label histograms per super-pixel; argmax picks the smallest label on ties.
        hist_p = np.bincount(s * k + p, minlength=n_sp * k).reshape(n_sp, k)
        hist_t = np.bincount(s * k + t, minlength=n_sp * k).reshape(n_sp, k)
        correct += int(np.count_nonzero(hist_p.argmax(1) == hist_t.argmax(1)))
        total += n_sp
    return correct / total
