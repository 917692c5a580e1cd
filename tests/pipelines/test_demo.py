"""pipelines/data/datasets/demo.py: every dataset has a deterministic demo set with the real set's formats."""
from __future__ import annotations

import numpy as np
import pytest

from pipelines.stages import fetch
from pipelines.data import shards
from pipelines.data.datasets import DATASETS, demo


def test_every_dataset_has_a_demo():
    assert set(demo.DEMOS) == set(DATASETS)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_demo_fetch_is_deterministic_and_well_formed(name, tmp_path):
    a = fetch.fetch(name, "demo", str(tmp_path / "a"), shard_size=8)
    b = fetch.fetch(name, "demo", str(tmp_path / "b"), shard_size=8)
    assert a["splits"] == b["splits"]  # same shard sha256s
    spec = DATASETS[name]
    assert set(a["splits"]) == set(spec.splits)
    shards.validate(str(tmp_path / "a"), decode=True)
    for split in a["splits"]:
        for sample in shards.iter_samples(str(tmp_path / "a"), split):
            meta = sample["meta.json"]
            assert meta["demo"] is True and meta["task"] == spec.task
            target = sample.get("target.png", sample.get("target.npy"))
            assert target is not None
            if spec.task in ("vessel", "horses"):
                assert set(np.unique(target)) <= {0, 1}
            if spec.task == "parts":
                assert set(np.unique(target)) <= {0, 1, 2} and "superpixels.png" in sample
            if spec.task == "sr":
                assert sample["input.png"].shape[0] * spec.scale == target.shape[0]
            if name == "drive":
                assert set(np.unique(sample["mask.png"])) == {0, 1}
                assert ("target2.png" in sample) == (split == "test")


def test_drive_demo_keys_follow_drive():
    built = demo.build("drive")
    assert [s["__key__"] for s in built["train"]] == ["21", "22", "23", "24"]
    assert [s["__key__"] for s in built["test"]] == ["01", "02"]
    assert built["train"][0]["input.png"].shape == (64, 64, 3)


def test_rerun_is_a_no_op(tmp_path):
    dest = tmp_path / "drive"
    fetch.fetch("drive", "demo", str(dest))
    before = {p.name: p.stat().st_mtime_ns for p in dest.iterdir()}
    fetch.fetch("drive", "demo", str(dest))
    assert {p.name: p.stat().st_mtime_ns for p in dest.iterdir()} == before
