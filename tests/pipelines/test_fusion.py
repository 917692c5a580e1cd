"""pipelines/data/datasets/fusion.py: warping depth between posed cameras and fusing neighbouring frames."""
from __future__ import annotations

import numpy as np
import pytest

from pipelines.data.datasets.fusion import (FusionParams, backproject, fuse_depth, render, transform,
                                            warp_depth)

INTRINSICS = (60.0, 60.0, 32.0, 24.0)


def _pose(tx: float = 0.0, ty: float = 0.0, yaw_deg: float = 0.0) -> np.ndarray:
    a = np.deg2rad(yaw_deg)
    pose = np.eye(4)
    pose[:3, :3] = [[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]]
    pose[:3, 3] = [tx, ty, 0.0]
    return pose


def _wall(pose: np.ndarray, shape=(48, 64), distance: float = 2.0) -> np.ndarray:
    """The depth a camera at ``pose`` sees of the plane z = distance (world frame), by ray casting."""
    fx, fy, cx, cy = INTRINSICS
    v, u = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    rays = np.stack([(u - cx) / fx, (v - cy) / fy, np.ones_like(u)], -1) @ pose[:3, :3].T
    t = (distance - pose[2, 3]) / rays[..., 2]  # the ray (x, y, 1) in camera coordinates meets the wall at t
    return t.astype(np.float32)  # which is the hit's camera z


def test_backproject_then_render_is_the_identity():
    depth = np.random.default_rng(0).uniform(1, 3, (48, 64)).astype(np.float32)
    depth[5:9, 5:9] = 0.0
    again = render(backproject(depth, INTRINSICS), INTRINSICS, depth.shape)
    np.testing.assert_allclose(again, depth, rtol=1e-6)


def test_render_keeps_the_nearest_surface():
    points = np.array([[0.0, 0.0, 2.0], [0.0, 0.0, 1.0], [0.0, 0.0, 3.0]])
    depth = render(points, INTRINSICS, (48, 64))
    assert depth[24, 32] == 1.0 and (depth > 0).sum() == 1


def test_warp_moves_a_wall_by_the_camera_translation():
    """A fronto-parallel wall 2 m away seen from 10 cm to the right shifts by f * 0.1 / 2 = 3 px."""
    wall = np.full((48, 64), 2.0, np.float32)
    moved = warp_depth(wall, _pose(), _pose(tx=0.1), INTRINSICS)
    assert np.allclose(moved[:, :58][moved[:, :58] > 0], 2.0)
    assert (moved[:, -3:] == 0).all() and (moved[:, :60] > 0).all()  # the 3 columns nobody saw are empty
    np.testing.assert_allclose(transform(np.array([[1.0, 2.0, 3.0]]), _pose(tx=0.5)), [[1.5, 2.0, 3.0]])


def test_fusion_averages_noise_away_and_rejects_outliers():
    rng = np.random.default_rng(1)
    poses = [_pose(tx=0.01 * k, yaw_deg=0.1 * k) for k in range(-4, 5)]
    clean = [_wall(p) for p in poses]
    noisy = [(c + rng.normal(0, 0.01, c.shape)).astype(np.float32) for c in clean]
    noisy[4][10:14, 20:24] = 0.5  # a burst of wrong readings in the centre frame (flying pixels)
    noisy[4][30:34, 40:44] = 0.0  # and a hole
    fused, valid = fuse_depth(noisy, poses, 4, INTRINSICS, FusionParams())
    inner = (slice(4, 44), slice(8, 56))
    assert valid[inner].all()
    err_raw = np.abs(noisy[4] - clean[4])[inner]
    err_fused = np.abs(fused - clean[4])[inner]
    assert err_fused.mean() < 0.6 * err_raw[err_raw < 0.1].mean()  # about 1/3: nine frames, sqrt(9)
    assert np.abs(fused[10:14, 20:24] - 2.0).max() < 0.05  # the outliers were voted out
    assert np.abs(fused[30:34, 40:44] - 2.0).max() < 0.05  # the hole was filled by the neighbours


def test_fusion_needs_support_and_checks_its_arguments():
    poses = [_pose(), _pose(), _pose()]
    frames = [np.full((8, 8), 2.0, np.float32) for _ in poses]
    frames[1][:4] = 0.0
    frames[2][:4] = 0.0
    fused, valid = fuse_depth(frames, poses, 0, INTRINSICS, FusionParams(min_support=2))
    assert not valid[:4].any() and (fused[:4] == 0).all() and valid[4:].all()
    with pytest.raises(ValueError, match="3 frames, 2 poses"):
        fuse_depth(frames, poses[:2], 0, INTRINSICS)
