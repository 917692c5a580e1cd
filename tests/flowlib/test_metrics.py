"""Metrics against reference implementations (skimage) and hand-computed constructed cases."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from flowlib import metrics


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 256, (3, 37, 29)).astype(np.float64)
    noisy = np.clip(target + rng.normal(0, 15, target.shape), 0, 255)
    return noisy, target


def test_psnr_matches_skimage(images):
    pred, target = images
    assert metrics.psnr(pred, target) == pytest.approx(peak_signal_noise_ratio(target, pred, data_range=255), 1e-12)
    assert metrics.psnr(pred / 255, target / 255, data_range=1.0) == pytest.approx(metrics.psnr(pred, target))
    assert metrics.psnr(target, target) == math.inf


def test_psnr_hand_computed():
    # MSE 1 on a 255 range: 20 log10(255).
    assert metrics.psnr(np.ones((4, 4)), np.zeros((4, 4))) == pytest.approx(20 * math.log10(255))


@pytest.mark.parametrize("channels", [None, 0])
def test_ssim_matches_skimage(images, channels):
    pred, target = images
    if channels is None:
        pred, target = pred[0], target[0]
    ref = structural_similarity(
        target, pred, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255,
        channel_axis=channels,
    )
    assert metrics.ssim(pred, target) == pytest.approx(ref, abs=1e-10)
    assert metrics.ssim(torch.from_numpy(pred), torch.from_numpy(target)) == pytest.approx(ref, abs=1e-10)
    assert metrics.ssim(target, target) == pytest.approx(1.0)


def test_ssim_rejects_mismatched_and_tiny():
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.ssim(np.zeros((20, 20)), np.zeros((20, 21)))
    with pytest.raises(ValueError, match="window"):
        metrics.ssim(np.zeros((8, 8)), np.zeros((8, 8)))


def test_rgb_to_y_bt601():
    rgb = np.zeros((3, 2, 2))
    rgb[:, 0, 0] = 1.0  # white
    rgb[0, 0, 1] = 1.0  # pure red
    y = metrics.rgb_to_y(rgb)
    assert y[0, 0] == pytest.approx(235.0)
    assert y[1, 1] == pytest.approx(16.0)
    assert y[0, 1] == pytest.approx(16 + 65.481)
    assert metrics.rgb_to_y(np.stack([rgb, rgb])).shape == (2, 2, 2)


def test_shave():
    a = np.arange(2 * 6 * 7).reshape(2, 6, 7)
    s = metrics.shave(a, 2)
    assert s.shape == (2, 2, 3)
    assert s[0, 0, 0] == a[0, 2, 2]
    with pytest.raises(ValueError):
        metrics.shave(a, 3)


def test_bits_per_dim():
    assert metrics.bits_per_dim(-math.log(2) * 10, 10) == pytest.approx(1.0)
    ll = torch.tensor([-2 * math.log(2) * 4, -math.log(2) * 4])
    assert torch.allclose(metrics.bits_per_dim(ll, 4), torch.tensor([2.0, 1.0]))
    # Two images of different sizes: weighted by dimensions, not averaged per image.
    assert metrics.dataset_bits_per_dim([-math.log(2) * 10, -math.log(2) * 90], [10, 30]) == pytest.approx(2.5)


def test_precision_recall_hand_computed():
    target = np.array([[1, 1, 0, 0], [0, 0, 0, 0]])
    pred = np.array([[1, 0, 1, 0], [0, 0, 0, 1]])
    mask = np.array([[1, 1, 1, 1], [1, 1, 1, 0]])  # the last false positive lies outside the FOV
    p, r = metrics.precision_recall(pred, target, mask)
    assert p.tolist() == [0.5] and r.tolist() == [0.5]
    p, r = metrics.precision_recall(pred, target)
    assert p[0] == pytest.approx(1 / 3)


def test_vessel_fscore_is_f_of_averages():
    # Image 1: P=1, R=1/2. Image 2: P=1/2, R=1. Averages P=R=3/4 -> F=0.75; mean of per-image F = 2/3.
    t1 = np.array([[1, 1, 0, 0]])
    y1 = np.array([[1, 0, 0, 0]])
    t2 = np.array([[1, 0, 0, 0]])
    y2 = np.array([[1, 1, 0, 0]])
    out = metrics.vessel_fscore([y1.astype(float), y2.astype(float)], [t1, t2], thresholds=[0.5])
    assert out["f1"] == pytest.approx(0.75)
    assert out["per_image"]["precision"] == [1.0, 0.5]
    assert out["per_image"]["recall"] == [0.5, 1.0]


def test_vessel_fscore_soft_maximum_over_thresholds():
    target = np.array([[1, 1, 0, 0, 0]])
    soft = np.array([[0.9, 0.6, 0.7, 0.2, 0.1]])
    out = metrics.vessel_fscore(soft, target)
    # t=0.9: P1 R.5 F=2/3; t=0.7: P.5 R.5; t=0.6: P2/3 R1 F=0.8; lower thresholds add false positives.
    assert out["f1"] == pytest.approx(0.8)
    assert out["threshold"] == pytest.approx(0.6)
    curve = out["curve"]
    assert curve["thresholds"] == pytest.approx([0.1, 0.2, 0.6, 0.7, 0.9])
    assert curve["recall"] == pytest.approx([1, 1, 1, 0.5, 0.5])
    assert curve["precision"] == pytest.approx([0.4, 0.5, 2 / 3, 0.5, 1.0])


def test_iou_foreground_and_classes():
    target = np.array([[1, 1, 0, 0]])
    pred = np.array([[1, 0, 1, 0]])
    # foreground: |{0}| / |{0,1,2}| = 1/3; background: |{3}| / |{1,2,3}| = 1/3.
    assert metrics.iou(pred, target) == pytest.approx(1 / 3)
    assert metrics.iou(pred, target, mode="classes") == pytest.approx(1 / 3)
    perfect = np.array([[1, 1, 0, 0]])
    # Averaged over images, not pooled: (1/3 + 1) / 2.
    assert metrics.iou(np.stack([pred, perfect]), np.stack([target, target])) == pytest.approx(2 / 3)
    assert metrics.iou(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0


def test_superpixel_accuracy_majority_vote():
    sp = np.array([[0, 0, 0, 1], [1, 1, 2, 2]])
    target = np.array([[2, 2, 2, 1], [1, 1, 0, 0]])
    # sp0 majority 2 (right despite one wrong pixel), sp1 majority 0 (wrong), sp2: tie 0/1 -> 0 (right).
    pred = np.array([[2, 2, 1, 0], [0, 1, 0, 1]])
    assert metrics.superpixel_accuracy(pred, target, sp) == pytest.approx(2 / 3)
    # Pooled over images: 2 of 3 plus 3 of 3.
    assert metrics.superpixel_accuracy([pred, target], [target, target], [sp, sp]) == pytest.approx(5 / 6)
