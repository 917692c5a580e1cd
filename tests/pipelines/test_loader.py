"""pipelines/data/loader.py: DDP/worker sample splitting, augmentation, aligned SR patches, derived inputs.

The warp and patch mechanics themselves are tested in test_augment.py, each task's preparation in test_tasks.py.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines.data import imaging
from pipelines.data.loader import assign_indices, make_loader
from pipelines.stages import fetch


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    fetch.fetch("imagenet32", "demo", str(root / "imagenet32"), shard_size=10)  # 64 train in 7 shards
    fetch.fetch("drive", "demo", str(root / "drive"), shard_size=3)
    fetch.fetch("celeba", "demo", str(root / "celeba"))
    fetch.fetch("bsds500", "demo", str(root / "bsds500"))
    return root


def _keys(loader) -> list[str]:
    return [k for batch in loader for k in batch["key"]]


@pytest.mark.parametrize("train", [True, False])
def test_two_ranks_two_workers_read_disjoint_samples_covering_the_split(demo_root, train):
    dest = str(demo_root / "imagenet32")
    per_rank = [_keys(make_loader(dest, "train", "sr", batch_size=1, train=train, rank=r, world_size=2,
                                  num_workers=2, seed=3, epoch=1)) for r in range(2)]
    assert not set(per_rank[0]) & set(per_rank[1])
    assert all(len(k) == len(set(k)) for k in per_rank)
    assert len(per_rank[0]) == len(per_rank[1]) == 32  # equal per rank: no DDP hang
    assert set(per_rank[0]) | set(per_rank[1]) == {f"train_{i:07d}" for i in range(64)}


def test_unequal_split_is_equalised_for_training():
    parts = [assign_indices(11, r, 3, seed=0, epoch=0, train=True) for r in range(3)]
    assert [len(p) for p in parts] == [3, 3, 3]
    assert len(set(np.concatenate(parts))) == 9
    assert sum(len(assign_indices(11, r, 3, 0, 0, train=False)) for r in range(3)) == 11


def test_training_order_changes_with_epoch_and_eval_order_is_fixed(demo_root):
    dest = str(demo_root / "imagenet32")
    e0 = _keys(make_loader(dest, "train", "sr", 4, train=True, epoch=0))
    e1 = _keys(make_loader(dest, "train", "sr", 4, train=True, epoch=1))
    assert e0 != e1 and sorted(e0) == sorted(e1)
    ev = [_keys(make_loader(dest, "valid", "sr", 4, train=False, num_workers=n)) for n in (0, 2)]
    assert ev[0] == [f"valid_{i:07d}" for i in range(8)]
    assert sorted(ev[1]) == ev[0]


def test_sr_patches_are_aligned(demo_root):
    batch = next(iter(make_loader(str(demo_root / "imagenet32"), "train", "sr", 8, train=True, patch=16)))
    assert batch["y"].shape == (8, 3, 16, 16) and batch["x"].shape == (8, 3, 8, 8)
    for y, x in zip(batch["y"].numpy(), batch["x"].numpy()):
        lr = imaging.imresize(y.transpose(1, 2, 0), 0.5) / 255.0
        # Same content up to the crop's border effects: interior matches closely, a misaligned crop would not.
        assert np.abs(lr[1:-1, 1:-1] - x.transpose(1, 2, 0)[1:-1, 1:-1]).mean() < 0.02


def test_drive_batches_augmentation_and_padding(demo_root):
    loader = make_loader(str(demo_root / "drive"), "train", "vessel", 2, train=True, pad_multiple=8)
    batch = next(iter(loader))
    assert batch["x"].shape == (2, 3, 64, 64) and batch["x"].dtype == torch.float32
    assert set(torch.unique(batch["y"]).tolist()) <= {0.0, 1.0}
    assert set(torch.unique(batch["mask"]).tolist()) <= {0.0, 1.0}
    patches = next(iter(make_loader(str(demo_root / "drive"), "train", "vessel", 4, train=True, patch=32)))
    assert patches["y"].shape == (4, 1, 32, 32) and set(torch.unique(patches["y"]).tolist()) <= {0.0, 1.0}
    assert patches["mask"].sum() > 0
    plain = next(iter(make_loader(str(demo_root / "drive"), "test", "vessel", 2, train=False, pad_multiple=24)))
    assert plain["y"].shape == (2, 1, 72, 72) and plain["mask"][:, :, 64:].sum() == 0
    assert plain["key"] == ["01", "02"]


@pytest.mark.parametrize("workers", [0, 2])
def test_endless_loader_draws_each_epoch_as_a_fresh_loader_would(demo_root, workers):
    """One endless loader (workers started once) = the per-epoch loaders back to back, crops and all."""
    dest = str(demo_root / "drive")
    kw = dict(train=True, patch=16, num_workers=workers, seed=5)
    endless = iter(make_loader(dest, "train", "vessel", 1, epoch=3, endless=True, **kw))
    per_epoch = len(make_loader(dest, "train", "vessel", 1, epoch=3, **kw).dataset)
    got = [next(endless) for _ in range(3 * per_epoch)]
    for e in (3, 4, 5):
        fresh = {b["key"][0]: b["y"] for b in make_loader(dest, "train", "vessel", 1, epoch=e, **kw)}
        mine = [b for b in got if b["epoch"] == [e]]
        assert sorted(b["key"][0] for b in mine) == sorted(fresh)  # every sample once per epoch
        for b in mine:
            assert torch.equal(b["y"], fresh[b["key"][0]])  # the same epoch-seeded augmentation


def test_inpaint_and_denoise_inputs(demo_root):
    batch = next(iter(make_loader(str(demo_root / "celeba"), "test", "inpaint", 2, train=False, size=16)))
    assert batch["mask"][0, 0].sum() == 64 and torch.all(batch["x"][:, :, 4:12, 4:12] == 0)
    assert batch["y"].max() > 1  # image8 target
    a = next(iter(make_loader(str(demo_root / "bsds500"), "train", "denoise", 2, train=False, size=16)))
    b = next(iter(make_loader(str(demo_root / "bsds500"), "train", "denoise", 2, train=False, size=16)))
    assert torch.equal(a["x"], b["x"]) and a["y"].max() <= 1.0
    noise = (a["x"] - a["y"]).std().item()
    assert 0.05 < noise < 0.12  # sigma 25/255 ~ 0.098, a little less after clipping
    sigma50 = next(iter(make_loader(str(demo_root / "bsds500"), "train", "denoise", 2, train=False, size=16,
                                    noise_sigma=50.0)))
    assert (sigma50["x"] - sigma50["y"]).std().item() > noise
    with pytest.raises(TypeError, match="unknown task option"):
        make_loader(str(demo_root / "bsds500"), "train", "denoise", 2, train=False, sigma=3)


def test_training_patches_are_not_padded_past_their_size(demo_root):
    """Winkler's DRIVE profile pads whole images to 1024: a 32x32 training patch must stay 32x32, not become
    1024x1024 zeros, while evaluation still pads whole images to the multiple."""
    from pipelines.data.loader import loader_options

    data = {"pad_multiple": 1024, "patch": 32, "num_workers": 0}
    train_kw = loader_options(data, train=True)
    assert train_kw["pad_multiple"] == 32 and loader_options(data, train=False)["pad_multiple"] == 1024
    batch = next(iter(make_loader(str(demo_root / "drive"), "train", "vessel", 2, train=True, **train_kw)))
    assert batch["y"].shape == (2, 1, 32, 32) and batch["x"].shape == (2, 3, 32, 32)
    # A patch that is not a multiple of a smaller pad_multiple is still padded to it.
    odd = loader_options({"pad_multiple": 8, "patch": 30}, train=True)
    assert odd["pad_multiple"] == 8
    batch = next(iter(make_loader(str(demo_root / "drive"), "train", "vessel", 2, train=True, **odd)))
    assert batch["y"].shape == (2, 1, 32, 32) and batch["mask"][:, :, 30:].sum() == 0


def test_holdout_sets_the_last_samples_aside_from_training_and_reads_them_alone(demo_root):
    dest = str(demo_root / "imagenet32")  # 64 train samples in 7 shards
    every = _keys(make_loader(dest, "train", "sr", batch_size=1, train=False))
    held = _keys(make_loader(dest, "train", "sr", batch_size=1, train=False, holdout=5, held_out=True))
    assert held == every[-5:]
    for epoch in (0, 3):
        fit = [_keys(make_loader(dest, "train", "sr", batch_size=1, train=True, rank=r, world_size=2,
                                 num_workers=2, seed=1, epoch=epoch, holdout=5)) for r in range(2)]
        seen = set(fit[0]) | set(fit[1])
        assert not seen & set(held) and len(fit[0]) == len(fit[1]) == 29  # 59 left, equal per rank
        assert seen <= set(every[:-5])
    endless = make_loader(dest, "train", "sr", batch_size=4, train=True, endless=True, holdout=5)
    drawn = {k for _, batch in zip(range(40), endless) for k in batch["key"]}
    assert not drawn & set(held) and len(drawn) == 59  # later epochs keep it out too
    with pytest.raises(ValueError, match="holdout 64 must leave samples"):
        make_loader(dest, "train", "sr", batch_size=1, train=True, holdout=64)
    with pytest.raises(ValueError, match="held_out=True needs holdout"):
        make_loader(dest, "train", "sr", batch_size=1, train=False, held_out=True)


# Every task, as the demo profile trains it: (dataset, task, loader options).
CACHED_TASKS = [("drive", "vessel", {"patch": 16}), ("imagenet32", "sr", {"size": 16, "flip": True}),
                ("horses", "horses", {"size": 16, "flip": True}), ("lfw_parts", "parts", {"size": 16}),
                ("bsds500", "denoise", {"size": 16}), ("sevenscenes", "depth", {"size": 16}),
                ("celeba", "inpaint", {"size": 16})]


@pytest.mark.parametrize("dataset,task,options", CACHED_TASKS, ids=[t for _, t, _ in CACHED_TASKS])
def test_decoded_sample_cache_serves_later_epochs_with_the_same_batches(tmp_path_factory, dataset, task, options):
    """The cache skips reading and decoding (the shards are gone and later epochs still load), its arrays are
    read-only (a task that wrote into one would fail here), and every batch equals the uncached loader's."""
    import shutil

    root = tmp_path_factory.mktemp(f"cache-{task}")
    fetch.fetch(dataset, "demo", str(root / dataset))
    dest = str(root / dataset)
    kw = dict(train=True, endless=True, seed=3, **options)
    plain = make_loader(dest, "train", task, 2, **kw)
    cached = make_loader(dest, "train", task, 2, cache_mb=256, **kw)
    per_epoch = cached.steps_per_epoch
    a, b = iter(plain), iter(cached)
    first = [(next(a), next(b)) for _ in range(per_epoch + 1)]  # one epoch read and decoded, then the cache
    assert len(cached.dataset.cache.samples) == len(cached.dataset)
    for shard in (root / dataset).glob("**/*.tar"):
        shutil.move(shard, shard.with_suffix(".gone"))  # later epochs of the cached loader need no shard
    with pytest.raises(Exception):
        for _ in range(2 * per_epoch):
            next(a)
    b_later = [next(b) for _ in range(2 * per_epoch)]
    for shard in (root / dataset).glob("**/*.gone"):
        shutil.move(shard, shard.with_suffix(".tar"))
    again = iter(make_loader(dest, "train", task, 2, **kw))
    reference = [next(again) for _ in range(3 * per_epoch + 1)]
    for want, got in zip(reference, [x for _, x in first] + b_later, strict=True):
        assert want["key"] == got["key"] and want["epoch"] == got["epoch"]
        for name in want:
            if isinstance(want[name], torch.Tensor):
                assert torch.equal(want[name], got[name]), (name, want["key"])
    assert all(torch.equal(p["y"], c["y"]) for p, c in first)


def test_cache_holds_no_more_than_its_limit_and_evaluation_never_caches(demo_root):
    dest = str(demo_root / "imagenet32")  # 64 samples of one size
    full = make_loader(dest, "train", "sr", 4, train=True, cache_mb=64, seed=0)
    _keys(full)
    each = full.dataset.cache.bytes / len(full.dataset.cache.samples)
    small = make_loader(dest, "train", "sr", 4, train=True, cache_mb=10.5 * each / 2**20, seed=0)
    _keys(small)
    assert len(small.dataset.cache.samples) == 10 and small.dataset.cache.bytes <= small.dataset.cache.limit
    assert make_loader(dest, "valid", "sr", 4, train=False, cache_mb=64).dataset.cache is None
    with pytest.raises(ValueError, match="cache_mb -1 must be >= 0"):
        make_loader(dest, "train", "sr", 4, train=True, cache_mb=-1)
