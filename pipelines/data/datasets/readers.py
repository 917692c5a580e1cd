"""Readers of the official releases: ``read_<name>(root, spec) -> {split: iterator of shard samples}``.

``root`` is the unpacked release (a folder; archives have been extracted, nested ones too). Readers find
files by name pattern at any depth, so a release re-zipped with an extra top folder still reads. Every
problem raises :class:`ReaderError` naming the offending file and what was expected: missing files,
undecodable images, label values outside the expected set, mismatched sizes.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import numpy as np

from pipelines import tasks

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".ppm", ".gif")


class ReaderError(RuntimeError):
    """A release file is missing, undecodable or has unexpected content; the message names it."""


def load_image(path: Path, mode: str | None = None) -> np.ndarray:
    """Decode an image fully (truncated files fail here, not later), optionally converting its PIL mode."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            if mode is not None:
                image = image.convert(mode)
            return np.asarray(image)
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for corrupt files
        raise ReaderError(f"{path}: cannot decode image ({type(exc).__name__}: {exc})") from exc


def binary_labels(path: Path, tolerance: int = 8) -> np.ndarray:
    """A black/white annotation as 0/1 uint8; grey levels farther than ``tolerance`` from 0/255 are an error.

    The tolerance admits palette GIFs whose two entries are near-black/near-white (DRIVE's 2nd_manual/01 uses
    grey levels 3 and 253); an annotation stored as 0/1 is accepted as is.
    """
    # Palette GIFs (DRIVE) are read through their palette ("L"), so the check sees grey levels, not indices.
    array = load_image(path, "L")
    found = np.unique(array)
    if set(found.tolist()) <= {0, 1}:
        return array.astype(np.uint8)
    bad = found[(found > tolerance) & (found < 255 - tolerance)]
    if bad.size:
        raise ReaderError(f"{path}: label values {found.tolist()[:10]} include {bad.tolist()[:5]}; expected "
                          f"black/white (0/255 within {tolerance}) or 0/1")
    return (array >= 128).astype(np.uint8)


def _find(root: Path, pattern: str) -> list[Path]:
    regex = re.compile(pattern, re.IGNORECASE)
    return sorted(p for p in root.rglob("*") if p.is_file() and regex.search(p.as_posix())
                  and not any(part.startswith(("__MACOSX", "._")) for part in p.parts))


def _one(root: Path, pattern: str, what: str) -> Path:
    found = _find(root, pattern)
    if not found:
        raise ReaderError(f"{root}: missing {what} (no file matching {pattern!r})")
    return found[0]


def _rgb(path: Path) -> np.ndarray:
    return load_image(path, "RGB")


def _meta(task: str, path_list: list[Path], root: Path, shape, **extra) -> dict:
    return {"task": task, "original_size": list(shape[:2]),
            "source_files": [p.relative_to(root).as_posix() for p in path_list], **extra}


# ----------------------------------------------------------------------------------------------- DRIVE
def read_drive(root: Path, spec) -> dict[str, Iterator[dict]]:
    """DRIVE: training 21..40 (1st_manual, mask), test 01..20 (1st_manual, 2nd_manual, mask); 565x584."""
    def split(name: str, keys: list[str]) -> Iterator[dict]:
        for key in keys:
            image_path = _one(root, rf"/{name}/images/{key}_{name}\.tif$", f"{name} image {key}")
            manual_path = _one(root, rf"/{name}/1st_manual/{key}_manual1\.gif$", f"{name} 1st_manual {key}")
            mask_path = _one(root, rf"/{name}/mask/{key}_{name}_mask\.gif$", f"{name} FOV mask {key}")
            image = _rgb(image_path)
            target, mask = binary_labels(manual_path), binary_labels(mask_path)
            for path, array in ((manual_path, target), (mask_path, mask)):
                if array.shape != image.shape[:2]:
                    raise ReaderError(f"{path}: size {array.shape} differs from {image_path.name} {image.shape[:2]}")
            sample = {"__key__": key, "input.png": image, "target.png": target, "mask.png": mask}
            files = [image_path, manual_path, mask_path]
            if name == "test":
                second = _one(root, rf"/test/2nd_manual/{key}_manual2\.gif$", f"test 2nd_manual {key}")
                sample["target2.png"] = binary_labels(second)
                files.append(second)
            sample["meta.json"] = _meta("vessel", files, root, image.shape, label_values=[0, 1])
            yield sample

    return {"train": split("training", [f"{i:02d}" for i in range(21, 41)]),
            "test": split("test", [f"{i:02d}" for i in range(1, 21)])}


# ------------------------------------------------------------------------------------------ SR benchmarks
def _sr_sample(key: str, path: Path, root: Path, scale: int) -> dict:
    image = load_image(path)
    mode = "gray" if image.ndim == 2 else "rgb"
    # Grayscale benchmark images (some of Set14, BSD100) are replicated to RGB: their Y channel is unchanged.
    hr = tasks.modcrop(_rgb(path), scale)
    return {"__key__": key, "input.png": tasks.bicubic_lr(hr, scale), "target.png": hr,
            "meta.json": _meta("sr", [path], root, image.shape, scale=scale, modcrop=scale,
                               hr_size=list(hr.shape[:2]), original_mode=mode)}


def _key_from_name(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9_\-]", "_", path.stem.split(".")[0])


def read_sr_benchmark(root: Path, spec) -> dict[str, Iterator[dict]]:
    """Set5 / Set14 / BSD100: every image under the folder (nested or not) is one HR test image.

    Releases that ship LR/HR pairs keep only HR files (folders or names marked LR / x2..x4 are skipped).
    """
    files = [p for p in _find(root, r"\.(png|jpe?g|bmp|tiff?)$")
             if not re.search(r"(^|[/_\-])(lr|lr_bicubic|x[234])([/_\-.]|$)", p.relative_to(root).as_posix(), re.I)]
    keys = [_key_from_name(p) for p in files]
    duplicates = {k for k in keys if keys.count(k) > 1}
    if duplicates:
        raise ReaderError(f"{root}: several images map to the keys {sorted(duplicates)}")
    scale = spec.scale or 2
    return {"test": (_sr_sample(k, p, root, scale) for k, p in zip(keys, files))}


# ------------------------------------------------------------------------------------ ImageNet32/64 npz
def read_imagenet_npz(root: Path, spec) -> dict[str, Iterator[dict]]:
    """Downsampled ImageNet (Chrabaszcz et al. 2017): train_data_batch_*.npz and val_data.npz.

    Each npz holds ``data`` (N, 3*S*S) uint8 in channel-major order (R plane, G plane, B plane). Keys are
    ``train_NNNNNNN`` / ``valid_NNNNNNN`` by position over the batches in numeric order; input.png is the
    x2 MATLAB-bicubic LR image (Winkler et al. 2019 model p(y|x) with x the downsampled y).
    """
    side = 32 if "32" in spec.name else 64
    scale = spec.scale or 2

    def batch_number(path: Path) -> int:
        match = re.search(r"(\d+)\.npz$", path.name)
        return int(match.group(1)) if match else 0

    def split(pattern: str, prefix: str) -> Iterator[dict]:
        files = sorted(_find(root, pattern), key=batch_number)
        if not files:
            raise ReaderError(f"{root}: no files matching {pattern!r} (expected the {spec.name} npz batches)")
        index = 0
        for path in files:
            try:
                with np.load(path) as npz:
                    data = npz["data"]
            except Exception as exc:  # noqa: BLE001
                raise ReaderError(f"{path}: cannot read npz 'data' ({exc})") from exc
            if data.ndim != 2 or data.shape[1] != 3 * side * side or data.dtype != np.uint8:
                raise ReaderError(f"{path}: data {data.shape} {data.dtype}, expected (N, {3 * side * side}) uint8")
            images = data.reshape(-1, 3, side, side).transpose(0, 2, 3, 1)
            for i, image in enumerate(images):
                yield {"__key__": f"{prefix}_{index:07d}", "input.png": tasks.bicubic_lr(image, scale),
                       "target.png": np.ascontiguousarray(image),
                       "meta.json": {"task": "sr", "scale": scale, "original_size": [side, side],
                                     "source_files": [f"{path.relative_to(root).as_posix()}#{i}"]}}
                index += 1

    return {"train": split(r"train_data_batch_\d+\.npz$", "train"), "valid": split(r"val_data\.npz$", "valid")}


# ------------------------------------------------------------------------------------------ Weizmann horses
def read_horses(root: Path, spec) -> dict[str, Iterator[dict]]:
    """Weizmann horses: rgb/ (or horse/) images with figure_ground/ (or mask/) masks; first 200 train, 128 test.

    The split follows c-Glow sec. 5.2 (200 train, 128 test) in file-name order.
    """
    images = [p for p in _find(root, r"/(rgb|horse|images?)/[^/]*horse[^/]*\.(jpe?g|png|bmp)$")]
    if not images:
        raise ReaderError(f"{root}: no horse images (expected rgb/horseNNN.jpg or horse/horseNNN.png)")
    masks = {p.stem.split(".")[0]: p for p in _find(root, r"/(figure_ground|mask|masks)/[^/]*\.(jpe?g|png|bmp|pgm)$")}

    def sample(path: Path) -> dict:
        key = _key_from_name(path)
        mask_path = masks.get(path.stem.split(".")[0])
        if mask_path is None:
            raise ReaderError(f"{path}: no matching figure-ground mask ({path.stem}.* under figure_ground/ or mask/)")
        image = _rgb(path)
        gray = load_image(mask_path, "L")
        # JPEG masks carry compression noise around 0/255: threshold at mid-grey, but reject genuine grey maps.
        if np.mean((gray > 40) & (gray < 215)) > 0.05:
            raise ReaderError(f"{mask_path}: not a binary mask (more than 5% of pixels are mid-grey)")
        target = (gray > (0 if gray.max() <= 1 else 127)).astype(np.uint8)
        if target.shape != image.shape[:2]:
            raise ReaderError(f"{mask_path}: size {target.shape} differs from {path.name} {image.shape[:2]}")
        return {"__key__": key, "input.png": image, "target.png": target,
                "meta.json": _meta("horses", [path, mask_path], root, image.shape, label_values=[0, 1])}

    return {"train": (sample(p) for p in images[:200]), "test": (sample(p) for p in images[200:])}


# ------------------------------------------------------------------------------------------ LFW part labels
def _read_superpixels(path: Path, shape) -> np.ndarray:
    try:
        values = np.loadtxt(path, dtype=np.int64)
    except Exception as exc:  # noqa: BLE001
        raise ReaderError(f"{path}: cannot parse super-pixel map ({exc})") from exc
    if values.size != shape[0] * shape[1]:
        raise ReaderError(f"{path}: {values.size} super-pixel labels, expected {shape[0]}x{shape[1]}")
    if values.min() < 0 or values.max() > 65535:
        raise ReaderError(f"{path}: super-pixel ids outside 0..65535")
    return values.reshape(shape).astype(np.uint16)


def read_lfw_parts(root: Path, spec) -> dict[str, Iterator[dict]]:
    """LFW part labels (Kae et al. 2013): funneled images, ground-truth .ppm labels, super-pixel maps.

    Ground truth colours: red = hair, green = face, blue = background -> classes 2, 1, 0. Splits from
    parts_train.txt / parts_validation.txt / parts_test.txt (lines "Name_Surname N").
    """
    by_name: dict[str, Path] = {}  # one walk of the ~10^4 files instead of one per sample
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() in (".jpg", ".ppm", ".dat") and path.is_file():
            by_name.setdefault(path.name, path)

    def find(name: str, what: str) -> Path:
        if name not in by_name:
            raise ReaderError(f"{root}: missing {what} ({name})")
        return by_name[name]

    def split(list_name: str) -> Iterator[dict]:
        list_path = _one(root, rf"/{list_name}$", list_name)
        for line_no, line in enumerate(list_path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2 or not parts[1].isdigit():
                raise ReaderError(f"{list_path}:{line_no}: expected 'Name N', got {line!r}")
            key = f"{parts[0]}_{int(parts[1]):04d}"
            image_path = find(f"{key}.jpg", "funneled image")
            gt_path = find(f"{key}.ppm", "label map")
            sp_path = find(f"{key}.dat", "super-pixel map")
            image, gt = _rgb(image_path), _rgb(gt_path)
            if gt.shape != image.shape:
                raise ReaderError(f"{gt_path}: size {gt.shape[:2]} differs from {image_path.name} {image.shape[:2]}")
            winner = gt.argmax(axis=2)  # 0 red, 1 green, 2 blue
            if np.any(gt.max(axis=2) < 128):
                raise ReaderError(f"{gt_path}: pixels that are not red/green/blue labels")
            labels = np.choose(winner, [2, 1, 0]).astype(np.uint8)
            yield {"__key__": key, "input.png": image, "target.png": labels,
                   "superpixels.png": _read_superpixels(sp_path, image.shape[:2]),
                   "meta.json": _meta("parts", [image_path, gt_path, sp_path], root, image.shape,
                                      label_values=[0, 1, 2], label_names=["background", "face", "hair"])}

    return {"train": split("parts_train.txt"), "valid": split("parts_validation.txt"),
            "test": split("parts_test.txt")}


# ----------------------------------------------------------------------------------------------- denoising
def _clean_folder(files: list[Path], root: Path, task: str) -> Iterator[dict]:
    for path in files:
        image = _rgb(path)
        yield {"__key__": _key_from_name(path), "target.png": image,
               "meta.json": _meta(task, [path], root, image.shape)}


def read_bsds500(root: Path, spec) -> dict[str, Iterator[dict]]:
    """BSDS500 training set for denoising: images/train (200) + images/test (200) = 400.

    BSD68 (the test set) lies inside BSDS500's val folder, which is therefore left out (Zhang et al. 2017).
    """
    files = _find(root, r"/images/(train|test)/[^/]+\.jpg$")
    return {"train": _clean_folder(files, root, "denoise")}


def read_cbsd68(root: Path, spec) -> dict[str, Iterator[dict]]:
    """CBSD68: the 68 colour test images (any folder of .png; noisy variants in other folders are skipped)."""
    files = [p for p in _find(root, r"\.png$") if not re.search(r"noisy|sigma|/\d+/", p.relative_to(root).as_posix(), re.I)]
    return {"test": _clean_folder(files, root, "denoise")}


# ------------------------------------------------------------------------------------------------- depth
def read_sevenscenes(root: Path, spec) -> dict[str, Iterator[dict]]:
    """7-Scenes: ``<scene>/seq-NN/frame-NNNNNN.depth.png`` (uint16 mm, 65535 = invalid); chess -> train.

    c-Glow sec. 5.5 trains on Chess and tests on the other scenes. target.npy is depth in metres (float32),
    mask.png marks valid depth.
    """
    files = _find(root, r"/seq-\d+/frame-\d+\.depth\.png$")
    if not files:
        raise ReaderError(f"{root}: no <scene>/seq-NN/frame-NNNNNN.depth.png files")

    def sample(path: Path) -> dict:
        scene, seq = path.parent.parent.name, path.parent.name
        raw = load_image(path)
        if raw.dtype != np.uint16 and raw.dtype != np.int32:
            raise ReaderError(f"{path}: depth must be a 16-bit PNG, got {raw.dtype}")
        raw = raw.astype(np.int64)
        valid = (raw > 0) & (raw < 65535)
        depth = np.where(valid, raw / 1000.0, 0.0).astype(np.float32)
        key = f"{scene}_{seq}_{path.name.split('.')[0]}"
        return {"__key__": key, "target.npy": depth, "mask.png": valid.astype(np.uint8),
                "meta.json": _meta("depth", [path], root, raw.shape, units="metres", invalid_raw=[0, 65535])}

    def scene_of(path: Path) -> str:
        return path.parent.parent.name.lower()

    return {"train": (sample(p) for p in files if scene_of(p) == "chess"),
            "test": (sample(p) for p in files if scene_of(p) != "chess")}


# ------------------------------------------------------------------------------------------------ CelebA
def read_celeba(root: Path, spec) -> dict[str, Iterator[dict]]:
    """CelebA aligned & cropped (178x218 JPEG): splits from list_eval_partition.txt (0 train, 1 valid, 2 test)."""
    partition_path = _one(root, r"/list_eval_partition\.(txt|csv)$", "list_eval_partition.txt")
    assignment: dict[str, list[str]] = {"train": [], "valid": [], "test": []}
    names = {"0": "train", "1": "valid", "2": "test"}
    for line_no, line in enumerate(partition_path.read_text().splitlines(), 1):
        fields = re.split(r"[,\s]+", line.strip())
        if len(fields) != 2 or fields[1] not in names:
            if line_no == 1:  # the CSV variant has a header
                continue
            raise ReaderError(f"{partition_path}:{line_no}: expected '<file> 0|1|2', got {line!r}")
        assignment[names[fields[1]]].append(fields[0])
    folder = _one(root, r"/img_align_celeba/[^/]+\.jpg$", "img_align_celeba/*.jpg").parent

    def split(files: list[str]) -> Iterator[dict]:
        for name in files:
            path = folder / name
            if not path.is_file():
                raise ReaderError(f"{path}: listed in {partition_path.name} but missing")
            image = _rgb(path)
            yield {"__key__": _key_from_name(path), "target.png": image,
                   "meta.json": _meta("inpaint", [path], root, image.shape)}

    return {k: split(v) for k, v in assignment.items()}
