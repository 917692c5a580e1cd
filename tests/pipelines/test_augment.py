"""pipelines/data/augment.py: per-key generators, the joint DRIVE warp, aligned random patches."""
from __future__ import annotations

import numpy as np
import pytest

from pipelines.data.augment import drive_augment, key_rng, random_patch


def test_key_rng_is_seeded_by_key_seed_and_epoch():
    draw = lambda *a: key_rng(*a).integers(0, 2**62)  # noqa: E731
    assert draw("k1", 0, 0) == draw("k1", 0, 0)
    assert len({draw("k1", 0, 0), draw("k2", 0, 0), draw("k1", 1, 0), draw("k1", 0, 1)}) == 4


def test_drive_augment_is_joint():
    rng = np.random.default_rng(0)
    y = np.zeros((41, 41, 1), np.float32)
    y[20, 5:36] = 1.0  # a horizontal line
    out = drive_augment({"y": y, "x": y.copy(), "mask": np.ones_like(y)}, rng, discrete={"y", "mask"})
    assert set(np.unique(out["y"])) <= {0.0, 1.0} and set(np.unique(out["mask"])) <= {0.0, 1.0}
    assert np.corrcoef(out["x"].ravel(), out["y"].ravel())[0, 1] > 0.8  # image and label moved together
    assert not np.array_equal(out["y"], y)


def test_drive_augment_into_a_patch_is_the_crop_of_the_whole_warp():
    """Warping straight into a patch around a centre equals warping the image and cropping that patch."""
    image = np.random.default_rng(1).random((41, 45, 3)).astype(np.float32)
    label = (image[..., :1] > 0.5).astype(np.float32)
    arrays = {"x": image, "y": label}
    whole = drive_augment(arrays, np.random.default_rng(7), discrete={"y"}, center=(20, 22))
    patch = drive_augment(arrays, np.random.default_rng(7), discrete={"y"}, out_shape=(21, 25), center=(20, 22))
    assert patch["x"].shape == (21, 25, 3) and patch["y"].shape == (21, 25, 1)
    np.testing.assert_allclose(patch["x"], whole["x"][10:31, 10:35], atol=1e-6)
    np.testing.assert_array_equal(patch["y"], whole["y"][10:31, 10:35])
    with pytest.raises(ValueError, match="'y' is"):
        drive_augment({"x": image, "y": label[:40]}, np.random.default_rng(0), discrete={"y"})


def test_drive_augment_matches_scipy_affine_transform():
    """The warp is the affine map scipy.ndimage.affine_transform applies (an independent reference)."""
    from scipy import ndimage

    image = np.random.default_rng(2).random((50, 60, 1)).astype(np.float32)
    out = drive_augment({"x": image}, np.random.default_rng(3), discrete=set(), out_shape=(30, 40), center=(24, 31))
    rng = np.random.default_rng(3)  # the same draws, in the same order
    theta, scale, shear = np.deg2rad(rng.uniform(0, 360)), rng.uniform(0.8, 1.2), np.deg2rad(rng.normal(0, 10))
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    inverse = np.linalg.inv(rotation @ np.diag([scale, scale]) @ np.array([[1, np.tan(shear)], [0, 1]]))
    offset = np.array([24, 31]) - inverse @ np.array([14.5, 19.5])
    reference = ndimage.affine_transform(image[..., 0], inverse, offset=offset, output_shape=(30, 40), order=1,
                                         mode="constant", cval=0.0)
    rows, cols = np.mgrid[0:30, 0:40]
    source = np.einsum("ij,jhw->ihw", inverse, np.stack([rows, cols])) + offset[:, None, None]
    inside = (source[0] > 1) & (source[0] < 48) & (source[1] > 1) & (source[1] < 58)  # away from the border
    assert inside.mean() > 0.3
    np.testing.assert_allclose(out["x"][..., 0][inside], reference[inside], atol=1e-5)


def test_random_patch_windows_x_on_its_own_grid():
    """SR: the y window starts on a multiple of the scale and x's window is the same region at x's size."""
    y = np.arange(16 * 16, dtype=np.float32).reshape(16, 16, 1)
    x = y[::2, ::2] + 0.5  # x pixel (i, j) <-> y pixel (2i, 2j)
    sp = y.copy()
    for seed in range(5):
        py, px, pm, extras = random_patch(y, x, np.ones_like(y), {"sp": sp}, 8, 2, np.random.default_rng(seed))
        assert py.shape == (8, 8, 1) and px.shape == (4, 4, 1) and pm.shape == (8, 8, 1)
        np.testing.assert_array_equal(px, py[::2, ::2] + 0.5)
        np.testing.assert_array_equal(extras["sp"], py)
    small, _, mask, _ = random_patch(y[:5, :5], None, np.ones((5, 5, 1), np.float32), {}, 8, 1,
                                     np.random.default_rng(0))
    assert small.shape == (8, 8, 1) and mask.sum() == 25  # zero-padded, padding outside the mask
    with pytest.raises(ValueError, match="multiple of the SR scale"):
        random_patch(y, x, np.ones_like(y), {}, 7, 2, np.random.default_rng(0))
