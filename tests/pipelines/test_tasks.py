"""pipelines/tasks/: the registry, the Task contract over every task, each task's preparation, scorer, display."""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import ClassVar

import numpy as np
import pytest

import pipelines.tasks as tasks_pkg
from pipelines.data.augment import key_rng
from pipelines.tasks import TASKS, Sample, Task, get_task
from pipelines.tasks.base import display_input
from pipelines.tasks.denoise import add_gaussian_noise
from pipelines.tasks.depth import DEPTH_MAX_M, kinect_depth_noise
from pipelines.tasks.inpaint import central_block_mask
from pipelines.tasks.sr import sr_image_scores

TASK_MODULES = sorted(m.name for m in pkgutil.iter_modules(tasks_pkg.__path__) if m.name != "base")


# ------------------------------------------------------------------------------------------------ registry


def test_every_task_module_is_registered():
    assert TASK_MODULES == sorted(["sr", "vessel", "horses", "parts", "denoise", "depth", "inpaint"])
    registered = {type(t).__module__ for t in TASKS.values()}
    assert registered == {f"pipelines.tasks.{m}" for m in TASK_MODULES}
    for module in TASK_MODULES:
        defined = [obj for obj in vars(importlib.import_module(f"pipelines.tasks.{module}")).values()
                   if isinstance(obj, type) and issubclass(obj, Task) and obj is not Task
                   and obj.__module__ == f"pipelines.tasks.{module}"]
        assert len(defined) == 1 and any(type(t) is defined[0] for t in TASKS.values()), module
    assert all(get_task(name).name == name for name in TASKS)


def test_unknown_task_names_the_known_ones():
    with pytest.raises(KeyError, match="unknown task 'nope'") as info:
        get_task("nope")
    assert all(name in str(info.value) for name in TASKS)


def test_task_targets_and_defaults():
    assert {n: t.target for n, t in TASKS.items()} == {
        "sr": "image8", "vessel": "binary", "horses": "binary", "parts": "categorical",
        "denoise": "continuous", "depth": "continuous", "inpaint": "image8"}
    assert get_task("parts").num_classes == 3 and get_task("sr").scale == 2
    assert get_task("denoise").noise_sigma == 25.0 and get_task("inpaint").block_fraction == 0.5
    assert {n: t.size for n, t in TASKS.items() if t.size} == {"horses": 64, "parts": 64, "inpaint": 64}
    assert [n for n, t in TASKS.items() if t.augment] == ["vessel"]
    for task in TASKS.values():
        assert task.summary_metrics[0] == "bpd" and len(set(task.summary_metrics)) == len(task.summary_metrics)


def test_options_are_each_tasks_own():
    assert get_task("denoise").with_options(noise_sigma=50.0).noise_sigma == 50.0
    assert get_task("denoise").noise_sigma == 25.0  # the registered task is unchanged
    with pytest.raises(TypeError, match=r"unknown task option\(s\) \['noise_sigma'\] for task 'sr'.*scale"):
        get_task("sr").with_options(noise_sigma=3)
    with pytest.raises(ValueError, match="num_classes"):
        dataclasses.replace(get_task("parts"), num_classes=None)


# ---------------------------------------------------------------------------------------- the contract


def _decoded(task: Task, h: int = 20, w: int = 24) -> dict:
    """A synthetic shard sample with the members ``task`` reads (docs/architecture.md, Shards)."""
    rng = np.random.default_rng(0)
    scale = task.input_scale
    if task.target == "image8" or task.name == "denoise":  # denoise: an 8-bit image, continuous in [0, 1]
        target = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    elif task.target == "binary":
        target = rng.integers(0, 2, (h, w), dtype=np.uint8)
    elif task.target == "categorical":
        target = rng.integers(0, task.num_classes, (h, w), dtype=np.uint8)
    else:  # depth in metres
        target = rng.uniform(0.5, 4.0, (h, w)).astype(np.float32)
    decoded = {("target.npy" if target.dtype == np.float32 else "target.png"): target,
               "input.png": rng.integers(0, 256, (h // scale, w // scale, 3), dtype=np.uint8),
               "mask.png": np.pad(np.ones((h - 4, w - 4), np.uint8), 2)}
    for member in task.extra_members.values():
        decoded[member] = rng.integers(0, 30, (h, w), dtype=np.uint16)
    return decoded


@pytest.mark.parametrize("name", sorted(TASKS))
@pytest.mark.parametrize("train", [False, True])
def test_prepare_gives_padded_chw_samples_on_aligned_grids(name, train):
    task = get_task(name)
    kw = dict(key="k", train=train, seed=1, epoch=2 if train else 0, patch=8 if train else None, size=16,
              pad_multiple=3)
    sample = task.prepare(_decoded(task), rng=key_rng("k", 1, kw["epoch"]), **kw)
    again = task.prepare(_decoded(task), rng=key_rng("k", 1, kw["epoch"]), **kw)
    assert isinstance(sample, Sample)
    s = task.input_scale
    side = 8 if train else 16
    padded = side + (-side) % (3 * s)
    assert sample.y.shape[1:] == sample.mask.shape[1:] == (padded, padded) and sample.mask.shape[0] == 1
    assert sample.x.shape[1:] == (padded // s, padded // s) and sample.x.shape[0] in (1, 3)
    assert sample.y.dtype == sample.x.dtype == sample.mask.dtype == np.float32
    assert 0.0 <= sample.x.min() and sample.x.max() <= 1.0
    assert set(sample.extras) == set(task.extra_members)
    assert all(v.shape[1:] == sample.y.shape[1:] for v in sample.extras.values())
    for a, b in [(sample.y, again.y), (sample.x, again.x), (sample.mask, again.mask)]:
        np.testing.assert_array_equal(a, b)  # (key, seed, epoch) decide every random draw


def test_prepare_names_a_missing_member():
    from pipelines.data.shards import ShardError

    decoded = _decoded(get_task("vessel"))
    with pytest.raises(ShardError, match="k: task 'vessel' needs input.png"):
        get_task("vessel").prepare({k: v for k, v in decoded.items() if k != "input.png"}, key="k", train=False,
                                   rng=key_rng("k"))
    with pytest.raises(ShardError, match="no target.png or target.npy"):
        get_task("vessel").prepare({"input.png": decoded["input.png"]}, key="k", train=False, rng=key_rng("k"))


def test_sr_resize_makes_the_lr_input_again():
    from pipelines.data.imaging import bicubic_lr

    task = get_task("sr")
    sample = task.prepare(_decoded(task), key="k", train=False, rng=key_rng("k"), size=16)
    hr = sample.y.transpose(1, 2, 0).astype(np.uint8)
    np.testing.assert_array_equal(sample.x, bicubic_lr(hr, 2).transpose(2, 0, 1).astype(np.float32) / 255.0)


def test_derived_inputs_denoise_depth_inpaint():
    clean = np.full((64, 64, 3), 0.5, np.float32)
    a = add_gaussian_noise(clean, 25, key_rng("k1"))
    assert np.array_equal(a, add_gaussian_noise(clean, 25, key_rng("k1")))
    assert not np.array_equal(a, add_gaussian_noise(clean, 25, key_rng("k2")))
    assert abs(float((a - clean).std()) - 25 / 255) < 0.01

    depth = np.full((32, 32, 1), 3.0, np.float32)
    valid = np.ones_like(depth)
    valid[:4] = 0
    noisy = kinect_depth_noise(depth, valid, key_rng("d"))
    assert np.all(noisy[:4] == 0) and abs(float((noisy[4:] - 3.0).std()) - (0.0012 + 0.0019 * 2.6**2)) < 5e-4

    block = central_block_mask(64, 64, 0.5)
    assert block.sum() == 32 * 32 and block[32, 32] == 1 and block[0, 0] == 0
    task = get_task("inpaint")
    sample = task.prepare(_decoded(task, 20, 30), key="k", train=False, rng=key_rng("k"), size=16)
    np.testing.assert_array_equal(sample.mask[0], central_block_mask(16, 16, 0.5))  # the scored region
    assert np.all(sample.x[:, 4:12, 4:12] == 0) and sample.x[:, :4].max() > 0


def test_a_new_task_is_one_class_and_a_registry_entry(tmp_path, monkeypatch):
    """The loader knows no task names: a task registered at run time is prepared by its own hooks."""
    from pipelines.data.loader import make_loader
    from pipelines.stages import fetch

    @dataclasses.dataclass(frozen=True)
    class Flipped(Task):
        name: str = "flipped"
        target: str = "binary"
        summary_metrics: ClassVar[tuple[str, ...]] = ("bpd",)

        def derive_input(self, y, x, mask, *, key, seed, epoch):
            return np.repeat(1.0 - y[::-1], 3, axis=-1), mask

    monkeypatch.setitem(TASKS, "flipped", Flipped())
    fetch.fetch("drive", "demo", str(tmp_path / "drive"))
    batch = next(iter(make_loader(str(tmp_path / "drive"), "test", "flipped", 2, train=False)))
    np.testing.assert_array_equal(batch["x"][:, :1].numpy(), 1.0 - batch["y"].numpy()[:, :, ::-1])


# -------------------------------------------------------------------------------------------- scorers


def _perfect(task: Task) -> dict:
    """Each task's scorer on predictions equal to their targets."""
    scorer = task.scorer()
    for i, (h, w) in enumerate([(40, 48), (32, 32)]):
        sample = task.prepare(_decoded(task, h, w), key=f"k{i}", train=False, rng=key_rng(f"k{i}"), size=32)
        mask = sample.mask[0] > 0.5
        scorer.add_likelihood(np.array([-100.0]), sample.y.size)
        scorer.add_prediction(f"k{i}", sample.y, sample.y, mask, samples=[sample.y] * scorer.scatter_samples,
                              x=sample.x, extras=sample.extras)
    return scorer.summary()


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_scorer_scores_a_perfect_prediction_perfectly(name):
    task = get_task(name)
    out = _perfect(task)
    assert out["n"] == 2 and out["keys"] == ["k0", "k1"] and out["bpd"] > 0
    assert all(metric in out for metric in task.summary_metrics)
    perfect = {"psnr": np.inf, "ssim": 1.0, "f1": 1.0, "precision": 1.0, "recall": 1.0, "iou": 1.0, "spa": 1.0,
               "pixel_accuracy": 1.0}
    for metric in task.summary_metrics[1:]:
        assert out[metric] == pytest.approx(perfect[metric]), metric


def test_sr_protocol_crops_to_the_valid_box_and_needs_11_pixels_for_ssim():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 256, (3, 40, 40)).astype(np.float64)
    pred = np.clip(target + rng.normal(0, 5, target.shape), 0, 255)
    mask = np.zeros((40, 40), bool)
    mask[:30, :36] = True
    garbage = pred.copy()
    garbage[:, 30:] = 0.0  # outside the valid box (the loader's padding): never scored
    garbage[:, :, 36:] = 0.0
    assert sr_image_scores(garbage, target, mask, 2) == sr_image_scores(pred[:, :30, :36], target[:, :30, :36],
                                                                        None, 2)
    assert set(sr_image_scores(pred, target, None, 2)) == {"psnr", "ssim"}
    assert set(sr_image_scores(pred[:, :14, :14], target[:, :14, :14], None, 2)) == {"psnr"}  # 10 px after shave


# -------------------------------------------------------------------------------------------- display


#: The data-space range of y per task (docs/architecture.md target conventions).
RANGES = {"sr": (0, 255), "inpaint": (0, 255), "vessel": (0, 1), "horses": (0, 1), "parts": (0, 2),
          "denoise": (0.0, 1.0), "depth": (0.0, DEPTH_MAX_M)}


def _data_space(task: Task) -> np.ndarray:
    """Random y of ``task`` in its range, with the range's ends at pixels (0, 0) and (0, 1)."""
    lo, hi = RANGES[task.name]
    channels = 3 if task.target == "image8" else 1
    y = np.random.default_rng(3).uniform(lo, hi, (channels, 6, 7))
    y = np.rint(y) if isinstance(hi, int) else y
    y[:, 0, 0], y[:, 0, 1] = lo, hi
    return y.astype(np.float32)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_display_draws_y_as_rgb_in_the_unit_range(name):
    import torch

    task = get_task(name)
    y = _data_space(task)
    image = task.display(y)
    assert image.shape == (6, 7, 3) and image.dtype == np.float64
    assert image.min() >= 0.0 and image.max() <= 1.0
    assert image[0, 0].tolist() == [0.0] * 3 and image[0, 1].tolist() == [1.0] * 3  # black to full intensity
    np.testing.assert_array_equal(task.display(torch.from_numpy(y)), image)  # tensors as arrays
    if y.shape[0] == 1:
        assert np.all(image[..., 0] == image[..., 2])  # single channels grey


def test_display_scales_by_the_target_convention():
    assert get_task("sr").display(np.full((3, 2, 2), 51.0)).max() == pytest.approx(0.2)
    assert get_task("parts").display(np.ones((1, 2, 2))).max() == pytest.approx(0.5)  # 1 of {0, 1, 2}
    assert get_task("depth").display(np.full((1, 2, 2), 2.0)).max() == pytest.approx(2.0 / DEPTH_MAX_M)
    stretched = get_task("denoise").display(np.array([[[-1.0, 3.0]]]))
    assert stretched[0, :, 0].tolist() == [0.0, 1.0]  # out-of-range continuous values stretched to their range
    with pytest.raises(ValueError, match="2-channel"):
        get_task("denoise").display(np.zeros((2, 3, 3)))


def test_display_input_draws_x():
    x = np.random.default_rng(0).random((3, 5, 4))
    np.testing.assert_array_equal(display_input(x), x.transpose(1, 2, 0))
    grey = display_input(np.full((1, 5, 4), 1.5))
    assert grey.shape == (5, 4, 3) and grey.max() == 1.0
