"""pipelines/data/datasets/readers.py on the real archives in ../shared/datasets (skipped when they are absent).

Every count, key and split is checked on the readers' own listings (``<name>_files``: what the reader
iterates, no decoding); pixels are checked on a few decoded samples per set, and the SR training set goes
through the real fetch stage (a folder of archives -> shards -> ``iter_samples``) on a reduced copy.
Disjointness of training and test sets is checked by content, not only by key: a thumbnail matcher that
finds every CBSD68 image inside BSDS500 val and Set5's woman inside BSDS500 train finds no other overlap.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.data import imaging, shards
from pipelines.data.datasets import DATASETS, readers
from pipelines.stages import fetch
from tests.conftest import shared_archive

SR_VALID_KEYS = ["t15", "t45", "tt8", "22090", "55075", "105019", "147021", "187003", "242078", "326038"]
SET5_KEYS = ["baby", "bird", "butterfly", "head", "woman"]
MATCH = 0.15  # thumbnail distance: the same picture (re-encoded, 1-pixel crop) < 0.07, different ones > 0.24


# ------------------------------------------------------------------------------------------------ helpers
@pytest.fixture(scope="module")
def unpacked(shared_datasets, tmp_path_factory):
    """``unpacked("Set5.zip")``: the archive extracted into a folder of its name (once per module)."""
    base = tmp_path_factory.mktemp("unpacked")

    def unpack(name: str) -> Path:
        dest = base / name.split(".")[0]
        if not dest.exists():
            with zipfile.ZipFile(shared_archive(name)) as archive:
                archive.extractall(dest)
        return dest

    return unpack


def _subset(root: Path, relative: list[str], dest: Path) -> Path:
    """A release folder holding only ``relative`` (links to the unpacked files), for decoding a few samples."""
    for rel in relative:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).symlink_to(root / rel)
    return dest


def _keys(files: list[Path]) -> list[str]:
    return [readers.key_from_name(p) for p in files]


def _counts(listing: dict[str, list[Path]]) -> dict[str, int]:
    return {split: len(files) for split, files in listing.items()}


def _size(path: Path) -> tuple[int, int]:
    """(H, W) from the image header, without decoding the pixels."""
    with Image.open(path) as image:
        return image.size[1], image.size[0]


def _thumbnails(files: list[Path]) -> np.ndarray:
    """16x16 grey thumbnails, zero mean and unit variance: equal for re-encoded or 1-pixel-cropped copies."""
    out = []
    for path in files:
        with Image.open(path) as image:
            small = np.asarray(image.convert("L").resize((16, 16), Image.Resampling.BOX), np.float64)
        out.append((small - small.mean()) / (small.std() + 1e-6))
    return np.stack(out)


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) mean absolute thumbnail differences, the smallest over b's four 90-degree rotations."""
    flat = a.reshape(len(a), 1, -1)
    return np.min([np.abs(flat - np.rot90(b, k, axes=(1, 2)).reshape(1, len(b), -1)).mean(-1)
                   for k in range(4)], axis=0)


# --------------------------------------------------------------------------------------------- checksums
def test_registry_holds_the_checksum_of_every_shared_archive(shared_datasets):
    sums = dict(line.split()[::-1] for line in (shared_datasets / "SHA256SUMS").read_text().splitlines()
                if line.strip())
    listed = {name: sha for spec in DATASETS.values() for name, sha in spec.archives.items() if sha}
    assert set(sums) <= set(listed), f"archives without a registry checksum: {sorted(set(sums) - set(listed))}"
    for name, sha in sums.items():
        assert listed[name] == sha, name
        assert hashlib.sha256((shared_datasets / name).read_bytes()).hexdigest() == sha, name
    # Every entry that names an archive agrees on its checksum (BSDS500.zip is read by bsds500 and sr_train).
    for spec in DATASETS.values():
        for name, sha in spec.archives.items():
            assert sha is None or sha == sums.get(name, sha), (spec.name, name)


# ------------------------------------------------------------------------------------------- Weizmann horses
def test_horses_counts_keys_and_split(unpacked):
    listing = readers.horse_files(unpacked("weizmann_horse_db.zip"))
    assert _counts(listing) == DATASETS["horses"].splits == {"train": 200, "test": 128}
    assert _keys(listing["train"]) == [f"horse{i:03d}" for i in range(1, 201)]
    assert _keys(listing["test"]) == [f"horse{i:03d}" for i in range(201, 329)]
    assert all(p.parent.name == "rgb" for files in listing.values() for p in files)


def test_horses_rgb_resized_to_the_mask_and_masks_thresholded(unpacked, tmp_path):
    root = unpacked("weizmann_horse_db.zip")
    # 001: rgb larger than the mask; 002: rgb smaller; 318: rgb/ blank (0..2), read from gray/.
    picked = ["horse001", "horse002", "horse318"]
    rel = [f"weizmann_horse_db/{folder}/{key}.jpg" for key in picked for folder in ("rgb", "gray", "figure_ground")]
    splits = readers.read_horses(_subset(root, rel, tmp_path), DATASETS["horses"])
    samples = {s["__key__"]: s for s in splits["train"]}
    assert sorted(samples) == picked
    for key, sample in samples.items():
        raw_mask = np.asarray(Image.open(root / f"weizmann_horse_db/figure_ground/{key}.jpg").convert("L"))
        gray = np.asarray(Image.open(root / f"weizmann_horse_db/gray/{key}.jpg").convert("L"), np.float64)
        image, target = sample["input.png"], sample["target.png"]
        assert image.dtype == np.uint8 and image.shape == raw_mask.shape + (3,)
        assert target.dtype == np.uint8 and set(np.unique(target)) == {0, 1}
        np.testing.assert_array_equal(target, raw_mask >= 128)
        assert 0.1 < target.mean() < 0.7, key  # a horse, not an empty or inverted mask
        # The resized rgb lies on the mask's pixel grid: its luma matches the gray/ copy made for that mask.
        luma = image.astype(np.float64) @ [0.299, 0.587, 0.114]
        assert np.corrcoef(luma.ravel(), gray.ravel())[0, 1] > 0.9, key
        assert sample["meta.json"]["original_size"] == list(raw_mask.shape)
    assert samples["horse001"]["meta.json"]["rgb_size"] == [590, 800]  # downsampled to 232x315
    assert samples["horse002"]["meta.json"]["rgb_size"] == [197, 250]  # upsampled to 212x269
    assert samples["horse318"]["meta.json"]["input_from"] == "weizmann_horse_db/gray/horse318.jpg"
    assert "input_from" not in samples["horse001"]["meta.json"]


def test_horses_blank_rgb_without_gray_copy_is_an_error(unpacked, tmp_path):
    root = unpacked("weizmann_horse_db.zip")
    rel = [f"weizmann_horse_db/{folder}/horse318.jpg" for folder in ("rgb", "figure_ground")]
    splits = readers.read_horses(_subset(root, rel, tmp_path), DATASETS["horses"])
    with pytest.raises(readers.ReaderError, match=r"rgb/horse318.jpg: blank image \(values 0..2\) and no gray/"):
        next(splits["train"])


# ---------------------------------------------------------------------------------------- SR training set
@pytest.fixture(scope="module")
def sr_train_root(unpacked, tmp_path_factory):
    """T91.zip and BSDS500.zip unpacked side by side, as the fetch stage unpacks a folder holding both."""
    root = tmp_path_factory.mktemp("sr_train")
    for name in ("T91.zip", "BSDS500.zip"):
        shutil.copytree(unpacked(name), root / name.split(".")[0], copy_function=os.link)
    return root


def test_sr_train_counts_keys_and_valid_rule(sr_train_root, unpacked):
    listing = readers.sr_train_files(sr_train_root)
    assert _counts(listing) == DATASETS["sr_train"].splits == {"train": 280, "valid": 10}
    train, valid = _keys(listing["train"]), _keys(listing["valid"])
    assert valid == SR_VALID_KEYS and not set(train) & set(valid)
    t91 = {p.stem for p in unpacked("T91.zip").rglob("*.bmp")}
    bsds_train = {p.stem for p in unpacked("BSDS500.zip").rglob("images/train/*.jpg")}
    assert len(t91) == 91 and "t41" not in t91 and "tt11" not in t91 and len(bsds_train) == 200
    assert set(train) | set(valid) == (t91 | bsds_train) - {"302003"}
    assert len(train) == len(set(train))
    assert sum(k.startswith("t") for k in valid) == 3  # 3 of T91, 7 of BSDS500 train


def test_sr_train_through_the_fetch_stage(unpacked, tmp_path, monkeypatch):
    # A reduced copy of both archives (12 T91 + 4 BSDS500 train images): the same folder-of-archives path,
    # reader, shard writer and shard reader as the full fetch, in seconds; position 14 is the one valid image.
    t91_root, bsds_root = unpacked("T91.zip"), unpacked("BSDS500.zip")
    # T91 in natural order: t1, t2, ..., t12 (t10 after t9, tt* after every t*).
    t91 = sorted(t91_root.rglob("T91/*.bmp"), key=lambda p: (p.stem.rstrip("0123456789"), int(p.stem.lstrip("t"))))
    t91 = t91[:12]
    assert [p.stem for p in t91] == [f"t{i}" for i in range(1, 13)]
    bsds = sorted(bsds_root.rglob("images/train/*.jpg"), key=lambda p: int(p.stem))[:4]
    source = tmp_path / "source"
    source.mkdir()
    for name, files, root in (("T91.zip", t91, t91_root), ("BSDS500.zip", bsds, bsds_root)):
        with zipfile.ZipFile(source / name, "w") as archive:
            for path in files:
                archive.write(path, path.relative_to(root).as_posix())
    spec = dataclasses.replace(DATASETS["sr_train"], splits={"train": 15, "valid": 1})
    monkeypatch.setitem(DATASETS, "sr_train", spec)
    manifest = fetch.fetch("sr_train", str(source), str(tmp_path / "shards"), shard_size=8, verify=False)
    assert {s: v["count"] for s, v in manifest["splits"].items()} == {"train": 15, "valid": 1}
    train = list(shards.iter_samples(str(tmp_path / "shards"), "train"))
    (valid,) = shards.iter_samples(str(tmp_path / "shards"), "valid")
    assert valid["__key__"] == bsds[2].stem  # T91 first (natural order), then BSDS ids: position 14
    assert [s["__key__"] for s in train] == [p.stem for p in t91] + [p.stem for p in bsds if p != bsds[2]]
    for sample, path in [(train[0], t91[0]), (train[-1], bsds[-1]), (valid, bsds[2])]:
        hr, lr = sample["target.png"], sample["input.png"]
        original = np.asarray(Image.open(path).convert("RGB"))
        assert hr.dtype == lr.dtype == np.uint8 and hr.shape[2] == 3
        np.testing.assert_array_equal(hr, imaging.modcrop(original, 2))  # HR: modcrop, nothing else
        np.testing.assert_array_equal(lr, imaging.bicubic_lr(hr, 2))  # x: MATLAB bicubic x2, as Set5
        assert sample["meta.json"]["scale"] == 2 and sample["meta.json"]["task"] == "sr"


# ---------------------------------------------------------------------------------------- SR test sets
def test_set5_and_bsd100_counts_keys_and_sizes(unpacked, tmp_path):
    set5 = readers.sr_benchmark_files(unpacked("Set5.zip"))
    assert _counts(set5) == DATASETS["set5"].splits and sorted(_keys(set5["test"])) == SET5_KEYS
    assert {k: _size(p) for k, p in zip(_keys(set5["test"]), set5["test"])} == {
        "baby": (512, 512), "bird": (288, 288), "butterfly": (256, 256), "head": (280, 280), "woman": (344, 228)}
    root = unpacked("BSD100.zip")
    bsd100 = readers.sr_benchmark_files(root)
    assert _counts(bsd100) == DATASETS["bsd100"].splits == {"test": 100}
    assert sorted(_keys(bsd100["test"])) == [f"img_{i:03d}" for i in range(1, 101)]
    sizes = [_size(p) for p in bsd100["test"]]
    assert sizes.count((320, 480)) == 77 and sizes.count((480, 320)) == 23
    picked = ["BSD100/img_001.png", "BSD100/img_002.png"]
    for sample in readers.read_sr_benchmark(_subset(root, picked, tmp_path), DATASETS["bsd100"])["test"]:
        hr, lr = sample["target.png"], sample["input.png"]
        assert hr.dtype == np.uint8 and hr.shape in ((320, 480, 3), (480, 320, 3))
        assert lr.shape == (hr.shape[0] // 2, hr.shape[1] // 2, 3) and 0 < lr.mean() < 255


# ------------------------------------------------------------------------------------------------ denoising
def test_bsds500_denoising_train_is_train_plus_test_and_valid_is_val_without_cbsd68(unpacked, tmp_path):
    root = unpacked("BSDS500.zip")
    listing = readers.bsds500_files(root)
    assert _counts(listing) == DATASETS["bsds500"].splits == {"train": 400, "valid": 32}
    folders = {p.parent.name for p in listing["train"]}
    assert folders == {"train", "test"} and sum(p.parent.name == "train" for p in listing["train"]) == 200
    assert len(set(_keys(listing["train"]))) == 400
    val = {p.stem for p in root.rglob("images/val/*.jpg")}
    assert len(val) == 100 and not val & set(_keys(listing["train"]))
    cbsd68 = readers.cbsd68_files(unpacked("CBSD68.zip"))
    assert _counts(cbsd68) == DATASETS["cbsd68"].splits == {"test": 68}
    cbsd_keys = set(_keys(cbsd68["test"]))
    assert cbsd_keys <= val and not cbsd_keys & set(_keys(listing["train"]))  # CBSD68 is inside val
    # valid: the rest of val, so disjoint from the test set and from training; the id list is the archive's.
    assert cbsd_keys == readers.BSD68_IDS and {p.parent.name for p in listing["valid"]} == {"val"}
    assert set(_keys(listing["valid"])) == val - cbsd_keys and len(set(_keys(listing["valid"]))) == 32
    assert {_size(p) for p in cbsd68["test"]} == {(321, 481), (481, 321)}
    rel = [p.relative_to(root).as_posix() for p in listing["train"][:1] + listing["train"][-1:] + listing["valid"][:1]]
    read = readers.read_bsds500(_subset(root, rel, tmp_path), DATASETS["bsds500"])
    samples = [s for split in ("train", "valid") for s in read[split]]
    assert len(samples) == 3
    for sample in samples:
        assert sample["target.png"].dtype == np.uint8 and sample["target.png"].shape in ((321, 481, 3), (481, 321, 3))
        assert sample["target.png"].std() > 10 and "input.png" not in sample


# --------------------------------------------------------------------------------------- disjoint by content
def test_training_sets_are_disjoint_from_their_test_sets_by_content(unpacked, sr_train_root):
    bsds_root = unpacked("BSDS500.zip")
    set5 = readers.sr_benchmark_files(unpacked("Set5.zip"))["test"]
    bsd100 = readers.sr_benchmark_files(unpacked("BSD100.zip"))["test"]
    cbsd68 = readers.cbsd68_files(unpacked("CBSD68.zip"))["test"]
    val = sorted(bsds_root.rglob("images/val/*.jpg"))
    sr_train = [p for files in readers.sr_train_files(sr_train_root).values() for p in files]
    denoise = readers.bsds500_files(bsds_root)
    denoise_train, denoise_valid = denoise["train"], denoise["valid"]
    excluded = [p for p in bsds_root.rglob("images/train/*.jpg") if p.stem in readers.SR_TRAIN_EXCLUDED]
    thumbs = {name: _thumbnails(files) for name, files in [
        ("set5", set5), ("bsd100", bsd100), ("cbsd68", cbsd68), ("val", val), ("sr_train", sr_train),
        ("denoise_train", denoise_train), ("denoise_valid", denoise_valid), ("excluded", excluded)]}
    # The matcher finds the known overlaps: BSD100 = BSDS500 val, CBSD68 inside both, Set5 woman in 302003.
    assert (_distances(thumbs["bsd100"], thumbs["val"]).min(1) < MATCH).sum() == 100
    assert (_distances(thumbs["cbsd68"], thumbs["val"]).min(1) < MATCH).sum() == 68
    assert (_distances(thumbs["cbsd68"], thumbs["bsd100"]).min(1) < MATCH).sum() == 68
    woman = _distances(thumbs["set5"], thumbs["excluded"])[:, 0]
    assert [p.stem for p, d in zip(set5, woman) if d < MATCH] == ["woman"]
    # ... and none between the training sets and the test sets they are scored on (nor denoising train and valid).
    for train, test in [("sr_train", "set5"), ("sr_train", "bsd100"), ("denoise_train", "cbsd68"),
                        ("denoise_valid", "cbsd68"), ("denoise_train", "denoise_valid")]:
        nearest = _distances(thumbs[test], thumbs[train]).min(1)
        assert nearest.min() > MATCH, f"{train} holds a copy of a {test} image (distance {nearest.min():.3f})"


# --------------------------------------------------------------------------------------------- CelebA subset
def test_celeba_subset_split_rule(unpacked):
    listing = readers.celeba_subset_files(unpacked("celeba_subset.zip"))
    assert _counts(listing) == DATASETS["celeba_subset"].splits == {"train": 8000, "valid": 1000, "test": 1000}
    ranges = {"train": range(1, 8001), "valid": range(8001, 9001), "test": range(9001, 10001)}
    for split, ids in ranges.items():
        assert _keys(listing[split]) == [f"{i:06d}" for i in ids], split
    assert all(p.parent.name == "img_align_celeba_89x109" for files in listing.values() for p in files)
    assert {_size(p) for files in listing.values() for p in files[::250]} == {(109, 89)}


def test_celeba_subset_samples_and_the_official_reader(unpacked, tmp_path):
    root = unpacked("celeba_subset.zip")
    rel = [f"celeba/img_align_celeba_89x109/{i:06d}.jpg" for i in (1, 8001, 10000)]
    splits = readers.read_celeba_subset(_subset(root, rel, tmp_path / "subset"), DATASETS["celeba_subset"])
    got = {split: [s for s in samples] for split, samples in splits.items()}
    assert {split: [s["__key__"] for s in samples] for split, samples in got.items()} == {
        "train": ["000001"], "valid": ["008001"], "test": ["010000"]}
    first = got["train"][0]["target.png"]
    assert first.dtype == np.uint8 and first.shape == (109, 89, 3) and "input.png" not in got["train"][0]
    # The 89x109 images are the official 178x218 ones downscaled by 2 (the 32 full-size copies show it).
    full = np.asarray(Image.open(root / "celeba/img_align_celeba/000001.jpg").convert("RGB"))
    assert full.shape == (218, 178, 3)
    halved = imaging.imresize(full, output_shape=(109, 89)).astype(np.float64)
    assert np.abs(halved - first).mean() < 6
    # The official entry needs list_eval_partition.txt and says which entry reads this subset.
    with pytest.raises(readers.ReaderError, match="fetched as dataset 'celeba_subset'"):
        readers.read_celeba(root, DATASETS["celeba"])


# ------------------------------------------------------------------------------- 7-Scenes and CelebA (synthetic)
def _save_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _sevenscenes_release(root: Path, frames: dict[str, int], shape=(12, 16)) -> None:
    """A 7-Scenes-shaped release: ``<scene>/seq-01/frame-NNNNNN.{depth.png,pose.txt}``, a noisy wall 1.5 m away
    seen by a camera sliding 1 mm per frame (uint16 millimetres, 65535 = invalid)."""
    rng = np.random.default_rng(0)
    for scene, count in frames.items():
        for i in range(count):
            depth = np.clip(1500 + rng.normal(0, 20, shape), 1, 65534).astype(np.uint16)
            depth[0, 0] = 65535
            _save_png(root / scene / "seq-01" / f"frame-{i:06d}.depth.png", depth)
            pose = np.eye(4)
            pose[0, 3] = 0.001 * i
            np.savetxt(root / scene / "seq-01" / f"frame-{i:06d}.pose.txt", pose)


def test_sevenscenes_input_is_raw_kinect_depth_and_target_its_temporal_fusion(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "SEVENSCENES_TEST_COUNT", 3)
    _sevenscenes_release(tmp_path, {"chess": 9, "fire": 4, "heads": 2})
    listing = readers.sevenscenes_files(tmp_path)
    assert [p.parent.parent.name for p in listing["train"]] == ["chess"] * 9
    assert len(listing["test"]) == 3 and all(p.parent.parent.name != "chess" for p in listing["test"])
    assert listing["test"] == readers.sevenscenes_files(tmp_path)["test"]  # a fixed, seeded choice
    splits = readers.read_sevenscenes(tmp_path, DATASETS["sevenscenes"])
    train = list(splits["train"])
    assert [s["__key__"] for s in train][:2] == ["chess_seq-01_frame-000000", "chess_seq-01_frame-000001"]
    centre = train[4]
    raw = np.asarray(Image.open(tmp_path / "chess/seq-01/frame-000004.depth.png")).astype(np.float64)
    np.testing.assert_allclose(centre["input.npy"][1:, 1:], raw[1:, 1:] / 1000.0, rtol=1e-6)  # as recorded
    assert centre["input.npy"][0, 0] == 0.0  # 65535: invalid
    assert centre["meta.json"]["fused_frames"] == list(range(9)) and centre["meta.json"]["target"] == "temporal fusion"
    valid = centre["mask.png"] > 0
    assert valid.mean() > 0.8 and set(np.unique(centre["mask.png"])) <= {0, 1}
    err_raw = np.abs(centre["input.npy"][valid] - 1.5).mean()
    err_target = np.abs(centre["target.npy"][valid] - 1.5).mean()
    assert err_target < 0.6 * err_raw  # nine frames of 2 cm noise: the fused wall is about 3x closer to 1.5 m
    assert train[0]["meta.json"]["fused_frames"] == [0, 1, 2, 3, 4]  # the sequence's first frame: one side only
    assert len(list(splits["test"])) == 3


def test_sevenscenes_errors_name_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "SEVENSCENES_TEST_COUNT", 3)
    _sevenscenes_release(tmp_path, {"chess": 3, "fire": 3})
    (tmp_path / "chess/seq-01/frame-000001.pose.txt").unlink()
    with pytest.raises(readers.ReaderError, match="frame-000001.pose.txt: missing"):
        list(readers.read_sevenscenes(tmp_path, DATASETS["sevenscenes"])["train"])
    monkeypatch.setattr(readers, "SEVENSCENES_TEST_COUNT", 5500)
    with pytest.raises(readers.ReaderError, match="3 frames outside chess/, fewer than the 5500"):
        readers.sevenscenes_files(tmp_path)
    assert DATASETS["sevenscenes"].splits["test"] == 5500


def test_celeba_tests_on_a_seeded_choice_from_the_official_test_partition(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "CELEBA_TEST_COUNT", 3)
    for i in range(1, 9):
        _save_png(tmp_path / "img_align_celeba" / f"{i:06d}.jpg", np.full((218, 178, 3), i, np.uint8))
    partition = ["000001.jpg 0", "000002.jpg 1"] + [f"{i:06d}.jpg 2" for i in range(3, 9)]
    (tmp_path / "list_eval_partition.txt").write_text("\n".join(partition) + "\n")
    splits = readers.read_celeba(tmp_path, DATASETS["celeba"])
    assert [s["__key__"] for s in splits["train"]] == ["000001"]
    test = [s["__key__"] for s in splits["test"]]
    assert len(test) == 3 and test == sorted(test) and set(test) <= {f"{i:06d}" for i in range(3, 9)}
    assert [s["__key__"] for s in readers.read_celeba(tmp_path, DATASETS["celeba"])["test"]] == test
    assert DATASETS["celeba"].splits["test"] == 2000 and DATASETS["celeba_subset"].splits["test"] == 1000
    monkeypatch.setattr(readers, "CELEBA_TEST_COUNT", 2000)
    with pytest.raises(readers.ReaderError, match="6 test images .* fewer than the 2000"):
        readers.read_celeba(tmp_path, DATASETS["celeba"])
    monkeypatch.setattr(readers, "CELEBA_TEST_COUNT", 6)
    (tmp_path / "img_align_celeba" / "000004.jpg").unlink()
    with pytest.raises(readers.ReaderError, match="000004.jpg: listed in list_eval_partition.txt but missing"):
        list(readers.read_celeba(tmp_path, DATASETS["celeba"])["test"])
