"""Readers of the official releases: ``read_<name>(root, spec) -> {split: iterator of shard samples}``.

Where one file is one sample, ``<name>_files(root) -> {split: [path]}`` is the reader's own listing (no
decoding): the reader iterates exactly it, so counts, keys (:func:`key_from_name`) and splits can be checked
without decoding a pixel.

``root`` is the unpacked release (a folder; archives have been extracted, nested ones too). Readers find
files by name pattern at any depth, so a release re-zipped with an extra top folder still reads. Every
problem raises :class:`ReaderError` naming the offending file and what was expected: missing files,
undecodable images, label values outside the expected set, mismatched sizes.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Iterator

import numpy as np

from pipelines.data import imaging

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
    hr = imaging.modcrop(_rgb(path), scale)
    return {"__key__": key, "input.png": imaging.bicubic_lr(hr, scale), "target.png": hr,
            "meta.json": _meta("sr", [path], root, image.shape, scale=scale, modcrop=scale,
                               hr_size=list(hr.shape[:2]), original_mode=mode)}


def key_from_name(path: Path) -> str:
    """A sample key from a file name: its stem up to the first dot, characters outside [A-Za-z0-9_-] as _."""
    return re.sub(r"[^A-Za-z0-9_\-]", "_", path.stem.split(".")[0])


def sr_benchmark_files(root: Path) -> dict[str, list[Path]]:
    """The HR images of an SR benchmark by split (all ``test``), without decoding; keys must be unique."""
    files = [p for p in _find(root, r"\.(png|jpe?g|bmp|tiff?)$")
             if not re.search(r"(^|[/_\-])(lr|lr_bicubic|x[234])([/_\-.]|$)", p.relative_to(root).as_posix(), re.I)]
    keys = [key_from_name(p) for p in files]
    duplicates = {k for k in keys if keys.count(k) > 1}
    if duplicates:
        raise ReaderError(f"{root}: several images map to the keys {sorted(duplicates)}")
    return {"test": files}


def read_sr_benchmark(root: Path, spec) -> dict[str, Iterator[dict]]:
    """Set5 / Set14 / BSD100: every image under the folder (nested or not) is one HR test image.

    Releases that ship LR/HR pairs keep only HR files (folders or names marked LR / x2..x4 are skipped).
    Set5.zip: ``Set5/{baby,bird,butterfly,head,woman}.png``; BSD100.zip: ``BSD100/img_001.png`` .. ``img_100``.
    """
    scale = spec.scale or 2
    return {split: (_sr_sample(key_from_name(p), p, root, scale) for p in files)
            for split, files in sr_benchmark_files(root).items()}


SR_TRAIN_EXCLUDED = {
    # Found by content: Set5 woman.png is 302003 rotated 90 degrees ccw, scaled by 0.72 and cropped to 228x344
    # (mean absolute difference 2.7 grey levels), so training on it would train on a test image.
    "302003": "the photograph Set5 woman.png is cut from",
}
SR_VALID_START, SR_VALID_STEP, SR_VALID_COUNT = 14, 29, 10  # valid = positions 14, 43, ..., 275


def _natural(path: Path) -> tuple:
    """T91 names in their natural order (t1, t2, ..., t66, tt1, ..., tt27); BSDS ids numerically."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.stem))


def sr_train_files(root: Path) -> dict[str, list[Path]]:
    """The SR training images by split, without decoding: T91 + BSDS500 train, minus ``SR_TRAIN_EXCLUDED``.

    Order: T91 in natural order, then BSDS500 train by numeric id; the valid split is every 29th image of
    that list from position 14 (10 images: 3 of T91, 7 of BSDS500), the rest is train.
    """
    t91 = sorted(_find(root, r"/T91/[^/]+\.bmp$"), key=_natural)
    bsds = sorted(_find(root, r"/BSDS500/data/images/train/\d+\.jpg$"), key=lambda p: int(p.stem))
    if not t91:
        raise ReaderError(f"{root}: no T91 images (expected T91/t1.bmp ... T91/tt27.bmp, from T91.zip)")
    if not bsds:
        raise ReaderError(f"{root}: no BSDS500 train images (expected BSR/BSDS500/data/images/train/*.jpg, "
                          "from BSDS500.zip)")
    files = t91 + [p for p in bsds if p.stem not in SR_TRAIN_EXCLUDED]
    valid = set(range(SR_VALID_START, len(files), SR_VALID_STEP)[:SR_VALID_COUNT])
    return {"train": [p for i, p in enumerate(files) if i not in valid],
            "valid": [p for i, p in enumerate(files) if i in valid]}


def read_sr_train(root: Path, spec) -> dict[str, Iterator[dict]]:
    """SR training set: T91 (Yang et al. 2010) + BSDS500 train (200), stored as SR samples like the benchmarks.

    The standard "291 images" of SR training (Kim et al. 2016) less BSDS500 train 302003, which is the
    photograph Set5's woman.png was cropped from; disjoint from Set5, BSD100 (= BSDS500 val) and CBSD68.
    ``root`` holds both releases (a folder of T91.zip and BSDS500.zip). Keys are the file stems (``t1``,
    ``tt27``, ``100075``); HR modcropped, input.png the MATLAB-bicubic LR, as for Set5.
    """
    scale = spec.scale or 2
    return {split: (_sr_sample(key_from_name(p), p, root, scale) for p in files)
            for split, files in sr_train_files(root).items()}


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
                yield {"__key__": f"{prefix}_{index:07d}", "input.png": imaging.bicubic_lr(image, scale),
                       "target.png": np.ascontiguousarray(image),
                       "meta.json": {"task": "sr", "scale": scale, "original_size": [side, side],
                                     "source_files": [f"{path.relative_to(root).as_posix()}#{i}"]}}
                index += 1

    return {"train": split(r"train_data_batch_\d+\.npz$", "train"), "valid": split(r"val_data\.npz$", "valid")}


# ------------------------------------------------------------------------------------------ Weizmann horses
HORSES_TRAIN = 200  # c-Glow sec. 5.2: the first 200 horses train, the remaining 128 test
BLANK_RANGE = 16  # an rgb/ image whose grey levels span less than this is blank (rgb/horse318.jpg: 0..2)
ASPECT_TOLERANCE = 0.02  # rgb/ and figure_ground/ are the same picture: aspect ratios agree within 2%


def _horse_mask(path: Path) -> np.ndarray:
    """A figure-ground JPEG as 0/1: thresholded at 128, but genuine grey maps are rejected."""
    gray = load_image(path, "L")
    # JPEG masks carry compression noise around 0/255; more than 5% mid-grey pixels is not a binary mask.
    if np.mean((gray > 40) & (gray < 215)) > 0.05:
        raise ReaderError(f"{path}: not a binary mask (more than 5% of pixels are mid-grey)")
    return (gray >= (1 if gray.max() <= 1 else 128)).astype(np.uint8)


def horse_files(root: Path) -> dict[str, list[Path]]:
    """The rgb/ horse images by split, without decoding: the first 200 by name train, the rest test."""
    images = _find(root, r"/(rgb|horse|images?)/[^/]*horse[^/]*\.(jpe?g|png|bmp)$")
    if not images:
        raise ReaderError(f"{root}: no horse images (expected rgb/horseNNN.jpg or horse/horseNNN.png)")
    return {"train": images[:HORSES_TRAIN], "test": images[HORSES_TRAIN:]}


def read_horses(root: Path, spec) -> dict[str, Iterator[dict]]:
    """Weizmann horses: ``rgb/horseNNN.jpg`` resized to ``figure_ground/horseNNN.jpg``; first 200 train, 128 test.

    The release's rgb/ images are copies of gray/ at another resolution (mostly higher), so each is resized
    (MATLAB bicubic) to its mask's size; the mask is a JPEG thresholded at 128. An rgb/ image that is blank
    (grey levels spanning less than 16: rgb/horse318.jpg decodes to 0..2) is replaced by its gray/ copy
    replicated to RGB, recorded in meta.json as ``input_from``; ``original_size`` is the mask's size and
    ``rgb_size`` the rgb/ original's. Releases with ``horse/`` and ``mask/`` folders (older copies) read the
    same way. The split follows c-Glow sec. 5.2 (200 train, 128 test) in name order.
    """
    images = horse_files(root)
    masks = {p.stem.split(".")[0]: p for p in _find(root, r"/(figure_ground|mask|masks)/[^/]*\.(jpe?g|png|bmp|pgm)$")}
    grays = {p.stem.split(".")[0]: p for p in _find(root, r"/gray/[^/]*horse[^/]*\.(jpe?g|png|bmp)$")}

    def sample(path: Path) -> dict:
        key = key_from_name(path)
        mask_path = masks.get(path.stem.split(".")[0])
        if mask_path is None:
            raise ReaderError(f"{path}: no matching figure-ground mask ({path.stem}.* under figure_ground/ or mask/)")
        target = _horse_mask(mask_path)
        image, files, extra = _rgb(path), [path, mask_path], {}
        if int(image.max()) - int(image.min()) < BLANK_RANGE:
            gray_path = grays.get(path.stem.split(".")[0])
            if gray_path is None:
                raise ReaderError(f"{path}: blank image (values {image.min()}..{image.max()}) and no gray/ copy")
            image = _rgb(gray_path)
            files.append(gray_path)
            extra["input_from"] = gray_path.relative_to(root).as_posix()
        if image.shape[:2] != target.shape:
            ratios = (image.shape[0] / target.shape[0], image.shape[1] / target.shape[1])
            if abs(ratios[0] - ratios[1]) > ASPECT_TOLERANCE * max(ratios):
                raise ReaderError(f"{path}: size {image.shape[:2]} does not have the aspect ratio of its mask "
                                  f"{mask_path.name} {target.shape}")
            extra["rgb_size"] = list(image.shape[:2])
            image = imaging.imresize(image, output_shape=target.shape)
        return {"__key__": key, "input.png": image, "target.png": target,
                "meta.json": _meta("horses", files, root, target.shape, label_values=[0, 1], **extra)}

    return {split: (sample(p) for p in files) for split, files in images.items()}


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
        yield {"__key__": key_from_name(path), "target.png": image,
               "meta.json": _meta(task, [path], root, image.shape)}


#: The 68 BSDS300 test images of the BSD68 / CBSD68 denoising benchmark (Roth & Black 2009), by BSDS image id: they
#: lie in BSDS500's val folder, whose other 32 images are the denoising validation split.
BSD68_IDS = frozenset((
    "3096", "12084", "14037", "16077", "19021", "21077", "24077", "33039", "101085", "101087", "102061", "103070",
    "105025", "106024", "108005", "108070", "108082", "109053", "119082", "123074", "126007", "130026", "134035",
    "143090", "145086", "147091", "148026", "148089", "157055", "159008", "160068", "163085", "167062", "167083",
    "170057", "175032", "175043", "182053", "189080", "196073", "197017", "208001", "210088", "216081", "219090",
    "220075", "223061", "227092", "229036", "236037", "241004", "241048", "253027", "253055", "260058", "271035",
    "285079", "291000", "295087", "296007", "296059", "299086", "300091", "302008", "304034", "304074", "306005",
    "351093"))


def bsds500_files(root: Path) -> dict[str, list[Path]]:
    """BSDS500 denoising images, without decoding: train = ``images/train`` + ``images/test``; valid =
    ``images/val`` without the 68 CBSD68 test images (``BSD68_IDS``); by name."""
    val = _find(root, r"/images/val/[^/]+\.jpg$")
    return {"train": _find(root, r"/images/(train|test)/[^/]+\.jpg$"),
            "valid": [p for p in val if p.stem not in BSD68_IDS]}


def read_bsds500(root: Path, spec) -> dict[str, Iterator[dict]]:
    """BSDS500 for denoising: train = images/train (200) + images/test (200) = 400 (DnCNN's 400); valid = the 32
    images of images/val that are not in CBSD68 (for choosing the sampling temperature; our split, not the paper's).

    CBSD68 (the test set) lies inside BSDS500's val folder, whose 68 CBSD68 images are therefore left out of both
    (Zhang et al. 2017 train on the 400 alone). 63 train images are stored rotated 90 degrees relative to their
    groundTruth (BSR/ROTATED_TRAIN_IMAGES.txt); clean images alone carry no orientation, so they are kept as stored.
    """
    return {split: _clean_folder(files, root, "denoise") for split, files in bsds500_files(root).items()}


def cbsd68_files(root: Path) -> dict[str, list[Path]]:
    """The CBSD68 clean images, without decoding (any folder of .png; noisy variants are skipped)."""
    return {"test": [p for p in _find(root, r"\.png$")
                     if not re.search(r"noisy|sigma|/\d+/", p.relative_to(root).as_posix(), re.I)]}


def read_cbsd68(root: Path, spec) -> dict[str, Iterator[dict]]:
    """CBSD68: the 68 colour test images (CBSD68.zip: ``CBSD68/<BSDS id>.png``, 481x321 or 321x481)."""
    return {split: _clean_folder(files, root, "denoise") for split, files in cbsd68_files(root).items()}


# ------------------------------------------------------------------------------------------------- depth
#: c-Glow sec. 5.5 (after Wang et al. 2016): train on Chess, test on 5,500 frames of the other scenes. Which
#: 5,500 is not said; ours: a fixed seeded choice, uniform over every non-Chess frame of the release.
SEVENSCENES_TEST_COUNT, SEVENSCENES_TEST_SEED = 5500, 2016


def _frame_number(path: Path) -> int:
    return int(re.search(r"frame-(\d+)", path.name).group(1))


def sevenscenes_files(root: Path) -> dict[str, list[Path]]:
    """The 7-Scenes depth frames by split, without decoding: every Chess frame trains, 5,500 others test.

    Test: ``SEVENSCENES_TEST_COUNT`` frames drawn without replacement (``SEVENSCENES_TEST_SEED``) from every
    frame of the other scenes in sorted path order, then kept in that order.
    """
    files = _find(root, r"/seq-\d+/frame-\d+\.depth\.png$")
    if not files:
        raise ReaderError(f"{root}: no <scene>/seq-NN/frame-NNNNNN.depth.png files")
    train = [p for p in files if p.parent.parent.name.lower() == "chess"]
    others = [p for p in files if p.parent.parent.name.lower() != "chess"]
    if not train:
        raise ReaderError(f"{root}: no chess/seq-NN/frame-NNNNNN.depth.png (the training scene)")
    if len(others) < SEVENSCENES_TEST_COUNT:
        raise ReaderError(f"{root}: {len(others)} frames outside chess/, fewer than the {SEVENSCENES_TEST_COUNT} "
                          "test frames c-Glow sec. 5.5 draws from them (is every scene unpacked?)")
    chosen = np.random.default_rng(SEVENSCENES_TEST_SEED).choice(len(others), SEVENSCENES_TEST_COUNT, replace=False)
    return {"train": train, "test": [others[i] for i in sorted(chosen)]}


def _raw_depth_m(path: Path) -> np.ndarray:
    """A 7-Scenes ``.depth.png`` (uint16 millimetres; 0 and 65535 invalid) in metres, 0 where invalid."""
    raw = load_image(path)
    if raw.dtype not in (np.uint16, np.int32):
        raise ReaderError(f"{path}: depth must be a 16-bit PNG, got {raw.dtype}")
    raw = raw.astype(np.int64)
    return np.where((raw > 0) & (raw < 65535), raw / 1000.0, 0.0).astype(np.float32)


def _pose(depth_path: Path) -> tuple[Path, np.ndarray]:
    """The camera-to-world 4x4 pose beside a depth frame (``frame-NNNNNN.pose.txt``)."""
    path = depth_path.with_name(depth_path.name.replace(".depth.png", ".pose.txt"))
    if not path.is_file():
        raise ReaderError(f"{path}: missing (the camera pose of {depth_path.name}; the refined target needs it)")
    try:
        pose = np.loadtxt(path, dtype=np.float64)
    except ValueError as exc:
        raise ReaderError(f"{path}: cannot parse a 4x4 pose ({exc})") from exc
    if pose.shape != (4, 4) or not np.all(np.isfinite(pose)):
        raise ReaderError(f"{path}: expected a finite 4x4 camera-to-world matrix, got shape {pose.shape}")
    return path, pose


def read_sevenscenes(root: Path, spec, fusion=None) -> dict[str, Iterator[dict]]:
    """7-Scenes for c-Glow's depth refinement (sec. 5.5, the protocol of Wang et al. 2016).

    Per frame: ``input.npy`` = the raw Kinect depth in metres (0 = invalid, as the ``.depth.png`` has it),
    ``target.npy`` = the refined depth: temporal fusion of the frame with its ``fusion.radius`` neighbours on
    either side in the same sequence, using the release's camera poses and depth intrinsics
    (:func:`pipelines.data.datasets.fusion.fuse_depth`), ``mask.png`` = where the fusion is valid (the scored
    pixels). Splits: :func:`sevenscenes_files`. Frames stay whole (640x480); the task crops them.
    """
    from pipelines.data.datasets.fusion import SEVENSCENES_INTRINSICS, FusionParams, fuse_depth

    fusion = fusion or FusionParams()
    listing = sevenscenes_files(root)
    sequences: dict[Path, dict[int, Path]] = {}
    for path in _find(root, r"/seq-\d+/frame-\d+\.depth\.png$"):
        sequences.setdefault(path.parent, {})[_frame_number(path)] = path

    def sample(path: Path, cache: dict) -> dict:
        t = _frame_number(path)
        frames = sequences[path.parent]
        window = [j for j in range(t - fusion.radius, t + fusion.radius + 1) if j in frames]
        for j in list(cache):
            if j not in window:
                del cache[j]  # frames are read in order: each depth and pose is decoded about once
        for j in window:
            if j not in cache:
                cache[j] = (_raw_depth_m(frames[j]), *_pose(frames[j]))
        depths = [cache[j][0] for j in window]
        if any(d.shape != depths[0].shape for d in depths):
            raise ReaderError(f"{path.parent}: frames {window[0]}..{window[-1]} differ in size")
        target, valid = fuse_depth(depths, [cache[j][2] for j in window], window.index(t), SEVENSCENES_INTRINSICS,
                                   fusion)
        scene, seq = path.parent.parent.name, path.parent.name
        files = [frames[j] for j in window] + [cache[j][1] for j in window]
        return {"__key__": f"{scene}_{seq}_{path.name.split('.')[0]}", "input.npy": depths[window.index(t)],
                "target.npy": target, "mask.png": valid,
                "meta.json": _meta("depth", files, root, target.shape, units="metres", invalid_raw=[0, 65535],
                                   target="temporal fusion", fusion=dataclasses.asdict(fusion),
                                   fused_frames=window)}

    def split(paths: list[Path]) -> Iterator[dict]:
        cache: dict = {}
        for path in paths:
            yield sample(path, cache)

    return {name: split(paths) for name, paths in listing.items()}


# ------------------------------------------------------------------------------------------------ CelebA
#: c-Glow sec. 5.6 tests on "2,000 randomly selected images"; ours: drawn once, with this seed, from the official
#: test partition (19,962 images), kept in partition order.
CELEBA_TEST_COUNT, CELEBA_TEST_SEED = 2000, 2020


def read_celeba(root: Path, spec) -> dict[str, Iterator[dict]]:
    """CelebA aligned & cropped (178x218 JPEG): splits from list_eval_partition.txt (0 train, 1 valid, 2 test).

    ``test`` is ``CELEBA_TEST_COUNT`` images of partition 2 drawn without replacement (``CELEBA_TEST_SEED``), in
    partition order: c-Glow's test set of 2,000 randomly selected images.
    """
    partitions = _find(root, r"/list_eval_partition\.(txt|csv)$")
    if not partitions and _find(root, r"/img_align_celeba_89x109/"):
        raise ReaderError(f"{root}: no list_eval_partition.txt; this is the 89x109 CelebA subset, fetched as "
                          "dataset 'celeba_subset'")
    if not partitions:
        raise ReaderError(f"{root}: missing list_eval_partition.txt (no file matching 'list_eval_partition.txt')")
    partition_path = partitions[0]
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
    test = assignment["test"]
    if len(test) < CELEBA_TEST_COUNT:
        raise ReaderError(f"{partition_path}: {len(test)} test images (partition 2), fewer than the "
                          f"{CELEBA_TEST_COUNT} c-Glow sec. 5.6 draws from them")
    chosen = np.random.default_rng(CELEBA_TEST_SEED).choice(len(test), CELEBA_TEST_COUNT, replace=False)
    assignment["test"] = [test[i] for i in sorted(chosen)]

    def split(files: list[str]) -> Iterator[dict]:
        for name in files:
            path = folder / name
            if not path.is_file():
                raise ReaderError(f"{path}: listed in {partition_path.name} but missing")
            image = _rgb(path)
            yield {"__key__": key_from_name(path), "target.png": image,
                   "meta.json": _meta("inpaint", [path], root, image.shape)}

    return {k: split(v) for k, v in assignment.items()}


CELEBA_SUBSET_SPLITS = {"train": (1, 8000), "valid": (8001, 9000), "test": (9001, 10000)}  # image ids, inclusive


def celeba_subset_files(root: Path) -> dict[str, list[Path]]:
    """The CelebA subset's 89x109 images by split, without decoding (ids 1-8000 / 8001-9000 / 9001-10000)."""
    files = _find(root, r"/img_align_celeba_89x109/\d{6}\.jpg$")
    if not files:
        raise ReaderError(f"{root}: no img_align_celeba_89x109/NNNNNN.jpg (expected celeba_subset.zip)")
    splits: dict[str, list[Path]] = {name: [] for name in CELEBA_SUBSET_SPLITS}
    for path in sorted(files, key=lambda p: int(p.stem)):
        number = int(path.stem)
        split = next((name for name, (lo, hi) in CELEBA_SUBSET_SPLITS.items() if lo <= number <= hi), None)
        if split is None:
            raise ReaderError(f"{path}: image id {number} outside the subset's 000001..010000")
        splits[split].append(path)
    return splits


def read_celeba_subset(root: Path, spec) -> dict[str, Iterator[dict]]:
    """The CelebA subset of the shared archive: the first 10,000 aligned faces downscaled by 2 (89x109).

    The subset has no ``list_eval_partition.txt`` and all 10,000 lie in the official train partition, so the
    split is our own, by image id: 000001-008000 train, 008001-009000 valid, 009001-010000 test (contiguous
    blocks; CelebA ids are not ordered by identity, so one person may appear in two splits). The 32 images at
    the official 178x218 (``img_align_celeba/``) are the same faces as 000001-000032 and are not read.
    """
    def split(files: list[Path]) -> Iterator[dict]:
        for path in files:
            image = _rgb(path)
            yield {"__key__": key_from_name(path), "target.png": image,
                   "meta.json": _meta("inpaint", [path], root, image.shape, downscaled=2)}

    return {name: split(files) for name, files in celeba_subset_files(root).items()}
