"""`cnf fetch` (pipelines/stages/fetch.py over pipelines/data/fetching.py): real releases, S3 in and out,
and corrupt inputs that must fail cleanly."""
from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.data import fetching, shards, storage
from pipelines.stages.cli import main
from tests.conftest import shared_archive


def test_drive_release(tmp_path):
    dest = tmp_path / "drive"
    assert main(["fetch", "drive", "--source", str(shared_archive("DRIVE.zip")), "--out", str(dest)]) == 0
    manifest = shards.validate(str(dest))
    assert {s: v["count"] for s, v in manifest["splits"].items()} == {"train": 20, "test": 20}
    train = list(shards.iter_samples(str(dest), "train"))
    test = list(shards.iter_samples(str(dest), "test"))
    assert [s["__key__"] for s in train] == [f"{i:02d}" for i in range(21, 41)]
    assert [s["__key__"] for s in test] == [f"{i:02d}" for i in range(1, 21)]
    for sample in train[:2] + test[:2]:
        assert sample["input.png"].shape == (584, 565, 3)
        assert set(np.unique(sample["target.png"])) == {0, 1}
        assert set(np.unique(sample["mask.png"])) == {0, 1}
        assert 0.6 < sample["mask.png"].mean() < 0.8  # the FOV disc covers ~69% of the frame
    assert all("target2.png" in s for s in test) and not any("target2.png" in s for s in train)
    assert not np.array_equal(test[0]["target.png"], test[0]["target2.png"])  # a different observer


def test_set5_and_cbsd68_releases(tmp_path, capsys):
    assert main(["fetch", "set5", "--source", f"file://{shared_archive('Set5.zip')}", "--out",
                 str(tmp_path / "set5")]) == 0
    set5 = list(shards.iter_samples(str(tmp_path / "set5"), "test"))
    assert sorted(s["__key__"] for s in set5) == ["baby", "bird", "butterfly", "head", "woman"]
    for s in set5:
        assert s["input.png"].shape[0] * 2 == s["target.png"].shape[0]
    assert main(["fetch", "cbsd68", "--source", str(shared_archive("CBSD68.zip")), "--out",
                 str(tmp_path / "cbsd68")]) == 0
    sizes = {s["target.png"].shape for s in shards.iter_samples(str(tmp_path / "cbsd68"), "test")}
    assert sizes == {(321, 481, 3), (481, 321, 3)}
    assert shards.read_manifest(str(tmp_path / "cbsd68"))["splits"]["test"]["count"] == 68


def test_checksum_mismatch_names_the_archive(tmp_path, capsys):
    fake = tmp_path / "Set5.zip"
    with zipfile.ZipFile(shared_archive("Set5.zip")) as src, zipfile.ZipFile(fake, "w") as dst:
        for name in src.namelist()[:3]:
            dst.writestr(name, src.read(name))
    assert main(["fetch", "set5", "--source", str(fake), "--out", str(tmp_path / "out")]) != 0
    err = capsys.readouterr().err
    assert "Set5.zip" in err and "does not match the expected 7a1308" in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_truncated_image_names_the_file_and_leaves_nothing(tmp_path, capsys):
    folder = tmp_path / "set5"
    with zipfile.ZipFile(shared_archive("Set5.zip")) as archive:
        archive.extractall(folder)
    victim = next(folder.rglob("bird.png"))
    victim.write_bytes(victim.read_bytes()[:2000])
    out = tmp_path / "out"
    assert main(["fetch", "set5", "--source", str(folder), "--out", str(out)]) != 0
    err = capsys.readouterr().err
    assert "bird.png" in err and "cannot decode" in err
    assert not out.exists() or list(out.iterdir()) == []


def _fake_drive(root: Path, manual: np.ndarray | None = None, with_mask: bool = True) -> Path:
    """One DRIVE training triple (key 21) in the release layout: enough for the reader to reach its checks."""
    base = root / "DRIVE" / "training"
    for sub in ("images", "1st_manual", "mask"):
        (base / sub).mkdir(parents=True)
    Image.fromarray(np.zeros((12, 10, 3), np.uint8)).save(base / "images" / "21_training.tif")
    labels = manual if manual is not None else (np.eye(12, 10) * 255).astype(np.uint8)
    Image.fromarray(labels).save(base / "1st_manual" / "21_manual1.gif")
    if with_mask:
        Image.fromarray(np.full((12, 10), 255, np.uint8)).save(base / "mask" / "21_training_mask.gif")
    return root


def test_missing_file_and_bad_labels_are_named(tmp_path, capsys):
    source = _fake_drive(tmp_path / "missing", with_mask=False)
    assert main(["fetch", "drive", "--source", str(source), "--out", str(tmp_path / "o1")]) != 0
    assert "FOV mask 21" in capsys.readouterr().err
    bad = np.zeros((12, 10), np.uint8)
    bad[3, 3] = 128
    source = _fake_drive(tmp_path / "bad", manual=bad)
    assert main(["fetch", "drive", "--source", str(source), "--out", str(tmp_path / "o2")]) != 0
    err = capsys.readouterr().err
    assert "21_manual1.gif" in err and "128" in err
    for out in ("o1", "o2"):
        assert not (tmp_path / out).exists() or list((tmp_path / out).iterdir()) == []


def test_wrong_count_fails_without_leftovers(tmp_path, capsys):
    folder = tmp_path / "set5"
    with zipfile.ZipFile(shared_archive("Set5.zip")) as archive:
        archive.extractall(folder)
    next(folder.rglob("head.png")).unlink()
    assert main(["fetch", "set5", "--source", str(folder), "--out", str(tmp_path / "out")]) != 0
    assert "has 4 samples, expected 5" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.lock", "set5"]  # no side folder left


def test_s3_archive_to_s3_shards_and_back_through_the_loader(s3_bucket, tmp_path):
    from pipelines.data.loader import make_loader

    source = f"s3://{s3_bucket}/releases/Set5.zip"
    storage.put_file(shared_archive("Set5.zip"), source)
    dest = f"s3://{s3_bucket}/shards/set5"
    assert main(["fetch", "set5", "--source", source, "--out", dest, "--shard-size", "2"]) == 0
    manifest = shards.read_manifest(dest)
    assert sorted(storage.list_sizes(dest, recursive=True)) == sorted(["manifest.json"] + [
        f"{manifest['shard_dir']}/test-00000{i}.tar" for i in range(3)])
    keys = []
    for batch in make_loader(dest, "test", "sr", batch_size=1, train=False, size=32, num_workers=2):
        assert batch["y"].shape == (1, 3, 32, 32) and batch["x"].shape == (1, 3, 16, 16)
        keys += batch["key"]
    assert sorted(keys) == ["baby", "bird", "butterfly", "head", "woman"]
    # A failing fetch into S3 leaves nothing under its prefix.
    broken = tmp_path / "Set5.zip"
    broken.write_bytes(b"not a zip")
    bad = f"s3://{s3_bucket}/releases/bad/Set5.zip"
    storage.put_file(broken, bad)
    with pytest.raises(fetching.FetchError, match="Set5.zip: sha256"):
        fetching.fetch("set5", bad, f"s3://{s3_bucket}/shards/bad")
    with pytest.raises(fetching.FetchError, match="corrupt or truncated archive"):
        fetching.fetch("set5", bad, f"s3://{s3_bucket}/shards/bad", verify=False)
    assert storage.list_sizes(f"s3://{s3_bucket}/shards/bad", recursive=True) == {}  # lock released too


def test_demo_source_into_s3(s3_bucket):
    dest = f"s3://{s3_bucket}/demo/drive"
    manifest = fetching.fetch("drive", "demo", dest)
    assert manifest == fetching.fetch("drive", "demo", dest)  # the rerun is a no-op
    assert shards.validate(dest)["splits"]["test"]["count"] == 2


# ------------------------------------------------ readers on miniature copies of the official release layouts
def _save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def test_imagenet_npz_reader(tmp_path):
    from pipelines.data.datasets import get_dataset, readers

    rng = np.random.default_rng(0)
    folder = tmp_path / "Imagenet32_train_npz"
    folder.mkdir()
    batches = {b: rng.integers(0, 256, (2, 3072), dtype=np.uint8) for b in (1, 2, 10)}
    for b, data in batches.items():
        np.savez(folder / f"train_data_batch_{b}.npz", data=data, labels=np.arange(2))
    np.savez(tmp_path / "val_data.npz", data=batches[1], labels=np.arange(2))
    splits = readers.read_imagenet_npz(tmp_path, get_dataset("imagenet32"))
    train = list(splits["train"])
    assert [s["__key__"] for s in train] == [f"train_{i:07d}" for i in range(6)]
    # Channel-major rows: R plane, G plane, B plane; batch 10 comes after batch 2 (numeric order).
    np.testing.assert_array_equal(train[4]["target.png"][..., 1], batches[10][0, 1024:2048].reshape(32, 32))
    assert train[0]["input.png"].shape == (16, 16, 3) and len(list(splits["valid"])) == 2
    np.savez(folder / "train_data_batch_3.npz", data=np.zeros((2, 100), np.uint8))
    with pytest.raises(readers.ReaderError, match="train_data_batch_3.npz"):
        list(readers.read_imagenet_npz(tmp_path, get_dataset("imagenet32"))["train"])


def test_lfw_parts_reader_maps_colours_to_classes(tmp_path):
    from pipelines.data.datasets import get_dataset, readers

    _save(tmp_path / "lfw_funneled" / "Ann_Bee" / "Ann_Bee_0001.jpg", np.zeros((25, 25, 3), np.uint8))
    gt = np.zeros((25, 25, 3), np.uint8)
    gt[:8, :, 0], gt[8:18, :, 1], gt[18:, :, 2] = 255, 255, 255  # hair, face, background
    _save(tmp_path / "parts_lfw_funneled_gt_images" / "Ann_Bee_0001.ppm", gt)
    sp = tmp_path / "parts_lfw_funneled_superpixels_mat" / "Ann_Bee" / "Ann_Bee_0001.dat"
    sp.parent.mkdir(parents=True)
    np.savetxt(sp, np.arange(625).reshape(25, 25) // 30, fmt="%d")
    for name in ("parts_train.txt", "parts_validation.txt", "parts_test.txt"):
        (tmp_path / name).write_text("Ann_Bee 1\n")
    sample = next(iter(readers.read_lfw_parts(tmp_path, get_dataset("lfw_parts"))["train"]))
    assert sample["__key__"] == "Ann_Bee_0001"
    assert sample["target.png"][0, 0] == 2 and sample["target.png"][10, 0] == 1 and sample["target.png"][20, 0] == 0
    assert sample["superpixels.png"].dtype == np.uint16 and sample["superpixels.png"].max() == 20
    (tmp_path / "parts_test.txt").write_text("Ann_Bee 2\n")
    with pytest.raises(readers.ReaderError, match="Ann_Bee_0002.jpg"):
        list(readers.read_lfw_parts(tmp_path, get_dataset("lfw_parts"))["test"])


def test_interrupted_fetch_keeps_the_old_dataset(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    source = shared_archive("DRIVE.zip")
    out = tmp_path / "drive"
    old = fetching.fetch("drive", "demo", str(out))
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.stages.cli", "fetch", "drive", "--source", str(source),
                             "--out", str(out), "--shard-size", "4"], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list(tmp_path.glob(".drive.new-*/train-000000.tar")):
        time.sleep(0.05)  # wait until the new shards are being written beside the old dataset
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    assert proc.returncode != 0
    assert shards.validate(str(out)) == old  # the demo set is still there, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == [".drive.lock", "drive"]


def test_https_source(tmp_path):
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(shared_archive("Set5.zip").parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/Set5.zip"
        manifest = fetching.fetch("set5", url, str(tmp_path / "set5"))
    finally:
        server.shutdown()
    assert manifest["splits"]["test"]["count"] == 5 and manifest["source"] == url


def test_folder_holding_an_archive_and_a_folder(tmp_path):
    # Releases split over several downloads (LFW, ImageNet) arrive as a folder of archives and loose files.
    folder = tmp_path / "release"
    (folder / "more" / "deeper").mkdir(parents=True)
    with zipfile.ZipFile(shared_archive("Set5.zip")) as src, zipfile.ZipFile(folder / "part1.zip", "w") as dst:
        for name in src.namelist():
            if name.endswith(("baby.png", "bird.png", "head.png")):
                dst.writestr(name, src.read(name))
        for name in src.namelist():
            if name.endswith(("butterfly.png", "woman.png")):
                (folder / "more" / "deeper" / Path(name).name).write_bytes(src.read(name))
    manifest = fetching.fetch("set5", str(folder), str(tmp_path / "out"))
    keys = sorted(s["__key__"] for s in shards.iter_samples(str(tmp_path / "out"), "test"))
    assert keys == ["baby", "bird", "butterfly", "head", "woman"] and manifest["splits"]["test"]["count"] == 5
    assert sorted(p.name for p in folder.rglob("*")) == sorted(
        ["more", "deeper", "part1.zip", "butterfly.png", "woman.png"])  # the source folder is untouched
