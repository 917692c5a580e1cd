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


@pytest.mark.parametrize("size", [None, 16, 64])
def test_demo_depth_input_scores_below_the_papers_weakest_baseline(size):
    """The noisy input alone, scored as a prediction with the task's protocol, is worse than BM3D's 35.46 dB
    (c-Glow Table 4): the demo's input is a Kinect-like measurement with holes, not the target plus a whisper."""
    from pipelines.data.augment import key_rng
    from pipelines.reporting.reported import reported_value
    from pipelines.tasks import get_task
    from pipelines.tasks.depth import DEPTH_MAX_M

    task = get_task("depth")
    built = demo.build("sevenscenes")
    for split, samples in built.items():
        scorer = task.scorer()
        for s in samples:
            decoded = {k: v for k, v in s.items() if k != "__key__"}
            assert decoded["meta.json"]["target"] == "temporal fusion"
            raw, valid = decoded["input.npy"], decoded["mask.png"] > 0
            assert ((raw == 0) & valid).any() and (raw > 0).mean() > 0.6  # holes, but mostly measured
            sample = task.prepare(decoded, key=s["__key__"], train=False, rng=key_rng(s["__key__"]), size=size)
            scorer.add_prediction(s["__key__"], sample.x * DEPTH_MAX_M, sample.y, sample.mask[0] > 0.5)
        psnr = scorer.summary()["psnr"]
        assert 10.0 < psnr < reported_value("cglow_table4", "psnr", method="BM3D") == 35.46, (split, size, psnr)
