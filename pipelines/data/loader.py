"""Batches from shards: ``make_loader(dest, split, task, ...)`` yields ``{"x", "y", "mask", "key"}``.

Shards are read from disk or S3 (a boto3 stream per shard, no shell pipes). Sample assignment, so that DDP
ranks never share a sample in an epoch and never hang on unequal lengths:
  - training: a permutation of all sample indices seeded by (seed, epoch); rank r takes every world_size-th
    index, truncated to floor(n / world_size) so every rank runs the same number of samples;
  - evaluation: indices in order, rank r takes every world_size-th (nothing dropped, deterministic order);
  - within a rank, loader worker w takes every num_workers-th of the rank's indices.
Each worker streams only the shards that hold its samples. Training order: shard order shuffled, then samples
shuffled within a shard (a shard-sized shuffle buffer). Per-sample randomness (augmentation, crops, noise) is
seeded by (key, seed, epoch), so it does not depend on which rank or worker reads the sample.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pipelines.data import shards, storage
from pipelines import tasks

DRIVE_ROTATION_DEG = 360.0  # Winkler et al. 2019, App. A: rotations over the full circle
DRIVE_SCALE = (0.8, 1.2)  # isotropic scaling range
DRIVE_SHEAR_STD_DEG = 10.0  # shear ~ N(0, 10 deg)


def assign_indices(n: int, rank: int, world_size: int, seed: int, epoch: int, train: bool) -> np.ndarray:
    """The global sample indices rank ``rank`` reads this epoch (equal counts across ranks when training)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
    if train:
        order = np.random.default_rng([seed, epoch, 0x5EED]).permutation(n)
        per_rank = n // world_size
        if per_rank == 0:
            raise ValueError(f"{n} samples cannot feed {world_size} ranks one sample each")
        return order[rank::world_size][:per_rank]
    return np.arange(n)[rank::world_size]


def _resize_nearest(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    h, w = array.shape[:2]
    rows = np.minimum((np.arange(shape[0]) + 0.5) * h / shape[0], h - 1).astype(int)
    cols = np.minimum((np.arange(shape[1]) + 0.5) * w / shape[1], w - 1).astype(int)
    return array[rows][:, cols]


def _center_square(array: np.ndarray) -> np.ndarray:
    h, w = array.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return array[top: top + side, left: left + side]


def _hwc(array: np.ndarray) -> np.ndarray:
    return array[..., None] if array.ndim == 2 else array


def drive_augment(arrays: dict[str, np.ndarray], rng: np.random.Generator, discrete: set[str], *,
                  out_shape: tuple[int, int] | None = None, center: tuple[float, float] | None = None) -> dict:
    """One random affine warp applied jointly to every array: rotation, isotropic scale, shear.

    A = R(theta) S(s) H(phi), theta ~ U(0, 360 deg), s ~ U(0.8, 1.2), phi ~ N(0, 10 deg); Winkler et al. 2019,
    App. A (DRIVE). The output pixel o maps to the input point c_in + A^-1 (o - c_out): ``center`` (c_in,
    default the image centre) lands on the centre c_out of an ``out_shape`` output (default the input's shape).
    Warping straight into a training patch costs the patch's pixels, not the image's. Label maps and masks use
    nearest neighbour so they stay in {0, 1}; pixels warped in from outside are 0 (mask 0, so never scored).
    """
    from PIL import Image

    theta = np.deg2rad(rng.uniform(0, DRIVE_ROTATION_DEG))
    scale = rng.uniform(*DRIVE_SCALE)
    shear = np.deg2rad(rng.normal(0, DRIVE_SHEAR_STD_DEG))
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    forward = rotation @ np.array([[scale, 0], [0, scale]]) @ np.array([[1, np.tan(shear)], [0, 1]])
    inverse = np.linalg.inv(forward)  # output (row, col) -> input (row, col)
    h, w = next(iter(arrays.values())).shape[:2]
    out_shape = tuple(out_shape or (h, w))
    c_in = np.array(center if center is not None else ((h - 1) / 2, (w - 1) / 2), dtype=float)
    c_out = np.array([(out_shape[0] - 1) / 2, (out_shape[1] - 1) / 2])
    offset = c_in - inverse @ c_out
    # PIL's affine map works on (x, y) = (col, row) with pixel centres at +0.5; the same map in its terms.
    m = inverse[::-1, ::-1]
    c = offset[::-1] + 0.5 - m @ np.array([0.5, 0.5])
    coefficients = (m[0, 0], m[0, 1], c[0], m[1, 0], m[1, 1], c[1])
    size = (out_shape[1], out_shape[0])
    out = {}
    for name, array in arrays.items():
        if array.shape[:2] != (h, w):
            raise ValueError(f"drive_augment: {name!r} is {array.shape[:2]}, the other arrays {(h, w)}")
        resample = Image.Resampling.NEAREST if name in discrete else Image.Resampling.BILINEAR
        # float32 ("F" mode) per channel: bilinear in float, no 8-bit rounding; about 2x scipy.ndimage's speed.
        channels = [np.asarray(Image.fromarray(np.ascontiguousarray(array[..., k], np.float32)).transform(
            size, Image.Transform.AFFINE, coefficients, resample=resample, fillcolor=0.0))
            for k in range(array.shape[2])]
        out[name] = np.stack(channels, axis=-1)
    return out


def process_sample(raw: dict[str, bytes], task: tasks.Task, *, train: bool, seed: int = 0, epoch: int = 0,
                   patch: int | None = None, size: int | None = None, pad_multiple: int | None = None,
                   augment: bool | None = None) -> dict[str, Any]:
    """Decode one shard sample and make ``x`` (HWC->CHW, [0, 1]), ``y`` (data space), ``mask`` for ``task``."""
    key = raw["__key__"]
    decoded = {k: shards.decode_member(k, v) for k, v in raw.items() if k != "__key__"}
    rng = tasks.key_rng(key, seed, epoch if train else 0)
    scale = task.scale or 1

    if "target.npy" in decoded:
        y = _hwc(decoded["target.npy"].astype(np.float32))
    elif "target.png" in decoded:
        y = _hwc(decoded["target.png"].astype(np.float32))
    else:
        raise shards.ShardError(f"{key}: no target.png or target.npy in the sample")
    if task.target == "continuous" and "target.png" in decoded:
        y = y / 255.0  # images as continuous targets live in [0, 1]
    x = _hwc(decoded["input.png"].astype(np.float32) / 255.0) if "input.png" in decoded else None
    mask = _hwc(decoded["mask.png"].astype(np.float32)) if "mask.png" in decoded else np.ones(
        y.shape[:2] + (1,), np.float32)
    extras = {}
    if "superpixels.png" in decoded:
        extras["superpixels"] = _hwc(decoded["superpixels.png"].astype(np.float32))
    discrete = task.target in ("binary", "categorical")

    size = size or task.size
    if size:
        if task.name == "sr":
            hr = tasks.imresize(np.clip(y, 0, 255).astype(np.uint8), output_shape=(size, size))
            y = _hwc(hr.astype(np.float32))
            x = _hwc(tasks.bicubic_lr(hr, scale).astype(np.float32) / 255.0)
            mask = _hwc(_resize_nearest(mask, (size, size)))
        else:
            if task.name == "inpaint":
                y, mask = _center_square(y), _center_square(mask)
                x = _center_square(x) if x is not None else None
            shape = (size, size)
            y = _hwc(_resize_nearest(y, shape) if discrete else tasks.imresize(y, output_shape=shape))
            y = y.astype(np.float32)
            if task.target == "image8":
                y = np.clip(np.round(y), 0, 255).astype(np.float32)
            if x is not None:
                x = np.clip(_hwc(tasks.imresize(x, output_shape=shape)), 0, 1).astype(np.float32)
            mask = _hwc(_resize_nearest(mask, shape))
            extras = {k: _hwc(_resize_nearest(v, shape)) for k, v in extras.items()}

    augmenting = train and (augment if augment is not None else task.name == "vessel")
    if augmenting:
        arrays = {"y": y, "mask": mask, **({"x": x} if x is not None else {}), **extras}
        warp = {}
        if patch and task.name != "sr":
            # Warp straight into the patch around a random centre: the cost is the patch's, not the image's.
            h, w = y.shape[:2]
            warp = {"out_shape": (patch, patch), "center": (int(rng.integers(0, h)), int(rng.integers(0, w)))}
        warped = drive_augment(arrays, rng, discrete={"mask", "superpixels"} | ({"y"} if discrete else set()),
                               **warp)
        y, mask, x = warped["y"], warped["mask"], warped.get("x")
        extras = {k: warped[k] for k in extras}

    if train and patch and not (augmenting and task.name != "sr"):
        y, x, mask, extras = _random_patch(y, x, mask, extras, patch, scale if task.name == "sr" else 1, rng, key)

    if task.name in ("denoise", "depth", "inpaint"):
        x = tasks.make_input(task, y, mask[..., 0], x, key=key, seed=seed, epoch=epoch if train else 0)
        if task.name == "inpaint":
            mask = tasks.central_block_mask(y.shape[0], y.shape[1], task.block_fraction)[..., None]
    elif x is None:
        raise shards.ShardError(f"{key}: task {task.name!r} needs input.png in the sample")

    # Zero padding for the squeeze layers (Winkler et al. 2019, App. A: DRIVE), done in the HWC -> CHW copy.
    lr_multiple = pad_multiple if pad_multiple and pad_multiple > 1 else 1
    hr_multiple = lr_multiple * scale if task.name == "sr" else lr_multiple
    out = {"x": tasks.pad_to_multiple(x, lr_multiple), "y": tasks.pad_to_multiple(y, hr_multiple),
           "mask": tasks.pad_to_multiple(mask, hr_multiple), "key": key}
    out.update({k: tasks.pad_to_multiple(v, hr_multiple) for k, v in extras.items()})
    return out


def _random_patch(y, x, mask, extras, patch, scale, rng, key):
    """An aligned random crop: a ``patch`` x ``patch`` window of y and the matching window of x (LR for SR)."""
    if patch % scale:
        raise ValueError(f"patch {patch} must be a multiple of the SR scale {scale}")
    h, w = y.shape[:2]
    if h < patch or w < patch:  # small images are zero-padded (mask 0) rather than rejected
        pad = [(0, max(patch - h, 0)), (0, max(patch - w, 0)), (0, 0)]
        y, mask = np.pad(y, pad), np.pad(mask, pad)
        extras = {k: np.pad(v, pad) for k, v in extras.items()}
        if x is not None:
            lr_pad = [(0, max(patch - h, 0) // scale), (0, max(patch - w, 0) // scale), (0, 0)]
            x = np.pad(x, lr_pad)
        h, w = y.shape[:2]
    top = int(rng.integers(0, (h - patch) // scale + 1)) * scale
    left = int(rng.integers(0, (w - patch) // scale + 1)) * scale
    window = (slice(top, top + patch), slice(left, left + patch))
    y, mask = y[window], mask[window]
    extras = {k: v[window] for k, v in extras.items()}
    if x is not None:
        lr = patch // scale
        x = x[top // scale: top // scale + lr, left // scale: left // scale + lr]
    return y, x, mask, extras


class ShardSamples(IterableDataset):
    """The samples of one split that this rank (and, inside it, this loader worker) reads, processed."""

    def __init__(self, dest: str, split: str, task: tasks.Task, *, train: bool, rank: int, world_size: int,
                 seed: int, epoch: int, endless: bool = False, **process_kw):
        self.dest, self.split, self.task, self.train = str(dest), split, task, train
        self.seed, self.epoch, self.rank, self.world_size = seed, epoch, rank, world_size
        self.endless, self.process_kw = endless, process_kw
        self.manifest = shards.read_manifest(self.dest)
        self.shards = shards.shard_uris(self.dest, split, self.manifest)
        self.offsets = np.cumsum([0] + [count for _, count in self.shards])
        self.indices = assign_indices(int(self.offsets[-1]), rank, world_size, seed, epoch, train)

    def __len__(self) -> int:
        """Samples per epoch for this rank."""
        return len(self.indices)

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        epoch = self.epoch
        while True:
            indices = self.indices if epoch == self.epoch else assign_indices(
                int(self.offsets[-1]), self.rank, self.world_size, self.seed, epoch, self.train)
            mine = np.sort(indices[worker::workers]) if not self.train else indices[worker::workers]
            if not len(mine):
                return
            for sample in self._epoch(mine, epoch, worker):
                if self.endless:
                    sample["epoch"] = epoch
                yield sample
            if not self.endless:
                return
            epoch += 1

    def _epoch(self, mine: np.ndarray, epoch: int, worker: int) -> Iterator[dict]:
        """This worker's samples ``mine`` (global indices) of ``epoch``, processed."""
        by_shard: dict[int, set[int]] = {}
        for index in mine:
            shard = int(np.searchsorted(self.offsets, index, side="right") - 1)
            by_shard.setdefault(shard, set()).add(int(index - self.offsets[shard]))
        order = sorted(by_shard)
        rng = np.random.default_rng([self.seed, epoch, self.rank, worker])
        if self.train:
            rng.shuffle(order)
        for shard in order:
            uri, _ = self.shards[shard]
            wanted = by_shard[shard]
            picked = []
            with storage.open_read(uri) as stream:
                for position, raw in enumerate(shards.iter_tar(stream, uri)):
                    if position in wanted:
                        picked.append(raw)
            if len(picked) != len(wanted):
                raise shards.ShardError(f"{uri}: expected {len(wanted)} of its samples, read {len(picked)}")
            if self.train:
                rng.shuffle(picked)
            for raw in picked:
                yield process_sample(raw, self.task, train=self.train, seed=self.seed, epoch=epoch,
                                     **self.process_kw)


def collate(samples: list[dict]) -> dict:
    """Stack samples into tensors; differently sized samples name their keys (use size, patch or batch 1)."""
    out: dict[str, Any] = {"key": [s["key"] for s in samples]}
    if "epoch" in samples[0]:
        out["epoch"] = [s["epoch"] for s in samples]
    for name in samples[0]:
        if name in ("key", "epoch"):
            continue
        shapes = {s[name].shape for s in samples}
        if len(shapes) > 1:
            raise ValueError(f"cannot batch {name!r} of different shapes {sorted(shapes)} (keys {out['key']}); "
                             "set size or patch, or use batch_size 1")
        out[name] = torch.from_numpy(np.stack([s[name] for s in samples]))
    return out


def make_loader(dest: str, split: str, task: str, batch_size: int, train: bool, rank: int = 0,
                world_size: int = 1, num_workers: int = 0, seed: int = 0, epoch: int = 0,
                patch: int | None = None, size: int | None = None, pad_multiple: int | None = None,
                augment: bool | None = None, drop_last: bool | None = None, endless: bool = False,
                **options) -> DataLoader:
    """A DataLoader over ``dest``'s ``split`` for ``task``, yielding {"x", "y", "mask", "key"} batches.

    ``options`` override the task's fields (``noise_sigma``, ``block_fraction``, ``scale``). Training drops
    the last partial batch by default (equal step counts per rank); evaluation keeps everything in order.
    Batches of parts also carry ``superpixels`` (B, 1, H, W) when the shards have them.

    ``endless``: one loader for epoch ``epoch``, ``epoch + 1``, ... without end, each epoch drawn as a fresh
    loader would draw it; batches carry ``"epoch"`` (per sample) and may span an epoch boundary. Its loader
    workers start once instead of once per epoch, which matters for small splits (DRIVE: 10 steps an epoch).
    """
    spec = tasks.get_task(task)
    fields = {f.name for f in dataclasses.fields(spec)} - {"name", "target"}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise TypeError(f"make_loader: unknown task option(s) {unknown} for task {task!r}; known: {sorted(fields)}")
    spec = dataclasses.replace(spec, **options)
    dataset = ShardSamples(dest, split, spec, train=train, rank=rank, world_size=world_size, seed=seed,
                           epoch=epoch, endless=endless, patch=patch, size=size, pad_multiple=pad_multiple,
                           augment=augment)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate,
                        drop_last=train if drop_last is None else drop_last,
                        persistent_workers=False, multiprocessing_context="fork" if num_workers else None)
    loader.num_samples = len(dataset)  # type: ignore[attr-defined]
    loader.steps_per_epoch = (len(dataset) // batch_size if loader.drop_last  # type: ignore[attr-defined]
                              else math.ceil(len(dataset) / batch_size))
    return loader


def loader_options(data, *, train: bool) -> dict:
    """The ``make_loader`` keywords that an experiment's data section sets: the one place they are derived.

    ``data`` is a ``pipelines.params.DataParams`` (or its ``to_dict()`` form). Training reads random
    ``patch`` crops and loader processes; evaluation reads whole images in order, in this process. Both
    apply the same resize (``size``), padding (``pad_multiple``) and task options (noise sigma, block size...).
    """
    d = dataclasses.asdict(data) if dataclasses.is_dataclass(data) else dict(data)
    out = {"pad_multiple": d.get("pad_multiple") or 1, **(d.get("options") or {})}
    if d.get("size"):
        out["size"] = d["size"]
    if train:
        out.update(patch=d.get("patch"), num_workers=d.get("num_workers") or 0)
    return out

