"""Embedded demo datasets: small, offline, deterministic stand-ins with the real sets' keys, members and splits.

Built from the images scikit-image ships (``skimage.data``, no download) plus procedural labels, so the whole
demo pipeline runs in minutes on two cores. Same seed, same bytes: every generator uses a fixed
``numpy.random.default_rng`` and the shard writer is byte-deterministic. docs/datasets.md lists each set.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from pipelines.data import imaging

DEMO_VERSION = "demo/3"  # bump whenever a demo set changes, so existing demo shards are rebuilt


# ----------------------------------------------------------------------------------------- image sources
def _photos() -> list[tuple[str, np.ndarray]]:
    """Colour photographs shipped with scikit-image, as (name, uint8 HxWx3)."""
    from skimage import data

    out = []
    for name in ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field",
                 "colorwheel", "motorcycle_left", "retina"):
        image = np.asarray(getattr(data, name)() if name != "motorcycle_left" else data.stereo_motorcycle()[0])
        out.append((name, image[..., :3].astype(np.uint8)))
    for name in ("camera", "coins", "moon"):
        gray = np.asarray(getattr(data, name)())
        out.append((name, np.repeat(gray[..., None], 3, axis=2).astype(np.uint8)))
    return out


_ZOOMED: dict[tuple[int, float], np.ndarray] = {}


def _crop(image: np.ndarray, size: int, rng: np.random.Generator, zoom: float) -> np.ndarray:
    """A random ``size`` x ``size`` crop of the image downscaled by ``zoom`` (MATLAB bicubic)."""
    zoom = max(zoom, size / min(image.shape[:2]))
    cache_key = (id(image), zoom)  # photos are loaded once per build and kept alive by the caller
    if cache_key not in _ZOOMED:
        _ZOOMED[cache_key] = imaging.imresize(image, zoom) if zoom != 1 else image
    small = _ZOOMED[cache_key]
    h, w = small.shape[:2]
    for _ in range(20):  # skip flat crops (black borders of retina/hubble): they teach nothing
        top, left = rng.integers(0, h - size + 1), rng.integers(0, w - size + 1)
        crop = small[top: top + size, left: left + size]
        if crop.std() >= 20:
            break
    return np.ascontiguousarray(crop)


def _sr_sample(key: str, hr: np.ndarray, scale: int, source: str) -> dict:
    hr = imaging.modcrop(hr, scale)
    return {"__key__": key, "input.png": imaging.bicubic_lr(hr, scale), "target.png": hr,
            "meta.json": {"task": "sr", "scale": scale, "original_size": list(hr.shape[:2]),
                          "source_files": [f"skimage.data.{source}"], "demo": True}}


def _sr_set(n: dict[str, int], size: int, seed: int, key_fn: Callable[[str, int, str], str]) -> dict:
    rng = np.random.default_rng(seed)
    photos = _photos()
    splits = {}
    for split, count in n.items():
        samples = []
        for i in range(count):
            name, image = photos[int(rng.integers(len(photos)))]
            zoom = float(rng.choice([0.25, 0.35, 0.5]))
            samples.append(_sr_sample(key_fn(split, i, name), _crop(image, size, rng, zoom), 2, name))
        splits[split] = samples
    return splits


# ------------------------------------------------------------------------------------------------- DRIVE
def _vessel_tree(size: int, rng: np.random.Generator, disc_center, radius: float) -> np.ndarray:
    """A binary branching vessel tree growing from the optic disc (width shrinks by 0.75 per branching)."""
    canvas = np.zeros((size, size), bool)
    yy, xx = np.mgrid[:size, :size]

    def grow(y, x, angle, width, depth):
        length = rng.uniform(0.25, 0.45) * size
        for _ in range(int(length)):
            angle += rng.normal(0, 0.12)
            y, x = y + np.sin(angle), x + np.cos(angle)
            if (y - disc_center[0]) ** 2 + (x - disc_center[1]) ** 2 > (radius * 1.05) ** 2:
                return
            canvas[(yy - y) ** 2 + (xx - x) ** 2 <= (width / 2) ** 2] = True
        if depth < 3 and width > 0.9:
            spread = rng.uniform(0.35, 0.7)
            grow(y, x, angle + spread, width * 0.75, depth + 1)
            grow(y, x, angle - spread, width * 0.75, depth + 1)

    for root in rng.uniform(0, 2 * np.pi, size=4):
        grow(disc_center[0], disc_center[1], root, rng.uniform(2.0, 2.8), 0)
    return canvas


def _second_observer(target: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A second annotation: the first with random thin parts dropped and edges shifted by one pixel."""
    from scipy import ndimage

    eroded = ndimage.binary_erosion(target)
    dilated = ndimage.binary_dilation(target)
    choice = rng.random(target.shape)
    out = np.where(choice < 0.15, eroded, np.where(choice > 0.9, dilated, target))
    return out.astype(np.uint8)


def drive() -> dict:
    """DRIVE-like fundus images: 4 train (keys 21..24) + 2 test (01, 02) at 64x64 with FOV and 2nd observer."""
    from scipy import ndimage

    rng = np.random.default_rng(2004)
    size = 64
    yy, xx = np.mgrid[:size, :size]
    splits: dict[str, list] = {"train": [], "test": []}
    for split, keys in (("train", ["21", "22", "23", "24"]), ("test", ["01", "02"])):
        for key in keys:
            center = (size / 2 + rng.normal(0, 1), size / 2 + rng.normal(0, 1))
            radius = size * 0.46
            fov = ((yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2).astype(np.uint8)
            disc = (center[0] + rng.uniform(-8, 8), center[1] + rng.choice([-1, 1]) * rng.uniform(10, 16))
            vessels = _vessel_tree(size, rng, center, radius) & fov.astype(bool)
            # Fundus look: orange-red field, brighter optic disc, vignetting, dark vessels, sensor noise.
            r2 = ((yy - center[0]) ** 2 + (xx - center[1]) ** 2) / radius**2
            shade = 1.0 - 0.45 * r2
            base = np.stack([200 * shade, 90 * shade, 40 * shade], -1)
            base += 60 * np.exp(-((yy - disc[0]) ** 2 + (xx - disc[1]) ** 2) / 18.0)[..., None]
            blurred_vessels = ndimage.gaussian_filter(vessels.astype(float), 0.6)
            base *= (1 - 0.5 * blurred_vessels)[..., None]
            base += rng.normal(0, 4, base.shape)
            image = np.clip(base * fov[..., None], 0, 255).astype(np.uint8)
            sample = {"__key__": key, "input.png": image, "target.png": vessels.astype(np.uint8),
                      "mask.png": fov}
            meta = {"task": "vessel", "original_size": [size, size], "label_values": [0, 1], "demo": True,
                    "source_files": ["procedural"]}
            if split == "test":
                sample["target2.png"] = _second_observer(vessels.astype(np.uint8), rng)
            sample["meta.json"] = meta
            splits[split].append(sample)
    return splits


# ---------------------------------------------------------------------------------------- horses, shapes
def horses() -> dict:
    """Weizmann-horse-like: the scikit-image horse silhouette, flipped/scaled/shifted on textured grounds."""
    from skimage import data

    rng = np.random.default_rng(2002)
    silhouette = ~np.asarray(data.horse())  # skimage's horse is drawn False on True
    grass = np.asarray(data.grass())
    size = 64
    splits: dict[str, list] = {"train": [], "test": []}
    counter = 1
    for split, count in (("train", 8), ("test", 4)):
        for _ in range(count):
            zoom = rng.uniform(0.12, 0.15)
            mask = imaging.imresize(silhouette.astype(np.float64), zoom) > 0.5
            if rng.random() < 0.5:
                mask = mask[:, ::-1]
            h, w = mask.shape
            canvas = np.zeros((size, size), bool)
            top, left = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
            canvas[top: top + h, left: left + w] = mask
            ground = _crop(np.repeat(grass[..., None], 3, 2), size, rng, 0.25).astype(float) / 255
            tint = np.array([0.45, 0.6, 0.3]) * rng.uniform(0.8, 1.2)
            coat = np.array([0.45, 0.28, 0.15]) * rng.uniform(0.6, 1.3)
            image = np.where(canvas[..., None], coat * (0.7 + 0.6 * ground), tint * (0.5 + ground))
            image = np.clip(image * 255 + rng.normal(0, 3, image.shape), 0, 255).astype(np.uint8)
            key = f"horse{counter:03d}"
            counter += 1
            splits[split].append({"__key__": key, "input.png": image, "target.png": canvas.astype(np.uint8),
                                  "meta.json": {"task": "horses", "original_size": [size, size],
                                                "label_values": [0, 1], "demo": True,
                                                "source_files": ["skimage.data.horse"]}})
    return splits


def lfw_parts() -> dict:
    """LFW-part-label-like: skimage's 200 LFW faces (25x25) tinted, with face/hair/background labels.

    Labels: an ellipse for the face, a wider ellipse above it (minus the face) for hair, the rest background;
    super-pixels from SLIC on the input, as in the real release.
    """
    from skimage import data
    from skimage.segmentation import slic

    rng = np.random.default_rng(2013)
    faces = np.asarray(data.lfw_subset())
    size = 32
    yy, xx = np.mgrid[:size, :size]
    splits: dict[str, list] = {"train": [], "valid": [], "test": []}
    index = 0
    for split, count in (("train", 12), ("valid", 4), ("test", 4)):
        for _ in range(count):
            face = imaging.imresize(faces[index], output_shape=(20, 20))
            index += 1
            cy, cx = 17 + rng.normal(0, 1), 16 + rng.normal(0, 1)
            face_region = ((yy - cy) / 11) ** 2 + ((xx - cx) / 9) ** 2 <= 1
            hair_region = (((yy - cy + 5) / 12) ** 2 + ((xx - cx) / 11.5) ** 2 <= 1) & ~face_region & (yy < cy)
            labels = np.zeros((size, size), np.uint8)
            labels[face_region] = 1
            labels[hair_region] = 2
            background = rng.uniform(0.2, 0.9, 3)
            skin = np.array([0.93, 0.75, 0.6]) * rng.uniform(0.7, 1.0)
            hair = np.array([0.25, 0.17, 0.1]) * rng.uniform(0.3, 1.5)
            lum = np.full((size, size), 0.7)
            lum[6:26, 6:26] = np.clip(face, 0, 1) * 0.8 + 0.4
            image = np.where((labels == 1)[..., None], skin * lum[..., None],
                             np.where((labels == 2)[..., None], hair[None, None, :], background[None, None, :]))
            image = np.clip(image * 255 + rng.normal(0, 3, image.shape), 0, 255).astype(np.uint8)
            superpixels = slic(image, n_segments=40, compactness=10, start_label=0).astype(np.uint16)
            key = f"Demo_Face_{index:04d}"
            splits[split].append({"__key__": key, "input.png": image, "target.png": labels,
                                  "superpixels.png": superpixels,
                                  "meta.json": {"task": "parts", "original_size": [size, size],
                                                "label_values": [0, 1, 2],
                                                "label_names": ["background", "face", "hair"], "demo": True,
                                                "source_files": ["skimage.data.lfw_subset"]}})
    return splits


# --------------------------------------------------------------------------------------------- denoising
def _clean_images(counts: dict[str, int], size: int, seed: int, task: str, key_fn) -> dict:
    rng = np.random.default_rng(seed)
    photos = _photos()
    splits = {}
    for split, count in counts.items():
        samples = []
        for i in range(count):
            name, image = photos[int(rng.integers(len(photos)))]
            crop = _crop(image, size, rng, float(rng.choice([0.2, 0.3])))
            samples.append({"__key__": key_fn(split, i, name), "target.png": crop,
                            "meta.json": {"task": task, "original_size": [size, size], "demo": True,
                                          "source_files": [f"skimage.data.{name}"]}})
        splits[split] = samples
    return splits


def bsds500() -> dict:
    """Train 8 and valid 2 (the real reader's valid: BSDS500 val less CBSD68), keys apart as BSDS ids are."""
    return _clean_images({"train": 8, "valid": 2}, 64, 500, "denoise",
                         lambda s, i, n: f"{(100000 if s == 'train' else 300000) + i * 7919}")


def cbsd68() -> dict:
    return _clean_images({"test": 5}, 64, 68, "denoise", lambda s, i, n: f"{200000 + i * 104729}")


# ------------------------------------------------------------------------------------------------- depth
#: Kinect v1 geometry: IR camera-projector baseline (m) and disparity quantisation (1/8 pixel).
KINECT_BASELINE_M, KINECT_SUBPIXEL = 0.075, 8
KINECT_RANGE_M = (0.5, 4.0)  # metres: what 7-Scenes frames hold (the sensor is specified to about 4 m)


def kinect_v1_depth(depth: np.ndarray, rng: np.random.Generator, focal: float) -> np.ndarray:
    """What a Kinect v1 measures of a clean depth map (H, W) in metres (0 = no surface): noisy, with holes.

    In the order the sensor makes them (0 = invalid, as in 7-Scenes' ``.depth.png``):
      1. projector shadows: a pixel the IR projector (``KINECT_BASELINE_M`` to the side) cannot see, i.e. one
         whose projector column ``u + f b / z`` lies left of a nearer pixel's on its row, gets no depth;
      2. ragged edges: the 9x9 correlation window mixes the two sides of a depth edge, so pixels within 2 px of
         a jump over 5 cm take a random neighbour's depth (foreground or background: "flying" edge pixels);
      3. axial noise ``sigma(z) = 0.0012 + 0.0019 (z - 0.4)^2`` m (Nguyen, Izadi & Lovell 2012);
      4. disparity quantised to 1/8 pixel: ``z = f b / (round(8 f b / z) / 8)`` (Khoshelham & Elberink 2012),
         steps of z^2 / (8 f b), 1.2 cm at 2 m for a 585 px focal length;
      5. drop-outs: small blobs (specular, dark or oblique surfaces) over about 2 % of the pixels, and
         everything outside ``KINECT_RANGE_M``.
    """
    from scipy import ndimage

    fb = focal * KINECT_BASELINE_M
    valid = depth > 0
    z = np.where(valid, depth, np.inf)
    cols = np.arange(depth.shape[1])[None, :]
    projector = np.where(valid, cols + fb / z, -np.inf)
    shadow = valid & (projector < np.maximum.accumulate(projector, axis=1) - 0.5)
    out = np.where(valid & ~shadow, depth, 0.0)
    # Ragged edges: 2 px around jumps of over 5 cm take a random neighbour's value.
    jump = ndimage.maximum_filter(out, 3) - ndimage.minimum_filter(np.where(out > 0, out, np.inf), 3)
    edge = ndimage.binary_dilation(np.isfinite(jump) & (jump > 0.05), iterations=1) & (out > 0)
    rows, cols_e = np.nonzero(edge)
    dr, dc = rng.integers(-2, 3, rows.size), rng.integers(-2, 3, rows.size)
    r2 = np.clip(rows + dr, 0, depth.shape[0] - 1)
    c2 = np.clip(cols_e + dc, 0, depth.shape[1] - 1)
    out[rows, cols_e] = out[r2, c2]
    live = out > 0
    noisy = out + rng.normal(size=out.shape) * (0.0012 + 0.0019 * (out - 0.4) ** 2)
    disparity = np.round(KINECT_SUBPIXEL * fb / np.where(live, noisy, 1.0)) / KINECT_SUBPIXEL
    measured = np.where(live & (disparity > 0), fb / np.maximum(disparity, 1e-6), 0.0)
    blobs = ndimage.gaussian_filter(rng.random(out.shape), 1.5)
    drop = blobs > np.quantile(blobs, 0.98)
    in_range = (measured >= KINECT_RANGE_M[0]) & (measured <= KINECT_RANGE_M[1])
    return np.where(in_range & ~drop, measured, 0.0).astype(np.float32)


def _camera_path(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    """``n`` camera-to-world poses of a hand-held sweep: ~1.5 cm and ~0.2 degree per frame, centred on frame n//2."""
    step = rng.normal(0, 1, 3)
    step = 0.015 * step / np.linalg.norm(step)
    spin = np.deg2rad(rng.uniform(-0.2, 0.2))
    poses = []
    for i in range(n):
        k = i - n // 2
        a = k * spin
        pose = np.eye(4)
        pose[:3, :3] = [[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]]
        pose[:3, 3] = k * step
        poses.append(pose)
    return poses


def sevenscenes() -> dict:
    """7-Scenes-like frames made the way the reader makes them: raw Kinect depth in, temporally fused depth out.

    The scene is the Middlebury motorcycle disparity as metric depth (median 2 m, 0.5-4 m), at half resolution,
    seen by a camera with the 7-Scenes focal length scaled to it. Each sample is the centre frame of its own
    9-frame hand-held sweep: every frame is rendered from its pose and measured by :func:`kinect_v1_depth`;
    ``input.npy`` is the centre frame's measurement, ``target.npy`` the fusion of the nine
    (:func:`pipelines.data.datasets.fusion.fuse_depth`, the reader's code), ``mask.png`` its valid pixels.
    Stored frames are a 96x128 window of the view (a small sensor): the task crops them, never resizes.
    6 train (chess) + 3 test (fire, office, stairs).
    """
    from skimage import data

    from pipelines.data.datasets.fusion import FusionParams, backproject, fuse_depth, render, transform

    rng = np.random.default_rng(7)
    _, _, disparity = data.stereo_motorcycle()
    disparity = np.asarray(disparity, np.float64)
    valid_full = np.isfinite(disparity) & (disparity > 0)
    # depth = f B / disparity with f B set so the median depth is 2 m, inside 7-Scenes' 0.5-4 m Kinect range.
    focal_baseline = 2.0 * np.median(disparity[valid_full])
    depth_full = np.where(valid_full, focal_baseline / np.where(valid_full, disparity, 1.0), 0.0)
    depth_full = np.where(valid_full, np.clip(depth_full, 0.5, 4.0), 0.0)[::2, ::2]
    h, w = depth_full.shape
    focal = 585.0 * w / 640.0
    fusion = FusionParams()
    n_frames, centre = 2 * fusion.radius + 1, fusion.radius
    window, margin = (96, 128), 32  # the sweep moves the view by under 15 px: 32 px keep the window covered
    shape = (window[0] + 2 * margin, window[1] + 2 * margin)
    box = (slice(margin, margin + window[0]), slice(margin, margin + window[1]))
    splits: dict[str, list] = {"train": [], "test": []}
    for split, scenes, count in (("train", ["chess"], 6), ("test", ["fire", "office", "stairs"], 3)):
        for i in range(count):
            scene = scenes[i % len(scenes)]
            poses = _camera_path(rng, n_frames)
            top = int(rng.integers(margin, h - window[0] - margin))
            left = int(rng.integers(margin, w - window[1] - margin))
            # Only the window and its margin are rendered: a sensor whose principal point is moved to match.
            intrinsics = (focal, focal, w / 2.0 - (left - margin), h / 2.0 - (top - margin))
            region = depth_full[top - margin: top + window[0] + margin, left - margin: left + window[1] + margin]
            world = backproject(region, intrinsics)  # the reference camera is the world frame
            raw = [kinect_v1_depth(render(transform(world, np.linalg.inv(p)), intrinsics, shape), rng, focal)
                   for p in poses]
            target, valid = fuse_depth(raw, poses, centre, intrinsics, fusion)
            key = f"{scene}_seq-{i + 1:02d}_frame-{centre:06d}"
            splits[split].append({
                "__key__": key, "input.npy": np.ascontiguousarray(raw[centre][box]),
                "target.npy": np.ascontiguousarray(target[box]), "mask.png": np.ascontiguousarray(valid[box]),
                "meta.json": {"task": "depth", "units": "metres", "original_size": list(window), "demo": True,
                              "target": "temporal fusion", "fusion": dataclasses.asdict(fusion),
                              "source_files": ["skimage.data.stereo_motorcycle"]}})
    return splits


# ------------------------------------------------------------------------------------------------ celeba
def celeba(shape: tuple[int, int] = (64, 64)) -> dict:
    """CelebA-like aligned faces: skimage's LFW faces tinted to colour (train 12, valid 2, test 4).

    64x64 for ``celeba``; ``celeba_subset`` has the subset's 89x109 (``shape`` (H, W) = (109, 89)).
    """
    from skimage import data

    rng = np.random.default_rng(2015)
    faces = np.asarray(data.lfw_subset())[20:100]  # the first 100 are faces (the rest are not); lfw_parts uses 0..19
    splits: dict[str, list] = {"train": [], "valid": [], "test": []}
    index = 0
    for split, count in (("train", 12), ("valid", 2), ("test", 4)):
        for _ in range(count):
            gray = np.clip(imaging.imresize(faces[index], output_shape=shape), 0, 1)
            index += 1
            tint = np.array([1.0, 0.82, 0.7]) * rng.uniform(0.8, 1.1)
            image = np.clip(gray[..., None] * tint * 255, 0, 255).astype(np.uint8)
            splits[split].append({"__key__": f"{index:06d}", "target.png": image,
                                  "meta.json": {"task": "inpaint", "original_size": list(shape), "demo": True,
                                                "source_files": ["skimage.data.lfw_subset"]}})
    return splits


DEMOS: dict[str, Callable[[], dict]] = {
    "drive": drive,
    "imagenet32": lambda: _sr_set({"train": 64, "valid": 8}, 32, 32, lambda s, i, n: f"{s}_{i:07d}"),
    "imagenet64": lambda: _sr_set({"train": 32, "valid": 8}, 64, 64, lambda s, i, n: f"{s}_{i:07d}"),
    "set5": lambda: _sr_set({"test": 5}, 48, 5, lambda s, i, n: f"{n}_{i}"),
    "set14": lambda: _sr_set({"test": 5}, 48, 14, lambda s, i, n: f"{n}_{i}"),
    "bsd100": lambda: _sr_set({"test": 5}, 48, 100, lambda s, i, n: f"{n}_{i}"),
    "sr_train": lambda: _sr_set({"train": 16, "valid": 4}, 48, 291, lambda s, i, n: f"{n}_{s}_{i}"),
    "horses": horses,
    "lfw_parts": lfw_parts,
    "bsds500": bsds500,
    "cbsd68": cbsd68,
    "sevenscenes": sevenscenes,
    "celeba": celeba,
    "celeba_subset": lambda: celeba((109, 89)),
}


def build(name: str) -> dict[str, list[dict]]:
    """The demo set ``name`` as {split: [sample]} (samples in shard format, see pipelines/data/shards.py)."""
    if name not in DEMOS:
        raise KeyError(f"no demo set for {name!r}; demo sets: {sorted(DEMOS)}")
    try:
        return DEMOS[name]()
    finally:
        _ZOOMED.clear()  # ids are only meaningful while that build's photos are alive
