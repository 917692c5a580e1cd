"""pipelines/tasks.py: MATLAB bicubic imresize (checked on Set5), noise, masks, padding."""
from __future__ import annotations

import zipfile

import numpy as np
import pytest

from pipelines import tasks
from tests.conftest import shared_archive


def test_imresize_shapes_and_constants():
    image = np.full((7, 9, 3), 77, np.uint8)
    assert tasks.imresize(image, 0.5).shape == (4, 5, 3)  # ceil, as MATLAB
    assert tasks.imresize(image, 2).shape == (14, 18, 3)
    assert np.all(tasks.imresize(image, 0.5) == 77) and np.all(tasks.imresize(image, 3) == 77)
    assert tasks.imresize(image, output_shape=(5, 6)).shape == (5, 6, 3)


def test_imresize_upscaling_reproduces_a_ramp_in_the_interior():
    # Keys' cubic (a = -0.5) reproduces linear functions exactly; output pixel x samples u = x/2 + 1/4.
    ramp = np.tile(np.arange(16, dtype=np.float64), (4, 1))
    up = tasks.imresize(ramp, 2)
    u = np.arange(1, 33) / 2 + 0.25 - 1  # 0-based source coordinate
    np.testing.assert_allclose(up[0, 4:-4], u[4:-4], atol=1e-12)


def test_imresize_downscaling_antialiases():
    checker = (np.indices((32, 32)).sum(0) % 2 * 255).astype(np.float64)
    small = tasks.imresize(checker, 0.5)
    # Without the widened kernel, point sampling would alias to a flat 0 or 255 image.
    assert np.allclose(small[2:-2, 2:-2], 127.5, atol=1.0)


def test_set5_bicubic_x2_psnr_ssim_on_y(tmp_path):
    from PIL import Image
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    with zipfile.ZipFile(shared_archive("Set5.zip")) as archive:
        archive.extractall(tmp_path)
    psnrs, ssims = [], []
    for path in sorted(tmp_path.rglob("*.png")):
        hr = tasks.modcrop(np.asarray(Image.open(path).convert("RGB")), 2)
        up = tasks.imresize(tasks.bicubic_lr(hr, 2), 2)
        y_hr, y_up = (tasks.rgb_to_y(a)[2:-2, 2:-2] for a in (hr, up))  # shave `scale` border pixels
        psnrs.append(peak_signal_noise_ratio(y_hr, y_up, data_range=255))
        ssims.append(structural_similarity(y_hr, y_up, data_range=255, gaussian_weights=True, sigma=1.5,
                                           use_sample_covariance=False))
    assert len(psnrs) == 5
    assert abs(np.mean(psnrs) - 33.66) < 0.1, psnrs
    assert abs(np.mean(ssims) - 0.930) < 0.005, ssims


def test_noise_is_seeded_per_key():
    clean = np.full((64, 64, 3), 0.5, np.float32)
    a = tasks.add_gaussian_noise(clean, 25, tasks.key_rng("k1"))
    b = tasks.add_gaussian_noise(clean, 25, tasks.key_rng("k1"))
    c = tasks.add_gaussian_noise(clean, 25, tasks.key_rng("k2"))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert abs(float((a - clean).std()) - 25 / 255) < 0.01


def test_central_block_and_padding():
    block = tasks.central_block_mask(64, 64, 0.5)
    assert block.sum() == 32 * 32 and block[32, 32] == 1 and block[0, 0] == 0
    array = np.random.default_rng(1).random((565, 584, 3))
    padded = tasks.pad_to_multiple(array, 4)
    assert padded.shape == (3, 568, 584) and padded.dtype == np.float32 and padded.flags.c_contiguous
    np.testing.assert_array_equal(padded, np.pad(array, [(0, 3), (0, 0), (0, 0)]).transpose(2, 0, 1)
                                  .astype(np.float32))
    assert tasks.pad_to_multiple(array, 1).shape == (3, 565, 584)


def test_task_targets():
    assert {n: t.target for n, t in tasks.TASKS.items()} == {
        "sr": "image8", "vessel": "binary", "horses": "binary", "parts": "categorical",
        "denoise": "continuous", "depth": "continuous", "inpaint": "image8"}
    assert tasks.get_task("parts").num_classes == 3
    with pytest.raises(KeyError, match="unknown task"):
        tasks.get_task("nope")
