"""pipelines/data/imaging.py: MATLAB bicubic imresize (checked on Set5), nearest resize, crops, padding."""
from __future__ import annotations

import zipfile

import numpy as np
import pytest

from flowlib import metrics
from pipelines.data import imaging
from tests.conftest import shared_archive


def test_imresize_shapes_and_constants():
    image = np.full((7, 9, 3), 77, np.uint8)
    assert imaging.imresize(image, 0.5).shape == (4, 5, 3)  # ceil, as MATLAB
    assert imaging.imresize(image, 2).shape == (14, 18, 3)
    assert np.all(imaging.imresize(image, 0.5) == 77) and np.all(imaging.imresize(image, 3) == 77)
    assert imaging.imresize(image, output_shape=(5, 6)).shape == (5, 6, 3)


def test_imresize_upscaling_reproduces_a_ramp_in_the_interior():
    # Keys' cubic (a = -0.5) reproduces linear functions exactly; output pixel x samples u = x/2 + 1/4.
    ramp = np.tile(np.arange(16, dtype=np.float64), (4, 1))
    up = imaging.imresize(ramp, 2)
    u = np.arange(1, 33) / 2 + 0.25 - 1  # 0-based source coordinate
    np.testing.assert_allclose(up[0, 4:-4], u[4:-4], atol=1e-12)


def test_imresize_downscaling_antialiases():
    checker = (np.indices((32, 32)).sum(0) % 2 * 255).astype(np.float64)
    small = imaging.imresize(checker, 0.5)
    # Without the widened kernel, point sampling would alias to a flat 0 or 255 image.
    assert np.allclose(small[2:-2, 2:-2], 127.5, atol=1.0)


def test_set5_bicubic_x2_psnr_ssim_on_y(tmp_path):
    from PIL import Image
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    with zipfile.ZipFile(shared_archive("Set5.zip")) as archive:
        archive.extractall(tmp_path)
    psnrs, ssims = [], []
    for path in sorted(tmp_path.rglob("*.png")):
        hr = imaging.modcrop(np.asarray(Image.open(path).convert("RGB")), 2)
        up = imaging.imresize(imaging.bicubic_lr(hr, 2), 2)
        # BT.601 Y of [0, 1] RGB, channel first; shave `scale` border pixels.
        y_hr, y_up = (metrics.rgb_to_y(a.transpose(2, 0, 1) / 255.0)[2:-2, 2:-2] for a in (hr, up))
        psnrs.append(peak_signal_noise_ratio(y_hr, y_up, data_range=255))
        ssims.append(structural_similarity(y_hr, y_up, data_range=255, gaussian_weights=True, sigma=1.5,
                                           use_sample_covariance=False))
    assert len(psnrs) == 5
    assert abs(np.mean(psnrs) - 33.66) < 0.1, psnrs
    assert abs(np.mean(ssims) - 0.930) < 0.005, ssims


def test_modcrop_nearest_and_centre_square():
    image = np.arange(7 * 9).reshape(7, 9)
    assert imaging.modcrop(image, 2).shape == (6, 8) and imaging.modcrop(image, 2)[0, 0] == 0
    labels = np.array([[0, 1], [2, 3]])
    np.testing.assert_array_equal(imaging.resize_nearest(labels, (4, 4)),
                                  np.repeat(np.repeat(labels, 2, axis=0), 2, axis=1))
    square = imaging.center_square(image)
    assert square.shape == (7, 7) and square[0, 0] == image[0, 1]
    assert imaging.hwc(labels).shape == (2, 2, 1) and imaging.hwc(image[..., None]).shape == (7, 9, 1)


def test_pad_to_multiple():
    array = np.random.default_rng(1).random((565, 584, 3))
    padded = imaging.pad_to_multiple(array, 4)
    assert padded.shape == (3, 568, 584) and padded.dtype == np.float32 and padded.flags.c_contiguous
    np.testing.assert_array_equal(padded, np.pad(array, [(0, 3), (0, 0), (0, 0)]).transpose(2, 0, 1)
                                  .astype(np.float32))
    assert imaging.pad_to_multiple(array, 1).shape == (3, 565, 584)
    edge = imaging.pad_to_multiple(array, 8, "edge")
    np.testing.assert_array_equal(edge, np.pad(array, [(0, 3), (0, 0), (0, 0)], mode="edge").transpose(2, 0, 1)
                                  .astype(np.float32))
    with pytest.raises(ValueError, match="mode must be one of"):
        imaging.pad_to_multiple(array, 8, "reflect")
