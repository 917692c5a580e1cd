"""pipelines/data/shards.py: deterministic tars, the old dataset kept until the new one is whole, checks on open."""
from __future__ import annotations

import json
import os
import tempfile

import numpy as np
import pytest

from pipelines.data import shards, storage


def _samples(n: int, prefix: str = "k"):
    rng = np.random.default_rng(0)
    for i in range(n):
        yield {"__key__": f"{prefix}{i:03d}", "input.png": rng.integers(0, 256, (8, 8, 3), dtype=np.uint8),
               "target.png": (rng.random((8, 8)) > 0.5).astype(np.uint8),
               "target.npy": rng.random((8, 8)).astype(np.float32), "meta.json": {"i": i}}


def _write(dest, n=7, shard_size=3, **kw):
    return shards.write_dataset(str(dest), "toy", {"train": _samples(n), "test": _samples(2, "t")},
                                source="unit", source_sha256="abc", shard_size=shard_size, **kw)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _listing(dest: str) -> dict[str, int]:
    return storage.list_sizes(dest, recursive=True)


def test_roundtrip_layout_and_manifest(tmp_path):
    manifest = _write(tmp_path / "d")
    assert sorted(os.listdir(tmp_path / "d")) == ["manifest.json", "test-000000.tar", "train-000000.tar",
                                                  "train-000001.tar", "train-000002.tar"]
    on_disk = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert on_disk == manifest and manifest["format"] == "cnf-shards/2"
    for shard in manifest["splits"]["train"]["shards"]:
        assert shard["size"] == (tmp_path / "d" / shard["name"]).stat().st_size
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o777 & ~_umask()
    assert sorted(os.listdir(tmp_path)) == [".d.lock", "d"]  # no side folder left; the lock file stays beside
    assert [s["count"] for s in manifest["splits"]["train"]["shards"]] == [3, 3, 1]
    assert manifest["splits"]["train"]["count"] == 7 and manifest["source_sha256"] == "abc"
    samples = list(shards.iter_samples(str(tmp_path / "d"), "train"))
    originals = list(_samples(7))
    assert [s["__key__"] for s in samples] == [o["__key__"] for o in originals]
    for got, want in zip(samples, originals):
        for member in ("input.png", "target.png", "target.npy"):
            np.testing.assert_array_equal(got[member], want[member])
        assert got["meta.json"] == want["meta.json"]
    shards.validate(str(tmp_path / "d"), decode=True)


def test_bytes_are_deterministic(tmp_path):
    a, b = _write(tmp_path / "a"), _write(tmp_path / "b")
    assert a["splits"] == b["splits"]


def test_failure_mid_write_keeps_the_old_dataset_readable(tmp_path):
    dest = str(tmp_path / "d")
    old = _write(dest)
    before = _listing(dest)
    seen_mid_write = []

    def broken():
        yield from _samples(4)
        # Halfway through the new write, DEST still reads as the old dataset.
        seen_mid_write.extend(s["__key__"] for s in shards.iter_samples(dest, "test"))
        raise RuntimeError("source died")

    with pytest.raises(RuntimeError, match="source died"):
        shards.write_dataset(dest, "toy", {"train": broken()}, source="unit", source_sha256="def", shard_size=3)
    assert seen_mid_write == ["t000", "t001"]
    assert _listing(dest) == before and shards.validate(dest) == old
    assert sorted(os.listdir(tmp_path)) == [".d.lock", "d"]  # the side folder is gone
    with pytest.raises(shards.ShardError, match="expected 8"):  # a failed count check: the same
        _write(dest, n=5, expected_counts={"train": 8})
    assert shards.validate(dest) == old
    new = _write(dest, n=4)  # a successful write replaces it whole
    assert new["splits"]["train"]["count"] == 4 and sorted(os.listdir(dest)) == [
        "manifest.json", "test-000000.tar", "train-000000.tar", "train-000001.tar"]


def test_a_folder_holding_other_files_is_refused_by_name(tmp_path):
    (tmp_path / "d" / "notes").mkdir(parents=True)
    (tmp_path / "d" / "README.txt").write_text("mine")
    with pytest.raises(shards.ShardError, match=r"d: holds README.txt, notes/, which are not part of a dataset"):
        _write(tmp_path / "d")
    assert sorted(os.listdir(tmp_path / "d")) == ["README.txt", "notes"]


def test_count_mismatch_and_bad_keys_fail(tmp_path):
    with pytest.raises(shards.ShardError, match="split 'train' has 7 samples, expected 8"):
        _write(tmp_path / "d", expected_counts={"train": 8})
    assert not (tmp_path / "d").exists()
    with pytest.raises(shards.ShardError, match="no dots"):
        shards.write_dataset(str(tmp_path / "e"), "toy", {"train": [{"__key__": "a.b", "meta.json": {}}]},
                             source="u", source_sha256="x")
    with pytest.raises(shards.ShardError, match="duplicate"):
        shards.write_dataset(str(tmp_path / "e"), "toy", {"train": [{"__key__": "a"}, {"__key__": "a"}]},
                             source="u", source_sha256="x")
    assert not (tmp_path / "e").exists()


def test_up_to_date_compares_content_and_validate_detects_corruption(tmp_path, capsys):
    dest = str(tmp_path / "d")
    _write(dest)
    assert shards.is_up_to_date(dest, "toy", "abc", 3) is not None
    assert shards.is_up_to_date(dest, "toy", "other", 3) is None
    assert shards.is_up_to_date(dest, "toy", "abc", 4) is None
    shard = tmp_path / "d" / "train-000001.tar"
    data = bytearray(shard.read_bytes())
    data[600] ^= 0xFF  # same size, other bytes
    shard.write_bytes(bytes(data))
    assert shards.is_up_to_date(dest, "toy", "abc", 3) is None
    assert "train-000001.tar: sha256" in capsys.readouterr().err
    with pytest.raises(shards.ShardError, match="train-000001.tar: sha256"):
        shards.validate(dest)
    shard.write_bytes(bytes(data[:1024]))  # truncated
    assert shards.is_up_to_date(dest, "toy", "abc", 3) is None
    assert f"train-000001.tar: 1024 bytes, {dest}/manifest.json says {len(data)}" in capsys.readouterr().err
    shard.unlink()
    assert shards.is_up_to_date(dest, "toy", "abc", 3) is None
    with pytest.raises(shards.ShardError, match="missing"):
        shards.validate(dest)
    (tmp_path / "d" / "manifest.json").write_bytes(b"")  # a zero-byte manifest is no dataset, not a crash
    assert shards.is_up_to_date(dest, "toy", "abc", 3) is None
    assert "not valid JSON" in capsys.readouterr().err


def test_opening_a_split_checks_sizes_always_and_sha256_on_request(tmp_path, monkeypatch):
    dest = str(tmp_path / "d")
    manifest = _write(dest)
    assert [c for _, c in shards.shard_uris(dest, "train")] == [3, 3, 1]
    shard = tmp_path / "d" / "train-000001.tar"
    good = shard.read_bytes()
    shard.write_bytes(good[:-512])
    with pytest.raises(shards.ShardError, match=rf"train-000001.tar: {len(good) - 512} bytes, .*manifest.json "
                                                rf"says {len(good)}.*run `cnf fetch` again"):
        shards.shard_uris(dest, "train")
    with pytest.raises(shards.ShardError, match="train-000001.tar"):
        list(shards.iter_samples(dest, "train"))
    assert len(shards.shard_uris(dest, "test")) == 1  # the other split is fine
    flipped = bytearray(good)
    flipped[700] ^= 0xFF
    shard.write_bytes(bytes(flipped))
    assert len(shards.shard_uris(dest, "train")) == 3  # same size: only a hash sees it
    with pytest.raises(shards.ShardError, match=rf"train-000001.tar: sha256 [0-9a-f]{{64}}, .* says "
                                                rf"{manifest['splits']['train']['shards'][1]['sha256']}"):
        shards.shard_uris(dest, "train", verify=True)
    monkeypatch.setenv("CNF_VERIFY_SHARDS", "1")
    with pytest.raises(shards.ShardError, match="train-000001.tar: sha256"):
        shards.shard_uris(dest, "train")
    monkeypatch.setenv("CNF_VERIFY_SHARDS", "maybe")
    with pytest.raises(ValueError, match=r"\$CNF_VERIFY_SHARDS='maybe': expected 1/true"):
        shards.shard_uris(dest, "train")
    monkeypatch.setenv("CNF_VERIFY_SHARDS", "0")
    (tmp_path / "d" / "train-000002.tar").unlink()
    with pytest.raises(shards.ShardError, match="train-000002.tar: listed in .*manifest.json but missing"):
        shards.shard_uris(dest, "train")


def test_old_manifests_without_sizes_are_still_read(tmp_path, capsys):
    dest = str(tmp_path / "d")
    manifest = _write(dest)
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            del shard["size"]
    manifest["format"] = "cnf-shards/1"
    (tmp_path / "d" / "manifest.json").write_text(json.dumps(manifest))
    assert len(shards.shard_uris(dest, "train")) == 3
    assert "cnf-shards/1 (no shard sizes)" in capsys.readouterr().err
    upgraded = shards.record_sizes(dest, shards.read_manifest(dest))
    assert shards.read_manifest(dest) == upgraded and upgraded["format"] == "cnf-shards/2"
    assert shards.validate(dest)["splits"] == _write(tmp_path / "again")["splits"]
    manifest["format"] = "cnf-shards/9"
    (tmp_path / "d" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(shards.ShardError, match="format 'cnf-shards/9' is not one this code reads"):
        shards.read_manifest(dest)


def test_a_corrupt_member_names_the_shard_the_key_and_the_member(tmp_path):
    from pipelines.data.loader import make_loader

    png = shards.encode_png(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8))
    good = {"target.png": np.zeros((16, 16), np.uint8), "mask.png": np.ones((16, 16), np.uint8)}
    samples = [{"__key__": "a", "input.png": png, **good},
               {"__key__": "b", "input.png": png[: len(png) // 2], **good}]  # cut off mid-stream
    dest = str(tmp_path / "d")
    shards.write_dataset(dest, "toy", {"test": samples}, source="unit", source_sha256="x", shard_size=1)
    uri = str(tmp_path / "d" / "test-000001.tar")
    with pytest.raises(shards.ShardError, match=rf"{uri}: sample 'b': member 'input.png' does not decode "
                                                r"\(OSError: .*\)"):
        list(shards.iter_samples(dest, "test"))
    with pytest.raises(shards.ShardError, match=rf"{uri}: sample 'b': member 'input.png'"):
        shards.validate(dest, decode=True)
    with pytest.raises(shards.ShardError, match=rf"{uri}: sample 'b': .*input.png"):
        list(make_loader(dest, "test", "vessel", batch_size=1, train=False))


def test_the_next_write_removes_what_killed_writers_left(tmp_path, monkeypatch):
    import socket
    import subprocess
    import sys

    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    tag = f"{dead}@{socket.gethostname()}"
    dest = tmp_path / "d"
    manifest = _write(dest)
    side = tmp_path / f".d.new-{tag}-k1ll3d00"  # a side folder of a writer killed mid-write
    side.mkdir()
    (side / "train-000000.tar").write_bytes(b"")
    (dest / ".train-000003.tar.tmp-4242").write_bytes(b"")  # cnf-shards/1 hidden temporaries
    (dest / ".manifest.json.abc123.tmp").write_bytes(b"")
    (dest / "train-000007.tar").write_bytes(b"")  # a zero-byte shard no manifest lists
    staging = tmp_path / "tmp" / f"cnf-shards-{tag}-s3stag3d"  # a killed S3 write's local staging folder
    staging.mkdir(parents=True)
    (staging / "test-000000.tar").write_bytes(b"")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    assert sorted(shards.remove_leftovers(str(dest), manifest)) == sorted(
        [str(side)] + [str(dest / n) for n in (".train-000003.tar.tmp-4242", ".manifest.json.abc123.tmp",
                                               "train-000007.tar")])
    assert shards.validate(str(dest)) == manifest
    side.mkdir()
    (dest / "train-000007.tar").write_bytes(b"")
    _write(dest)  # a write removes them too (the old folder's strays go with the old folder)
    assert sorted(os.listdir(tmp_path)) == [".d.lock", "d", "tmp"]
    assert "train-000007.tar" not in os.listdir(dest)


def test_s3_write_read_and_a_failed_rewrite_keeps_the_old_dataset(s3_bucket):
    dest = f"s3://{s3_bucket}/toy"
    old = _write(dest)
    assert old["shard_dir"].startswith("gen-")
    assert "manifest.json" in storage.listdir(dest)
    assert [s["__key__"] for s in shards.iter_samples(dest, "test")] == ["t000", "t001"]
    shards.validate(dest)
    before = _listing(dest)
    seen_mid_write = []

    def broken():
        yield from _samples(5)
        # New shards are already uploaded (shard_size 2), yet DEST still reads as the old dataset.
        assert len(_listing(dest)) > len(before)
        seen_mid_write.extend(s["__key__"] for s in shards.iter_samples(dest, "test"))
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        shards.write_dataset(dest, "toy", {"train": broken()}, source="u", source_sha256="z", shard_size=2)
    assert seen_mid_write == ["t000", "t001"]
    assert _listing(dest) == before and shards.validate(dest) == old  # the new generation is gone again
    shard = shards.shard_uris(dest, "train")[0][0]
    storage.put_bytes(storage.get_bytes(shard)[:-512], shard)
    with pytest.raises(shards.ShardError, match=rf"{shard}: \d+ bytes, .*manifest.json says"):
        shards.shard_uris(dest, "train")


def test_s3_leftovers_and_old_generations_are_removed_after_the_new_manifest(s3_bucket):
    dest = f"s3://{s3_bucket}/toy"
    first = _write(dest)
    orphan = storage.join(dest, "gen-20000101T000000Z-0badc0de", "train-000000.tar")  # a killed write's
    storage.put_bytes(b"", orphan)
    storage.put_bytes(b"", storage.join(dest, "train-000000.tar"))  # a cnf-shards/1 flat name, zero bytes
    storage.put_bytes(b"keep", storage.join(dest, "notes.txt"))  # not ours: left alone
    second = _write(dest, n=4)
    assert second["shard_dir"] != first["shard_dir"]
    assert sorted(_listing(dest)) == sorted(
        ["manifest.json", "notes.txt"] + [f"{second['shard_dir']}/{s['name']}"
                                          for split in second["splits"].values() for s in split["shards"]])
