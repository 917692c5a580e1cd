"""Batches from shards: ``make_loader(dest, split, task, ...)`` yields ``{"x", "y", "mask", "key"}``.

Shards are read from disk or S3 (a boto3 stream per shard, no shell pipes). Sample assignment, so that DDP
ranks never share a sample in an epoch and never hang on unequal lengths:
  - training: a permutation of all sample indices seeded by (seed, epoch); rank r takes every world_size-th
    index, truncated to floor(n / world_size) so every rank runs the same number of samples;
  - evaluation: indices in order, rank r takes every world_size-th (nothing dropped, deterministic order);
  - within a rank, loader worker w takes every num_workers-th of the rank's indices.
With ``holdout`` N > 0 the last N samples of the split (in shard order) are set aside: a training loader never
reads them, and ``held_out=True`` reads exactly them (``train.select``'s model selection). Each worker streams
only the shards that hold its samples. Training order: shard order shuffled, then samples
shuffled within a shard (a shard-sized shuffle buffer). Per-sample randomness (augmentation, crops, noise) is
seeded by (key, seed, epoch), so it does not depend on which rank or worker reads the sample.

A training loader keeps the decoded samples it has read, up to ``cache_mb`` MiB of arrays per loader worker
(``DecodedCache``): later epochs of a small split (DRIVE: 20 images, an epoch every 5 steps) skip the shard read
and the PNG decoding, which is about half of a DRIVE sample's preparation. The batches are the same either way.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pipelines.data import shards, storage
from pipelines.data.augment import key_rng
from pipelines.tasks import Task, get_task


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


def decode_sample(raw: dict[str, bytes]) -> dict[str, Any]:
    """A shard sample's members decoded (:func:`pipelines.data.shards.decode_member`), ``__key__`` kept."""
    return {k: (v if k == "__key__" else shards.decode_member(k, v)) for k, v in raw.items()}


def process_sample(raw: dict[str, bytes], task: Task, *, train: bool, seed: int = 0, epoch: int = 0,
                   patch: int | None = None, size: int | None = None, pad_multiple: int | None = None,
                   augment: bool | None = None, decoded: dict[str, Any] | None = None) -> dict[str, Any]:
    """Decode one shard sample and let ``task`` prepare it: ``{"x", "y", "mask", "key", extras...}`` (CHW).

    ``decoded``: the sample already decoded (:func:`decode_sample`; then ``raw`` is not read). Per-sample
    randomness is ``key_rng(key, seed, epoch)``, with epoch 0 outside training (evaluation draws the same noise
    every time).
    """
    decoded = dict(decoded if decoded is not None else decode_sample(raw))
    key = decoded.pop("__key__")
    epoch = epoch if train else 0
    sample = task.prepare(decoded, key=key, train=train, rng=key_rng(key, seed, epoch), seed=seed, epoch=epoch,
                          patch=patch, size=size, pad_multiple=pad_multiple, augment=augment)
    return {"x": sample.x, "y": sample.y, "mask": sample.mask, "key": key, **sample.extras}


class DecodedCache:
    """Decoded samples by (shard, position), up to ``limit_mb`` MiB of array bytes (then nothing more is added).

    Arrays are stored read-only: a task that wrote into a decoded array would change later epochs' samples, so
    it fails loudly instead. Each loader worker (a forked process) holds its own cache of its own samples.
    """

    def __init__(self, limit_mb: float):
        self.limit = int(limit_mb * 2**20)
        self.bytes = 0
        self.samples: dict[tuple[int, int], dict[str, Any]] = {}

    def get(self, shard: int, position: int) -> dict[str, Any] | None:
        return self.samples.get((shard, position))

    def has_all(self, shard: int, positions) -> bool:
        return all((shard, p) in self.samples for p in positions)

    def add(self, shard: int, position: int, decoded: dict[str, Any]) -> None:
        size = sum(v.nbytes for v in decoded.values() if isinstance(v, np.ndarray))
        if self.bytes + size > self.limit:
            return
        for v in decoded.values():
            if isinstance(v, np.ndarray):
                v.flags.writeable = False
        self.samples[(shard, position)] = decoded
        self.bytes += size


class ShardSamples(IterableDataset):
    """The samples of one split that this rank (and, inside it, this loader worker) reads, processed."""

    def __init__(self, dest: str, split: str, task: Task, *, train: bool, rank: int, world_size: int,
                 seed: int, epoch: int, endless: bool = False, manifest: dict | None = None, holdout: int = 0,
                 held_out: bool = False, cache_mb: float = 0, **process_kw):
        self.dest, self.split, self.task, self.train = str(dest), split, task, train
        if cache_mb < 0:
            raise ValueError(f"{self.dest}: cache_mb {cache_mb} must be >= 0 (0: no cache)")
        self.cache = DecodedCache(cache_mb) if train and cache_mb else None
        self.seed, self.epoch, self.rank, self.world_size = seed, epoch, rank, world_size
        self.endless, self.process_kw = endless, process_kw
        self.manifest = manifest or shards.read_manifest(self.dest)
        self.shards = shards.shard_uris(self.dest, split, self.manifest)
        self.offsets = np.cumsum([0] + [count for _, count in self.shards])
        total = int(self.offsets[-1])
        holdout = int(holdout or 0)
        if holdout < 0 or (holdout and holdout >= total):
            raise ValueError(f"{self.dest}: holdout {holdout} must leave samples of split {split!r} "
                             f"({total}) on both sides")
        if held_out and not holdout:
            raise ValueError(f"{self.dest}: held_out=True needs holdout > 0")
        # The indices this loader draws from: [first, first + count) of the split.
        self.first, self.count = (total - holdout, holdout) if held_out else (0, total - holdout)
        self.indices = self._assign(epoch)

    def _assign(self, epoch: int) -> np.ndarray:
        return self.first + assign_indices(self.count, self.rank, self.world_size, self.seed, epoch, self.train)

    def __len__(self) -> int:
        """Samples per epoch for this rank."""
        return len(self.indices)

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        epoch = self.epoch
        while True:
            indices = self.indices if epoch == self.epoch else self._assign(epoch)
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
            # (position, raw or None, decoded or None) in shard order, then shuffled: the same order either way.
            picked: list[tuple[int, Any, Any]] = []
            if self.cache is not None and self.cache.has_all(shard, wanted):
                picked = [(p, None, self.cache.get(shard, p)) for p in sorted(wanted)]
            else:
                with storage.open_read(uri) as stream:
                    for position, raw in enumerate(shards.iter_tar(stream, uri)):
                        if position in wanted:
                            cached = self.cache.get(shard, position) if self.cache is not None else None
                            picked.append((position, raw, cached))
            if len(picked) != len(wanted):
                raise shards.ShardError(f"{uri}: expected {len(wanted)} of its samples, read {len(picked)}")
            if self.train:
                rng.shuffle(picked)
            for position, raw, decoded in picked:
                try:
                    if decoded is None and self.cache is not None:
                        decoded = decode_sample(raw)
                        self.cache.add(shard, position, decoded)
                    sample = process_sample(raw, self.task, train=self.train, seed=self.seed, epoch=epoch,
                                            decoded=decoded, **self.process_kw)
                except (shards.ShardError, OSError) as exc:  # a member that does not decode: say where
                    key = (decoded or raw or {}).get("__key__")
                    raise shards.ShardError(f"{uri}: sample {key!r}: {exc}") from exc
                yield sample


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
                manifest: dict | None = None, holdout: int = 0, held_out: bool = False, cache_mb: float = 0,
                **options) -> DataLoader:
    """A DataLoader over ``dest``'s ``split`` for ``task``, yielding {"x", "y", "mask", "key"} batches.

    ``options`` override the task's fields (``Task.with_options``: ``noise_sigma`` of denoise,
    ``block_fraction`` of inpaint, ``scale`` of sr, ...). Training drops the last partial batch by default
    (equal step counts per rank); evaluation keeps everything in order. Batches also carry the task's extras
    (parts: ``superpixels`` (B, 1, H, W) when the shards have them).

    ``endless``: one loader for epoch ``epoch``, ``epoch + 1``, ... without end, each epoch drawn as a fresh
    loader would draw it; batches carry ``"epoch"`` (per sample) and may span an epoch boundary. Its loader
    workers start once instead of once per epoch, which matters for small splits (DRIVE: 10 steps an epoch).

    ``manifest``: ``dest``'s manifest when the caller has read it already (else it is read here).
    ``holdout``/``held_out``: the last ``holdout`` samples are left out, or (``held_out``) the only ones read.
    ``cache_mb``: a training loader keeps up to this many MiB of decoded samples per loader worker
    (``DecodedCache``) and serves later epochs from them; the batches do not change.
    """
    spec = get_task(task).with_options(**options)
    dataset = ShardSamples(dest, split, spec, train=train, rank=rank, world_size=world_size, seed=seed,
                           epoch=epoch, endless=endless, manifest=manifest, holdout=holdout, held_out=held_out,
                           cache_mb=cache_mb, patch=patch, size=size, pad_multiple=pad_multiple, augment=augment)
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
    ``patch`` crops, with loader processes and the decoded-sample cache; evaluation reads whole images in
    order, in this process. Both apply the same resize (``size``), padding (``pad_multiple``; a training patch
    only to ``min(pad_multiple, patch)``) and task options (noise sigma, block size...).
    """
    d = dataclasses.asdict(data) if dataclasses.is_dataclass(data) else dict(data)
    out = {"pad_multiple": d.get("pad_multiple") or 1, **(d.get("options") or {})}
    if d.get("size"):
        out["size"] = d["size"]
    if train:
        out.update(patch=d.get("patch"), num_workers=d.get("num_workers") or 0, cache_mb=d.get("cache_mb") or 0)
        if d.get("patch"):
            # A training patch is padded to min(pad_multiple, patch), never past its own size: pad_multiple is
            # for whole images (Winkler's 1024 for DRIVE), and a 128 patch padded to 1024x1024 is ~60x the work
            # on zeros. A patch that is not a multiple of the flow's 2**L is refused by the model, naming sizes.
            out["pad_multiple"] = min(out["pad_multiple"], d["patch"])
    return out

