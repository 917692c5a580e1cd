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
from pipelines.tasks.base import UNPADDED
from pipelines.tasks.depth import DEPTH_MAX_M, DEPTH_PEAK_M
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
    assert get_task("horses").tile == 3
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
    if task.name == "depth":  # the raw Kinect frame: the target with noise and a hole
        raw = (target + rng.normal(0, 0.02, target.shape)).astype(np.float32)
        raw[:3, :3] = 0.0
        decoded["input.npy"] = raw
    for member in task.extra_members.values():
        decoded[member] = rng.integers(0, 30, (h, w), dtype=np.uint16)
    return decoded


def test_edge_padding_continues_y_and_x_and_leaves_mask_and_extras_zero():
    """pad_mode: edge repeats the last row and column of y and x; the mask and the unpadded marker stay 0 there,
    so no score and no bits/dim reads the padding, and the real pixels are those of zero padding."""
    task = get_task("sr")
    kw = dict(key="k", train=False, seed=1, rng=key_rng("k", 1, 0), size=20, pad_multiple=8)
    zeros = task.prepare(_decoded(task), **kw)
    kw["rng"] = key_rng("k", 1, 0)
    edge = task.with_options(pad_mode="edge").prepare(_decoded(task), **kw)
    assert edge.y.shape == zeros.y.shape == (3, 32, 32) and edge.x.shape == (3, 16, 16)
    np.testing.assert_array_equal(edge.y[:, :20, :20], zeros.y[:, :20, :20])
    np.testing.assert_array_equal(edge.y, np.pad(zeros.y[:, :20, :20], [(0, 0), (0, 12), (0, 12)], mode="edge"))
    np.testing.assert_array_equal(edge.x, np.pad(zeros.x[:, :10, :10], [(0, 0), (0, 6), (0, 6)], mode="edge"))
    np.testing.assert_array_equal(edge.mask, zeros.mask)
    np.testing.assert_array_equal(edge.extras[UNPADDED], zeros.extras[UNPADDED])
    assert not zeros.y[:, 20:].any() and edge.y[:, 20:].any()
    with pytest.raises(ValueError, match="pad_mode must be one of"):
        task.with_options(pad_mode="wrap")


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
    y_side = side // 2 if name == "inpaint" else side  # inpainting predicts the central block only
    y_padded = y_side + (-y_side) % (3 * s)
    assert sample.y.shape[1:] == sample.mask.shape[1:] == (y_padded, y_padded) and sample.mask.shape[0] == 1
    assert sample.x.shape[1:] == (padded // s, padded // s) and sample.x.shape[0] in (1, 3)
    assert sample.y.dtype == sample.x.dtype == sample.mask.dtype == np.float32
    if name != "denoise":  # x = y + n is not clipped (DnCNN's protocol)
        assert 0.0 <= sample.x.min() and sample.x.max() <= 1.0
    assert set(sample.extras) == set(task.extra_members) | {UNPADDED}
    assert all(v.shape[1:] == sample.y.shape[1:] for v in sample.extras.values())
    unpadded = sample.extras[UNPADDED][0]
    assert unpadded[:y_side, :y_side].all() and unpadded.sum() == y_side * y_side  # only y's own pixels
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


def test_denoising_noise_is_seeded_and_not_clipped():
    clean = np.full((64, 64, 3), 0.98, np.float32)
    a = add_gaussian_noise(clean, 25, key_rng("k1"))
    assert np.array_equal(a, add_gaussian_noise(clean, 25, key_rng("k1")))
    assert not np.array_equal(a, add_gaussian_noise(clean, 25, key_rng("k2")))
    assert abs(float((a - clean).std()) - 25 / 255) < 0.01  # clipping at 1 would shrink it to about 0.06
    assert a.max() > 1.05 and abs(float(a.mean()) - 0.98) < 0.01


def test_denoising_crops_the_centred_square_then_resizes():
    """'Crop a region and resize': the aspect ratio is kept (a 20x30 image is not squeezed to 10x10)."""
    from pipelines.data.imaging import imresize

    task = get_task("denoise")
    image = np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    sample = task.prepare({"target.png": image}, key="k", train=False, rng=key_rng("k"), size=10)
    expected = imresize(image[:, 5:25].astype(np.float32) / 255.0, output_shape=(10, 10))
    np.testing.assert_allclose(sample.y, expected.transpose(2, 0, 1), atol=1e-6)
    squeezed = imresize(image.astype(np.float32) / 255.0, output_shape=(10, 10))
    assert np.abs(sample.y - squeezed.transpose(2, 0, 1)).max() > 0.05


def test_inpainting_target_is_the_centre_block_and_x_hides_it():
    block = central_block_mask(64, 64, 0.5)
    assert block.sum() == 32 * 32 and block[32, 32] == 1 and block[0, 0] == 0
    task = get_task("inpaint")
    image = np.random.default_rng(2).integers(1, 256, (16, 16, 3), dtype=np.uint8)
    sample = task.prepare({"target.png": image}, key="k", train=False, rng=key_rng("k"), size=16)
    np.testing.assert_array_equal(sample.y, image[4:12, 4:12].transpose(2, 0, 1).astype(np.float32))
    assert sample.mask.shape == (1, 8, 8) and sample.mask.all()  # all of y is the scored region
    assert sample.x.shape == (3, 16, 16) and np.all(sample.x[:, 4:12, 4:12] == 0)
    np.testing.assert_allclose(sample.x[:, :4], image[:4].transpose(2, 0, 1) / 255.0, atol=1e-6)
    scorer = task.scorer()  # a perfect block scores inf in both regions whatever x shows
    scorer.add_prediction("k", sample.y, sample.y, sample.mask[0] > 0.5, x=sample.x)
    assert scorer.summary()["psnr"] == np.inf and scorer.summary()["psnr_block"] == np.inf


def test_inpainting_psnr_of_the_composited_image_and_of_the_block():
    """psnr: the whole image with the predicted block put back (only the block errs); psnr_block: the block."""
    from skimage.metrics import peak_signal_noise_ratio as sk_psnr

    task = get_task("inpaint")
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    sample = task.prepare({"target.png": image}, key="k", train=False, rng=key_rng("k"), size=16)
    guess = np.clip(sample.y + rng.normal(0, 20, sample.y.shape), 0, 255)
    scorer = task.scorer()
    scorer.add_prediction("k", guess, sample.y, sample.mask[0] > 0.5, x=sample.x)
    out = scorer.summary()
    whole = image.transpose(2, 0, 1).astype(np.float64)
    pasted = whole.copy()
    pasted[:, 4:12, 4:12] = np.rint(guess)
    assert out["psnr"] == pytest.approx(sk_psnr(whole, pasted, data_range=255))
    assert out["psnr_block"] == pytest.approx(sk_psnr(sample.y.astype(np.float64), np.rint(guess), data_range=255))
    assert out["psnr"] - out["psnr_block"] == pytest.approx(10 * np.log10(4))  # a quarter of the pixels hidden
    bare = task.scorer()  # without x (a bare block) only the block can be scored
    bare.add_prediction("k", guess, sample.y, sample.mask[0] > 0.5)
    assert "psnr" not in bare.summary() and bare.summary()["psnr_block"] == pytest.approx(out["psnr_block"])


def test_horses_target_is_the_mask_tiled_three_times():
    task = get_task("horses")
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 6:10] = 1
    sample = task.prepare({"target.png": mask, "input.png": np.zeros((16, 16, 3), np.uint8)}, key="k",
                          train=False, rng=key_rng("k"), size=16)
    assert sample.y.shape == (3, 16, 16)
    for channel in sample.y:
        np.testing.assert_array_equal(channel, mask)
    assert task.with_options(tile=1).prepare({"target.png": mask, "input.png": np.zeros((16, 16, 3), np.uint8)},
                                             key="k", train=False, rng=key_rng("k"), size=16).y.shape[0] == 1


@pytest.mark.parametrize("name", ["horses", "sr", "inpaint"])
def test_flip_mirrors_every_array_together_half_the_time_and_only_in_training(name):
    task = get_task(name)
    decoded = _decoded(task, 16, 16)
    plain = task.prepare(decoded, key="k", train=False, rng=key_rng("k"), size=None if name == "sr" else 16)
    flipped = 0
    for i in range(40):
        args = dict(key="k", train=True, rng=key_rng(f"k{i}"), size=None if name == "sr" else 16)
        off = task.prepare(decoded, **args)
        args["rng"] = key_rng(f"k{i}")
        on = task.with_options(flip=True).prepare(decoded, **args)
        np.testing.assert_array_equal(off.y, plain.y)  # no patch: training without flip is the image itself
        if np.array_equal(on.y, plain.y[..., ::-1]) and not np.array_equal(on.y, plain.y):
            flipped += 1
            np.testing.assert_array_equal(on.x, plain.x[..., ::-1])
            np.testing.assert_array_equal(on.mask, plain.mask[..., ::-1])
        else:
            np.testing.assert_array_equal(on.y, plain.y)
            np.testing.assert_array_equal(on.x, plain.x)
    assert 10 <= flipped <= 30
    again = task.with_options(flip=True).prepare(decoded, key="k", train=False, rng=key_rng("k"),
                                                 size=None if name == "sr" else 16)
    np.testing.assert_array_equal(again.y, plain.y)


def test_horses_iou_is_the_class_mean_and_the_copies_collapse_by_their_mean():
    target = np.zeros((3, 4, 4))
    target[:, :2] = 1  # foreground: the top 8 pixels
    soft = np.zeros((3, 4, 4))
    soft[:, :1] = 1.0  # the top row sure in every copy
    soft[:2, 1] = 0.8  # the second row in two copies of three: mean 0.53 > 1/2
    soft[:, 2] = [[0.9], [0.3], [0.2]]  # the third row in one copy: mean 0.47, background
    scorer = get_task("horses").scorer()
    scorer.add_prediction("k", (soft > 0.5).astype(float), target, mean=soft)
    out = scorer.summary()
    assert out["iou_fg"] == pytest.approx(1.0) and out["iou"] == pytest.approx(1.0)
    soft[:, 1] = 0.0  # now only the top row: foreground IoU 4/8, background IoU 8/12
    scorer = get_task("horses").scorer()
    scorer.add_prediction("k", soft, target, mean=soft)
    out = scorer.summary()
    assert out["iou_fg"] == pytest.approx(0.5) and out["iou"] == pytest.approx((0.5 + 8 / 12) / 2)
    with pytest.raises(ValueError, match="channels of a tiled target differ"):
        bad = target.copy()
        bad[2] = 0
        get_task("horses").scorer().add_prediction("k", soft, bad, mean=soft)


def _depth_frame(h: int = 24, w: int = 32) -> dict:
    rng = np.random.default_rng(5)
    scene = np.linspace(1.0, 3.0, h * w, dtype=np.float32).reshape(h, w)
    valid = np.ones((h, w), np.uint8)
    valid[:, :6] = 0  # no refined depth on the left (the sensor still reads something there)
    target = np.where(valid > 0, scene, 0.0).astype(np.float32)
    raw = (scene + rng.normal(0, 0.05, scene.shape)).astype(np.float32)
    raw[10:14, 10:14] = 0.0  # a sensor hole
    return {"target.npy": target, "mask.png": valid, "input.npy": raw}


def test_depth_input_is_the_raw_frame_and_y_the_refined_one():
    task = get_task("depth")
    frame = _depth_frame()
    sample = task.prepare(frame, key="k", train=False, rng=key_rng("k"))  # no size: the whole frame
    np.testing.assert_allclose(sample.x[0], frame["input.npy"] / DEPTH_MAX_M, atol=1e-7)
    valid = frame["mask.png"] > 0
    np.testing.assert_array_equal(sample.y[0][valid], frame["target.npy"][valid])
    np.testing.assert_array_equal(sample.mask[0], frame["mask.png"])
    assert (sample.y[0] > 0).all()  # invalid target pixels hold their nearest valid depth, never 0
    np.testing.assert_array_equal(sample.y[0][:, :6], np.repeat(frame["target.npy"][:, 6:7], 6, axis=1))
    from pipelines.data.shards import ShardError

    with pytest.raises(ShardError, match="needs input.npy"):
        task.prepare({k: v for k, v in frame.items() if k != "input.npy"}, key="k", train=False, rng=key_rng("k"))


def test_depth_crops_windows_and_never_resizes():
    """Every value of a crop is a value of the frame at the same offset: nothing is interpolated, so the invalid
    zeros of a frame cannot bleed into y."""
    task = get_task("depth")
    frame = _depth_frame()
    target, raw = frame["target.npy"], frame["input.npy"]
    windows = set()
    for epoch in range(6):
        sample = task.prepare(frame, key="k", train=True, rng=key_rng("k", 0, epoch), epoch=epoch, size=16)
        assert sample.y.shape == sample.x.shape == (1, 16, 16)
        hits = [(t, l) for t in range(24 - 15) for l in range(32 - 15)
                if np.allclose(raw[t:t + 16, l:l + 16] / DEPTH_MAX_M, sample.x[0], atol=1e-7)]
        assert len(hits) == 1
        top, left = hits[0]
        window = target[top:top + 16, left:left + 16]
        valid = frame["mask.png"][top:top + 16, left:left + 16] > 0
        np.testing.assert_array_equal(sample.y[0][valid], window[valid])
        assert sample.mask[0].mean() >= 0.9 or valid.mean() == max(  # the first window that is 90 % valid
            frame["mask.png"][t:t + 16, l:l + 16].mean() for t in range(9) for l in range(17))
        windows.add(hits[0])
    assert len(windows) > 1  # a new random window each epoch
    a = task.prepare(frame, key="k", train=False, rng=key_rng("k"), size=16)
    b = task.prepare(frame, key="k", train=False, rng=key_rng("k"), size=16)
    np.testing.assert_array_equal(a.x, b.x)  # one fixed window per test frame


def test_depth_psnr_is_over_valid_target_pixels_with_a_4_m_peak():
    target = np.full((1, 4, 4), 2.0)
    prediction = target + 0.04
    mask = np.ones((4, 4), bool)
    mask[0] = False
    prediction[0, 0] = 100.0  # outside the valid target pixels: not scored
    scorer = get_task("depth").scorer()
    scorer.add_prediction("k", prediction, target, mask)
    assert DEPTH_PEAK_M == 4.0
    assert scorer.summary()["psnr"] == pytest.approx(20 * np.log10(4.0 / 0.04))


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
    perfect = {"psnr": np.inf, "psnr_block": np.inf, "ssim": 1.0, "f1": 1.0, "precision": 1.0, "recall": 1.0, "iou": 1.0, "iou_fg": 1.0,
               "spa": 1.0, "pixel_accuracy": 1.0}
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
