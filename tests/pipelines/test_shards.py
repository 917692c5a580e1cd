"""pipelines/data/shards.py: deterministic tars, manifest written last, all-or-nothing writes, validation."""
from __future__ import annotations

import json
import os

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


def test_roundtrip_layout_and_manifest(tmp_path):
    manifest = _write(tmp_path / "d")
    assert sorted(os.listdir(tmp_path / "d")) == ["manifest.json", "test-000000.tar", "train-000000.tar",
                                                  "train-000001.tar", "train-000002.tar"]
    on_disk = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert on_disk == manifest
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


def test_failure_mid_write_leaves_nothing(tmp_path):
    _write(tmp_path / "d")  # an older complete dataset is replaced, not left half-overwritten

    def broken():
        yield from _samples(4)
        raise RuntimeError("source died")

    with pytest.raises(RuntimeError, match="source died"):
        shards.write_dataset(str(tmp_path / "d"), "toy", {"train": broken()}, source="unit",
                             source_sha256="def", shard_size=3)
    assert os.listdir(tmp_path / "d") == []


def test_count_mismatch_and_bad_keys_fail(tmp_path):
    with pytest.raises(shards.ShardError, match="split 'train' has 7 samples, expected 8"):
        _write(tmp_path / "d", expected_counts={"train": 8})
    assert os.listdir(tmp_path / "d") == []
    with pytest.raises(shards.ShardError, match="no dots"):
        shards.write_dataset(str(tmp_path / "e"), "toy", {"train": [{"__key__": "a.b", "meta.json": {}}]},
                             source="u", source_sha256="x")
    with pytest.raises(shards.ShardError, match="duplicate"):
        shards.write_dataset(str(tmp_path / "e"), "toy", {"train": [{"__key__": "a"}, {"__key__": "a"}]},
                             source="u", source_sha256="x")
    assert not (tmp_path / "e" / "manifest.json").exists()


def test_up_to_date_and_validate_detects_corruption(tmp_path):
    dest = str(tmp_path / "d")
    _write(dest)
    assert shards.is_up_to_date(dest, "toy", "abc", 3) is not None
    assert shards.is_up_to_date(dest, "toy", "other", 3) is None
    assert shards.is_up_to_date(dest, "toy", "abc", 4) is None
    shard = tmp_path / "d" / "train-000001.tar"
    data = bytearray(shard.read_bytes())
    data[600] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(shards.ShardError, match="train-000001.tar: sha256"):
        shards.validate(dest)
    shard.unlink()
    assert shards.is_up_to_date(dest, "toy", "abc", 3) is None
    with pytest.raises(shards.ShardError, match="missing"):
        shards.validate(dest)


def test_s3_write_read_and_cleanup(s3_bucket):
    dest = f"s3://{s3_bucket}/toy"
    _write(dest)
    assert "manifest.json" in storage.listdir(dest)
    assert [s["__key__"] for s in shards.iter_samples(dest, "test")] == ["t000", "t001"]
    shards.validate(dest)

    def broken():
        yield from _samples(5)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        shards.write_dataset(dest, "toy", {"train": broken()}, source="u", source_sha256="z", shard_size=2)
    assert storage.listdir(dest) == []
