"""Write, read and validate a dataset as WebDataset tar shards on disk or on S3.

Layout (docs/architecture.md, docs/datasets.md): ``DEST/<split>-NNNNNN.tar`` plus ``DEST/manifest.json``,
written LAST::

    {"format": "cnf-shards/1", "dataset": ..., "source": ..., "source_sha256": ..., "shard_size": N,
     "splits": {split: {"count": n, "shards": [{"name", "sha256", "count"}]}}, "meta": {...}}

Write protocol, so that a failed or interrupted write leaves neither a manifest nor shards at DEST:
  1. an existing manifest is removed first (readers treat "no manifest" as "no dataset"), then its shards;
  2. local DEST: shards are written under hidden temporary names and renamed to their final names only once
     every split is complete and its counts check out; S3 DEST: tars are built in a local temporary folder
     and uploaded under their final names as they complete (no rename on S3);
  3. the manifest is written last (atomic rename locally, one PUT on S3);
  4. on any error, everything written so far is deleted.
Tars are byte-deterministic (fixed mtime/owner, members in a fixed order) so the same samples give the same
sha256 on every run.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Mapping

import numpy as np

from pipelines.data import storage
from pipelines.io import Progress

MANIFEST = "manifest.json"
FORMAT = "cnf-shards/1"
DEFAULT_SHARD_SIZE = 1000
SHARD_RE = re.compile(r"^(?P<split>[A-Za-z0-9_]+)-(?P<index>\d{6})\.tar$")
TEMP_RE = re.compile(r"^\.[A-Za-z0-9_]+-\d{6}\.tar\.tmp-\d+$")
KEY_RE = re.compile(r"^[A-Za-z0-9_\-]+$")
#: Members written for each sample, in this order (extra members follow, sorted).
MEMBER_ORDER = ("input.png", "target.png", "target.npy", "mask.png", "target2.png", "meta.json")


class ShardError(RuntimeError):
    """Shards or their manifest are missing, corrupt or inconsistent; the message names the file."""


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


def encode_png(array: np.ndarray) -> bytes:
    """Lossless PNG of a uint8 (H,W) / (H,W,3) array or a uint16 (H,W) array; deterministic bytes."""
    from PIL import Image

    array = np.ascontiguousarray(array)
    if array.dtype == np.uint16:
        if array.ndim != 2:
            raise ValueError(f"16-bit PNGs must be single-channel, got shape {array.shape}")
        image = Image.fromarray(array)
    elif array.dtype == np.uint8:
        image = Image.fromarray(array)
    else:
        raise ValueError(f"PNG members must be uint8 or uint16, got {array.dtype}")
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def encode_npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def encode_member(name: str, value: Any) -> bytes:
    """Bytes for one member: arrays by extension (.png/.npy), dicts as sorted JSON, bytes as they are."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if name.endswith(".png"):
        return encode_png(np.asarray(value))
    if name.endswith(".npy"):
        return encode_npy(np.asarray(value))
    if name.endswith(".json"):
        return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
    raise ValueError(f"don't know how to encode member {name!r} of type {type(value).__name__}")


def decode_member(name: str, data: bytes) -> Any:
    """Inverse of :func:`encode_member`: PNG -> uint8/uint16 array, .npy -> array, .json -> object."""
    if name.endswith(".png"):
        from PIL import Image

        with Image.open(io.BytesIO(data)) as image:
            array = np.asarray(image)
        if array.dtype == np.int32:  # PIL opens 16-bit grayscale PNGs as I mode
            array = array.astype(np.uint16)
        return array
    if name.endswith(".npy"):
        return np.load(io.BytesIO(data), allow_pickle=False)
    if name.endswith(".json"):
        return json.loads(data)
    return data


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _ordered_members(sample: Mapping[str, Any]) -> list[str]:
    names = [n for n in sample if n != "__key__"]
    return [n for n in MEMBER_ORDER if n in sample] + sorted(n for n in names if n not in MEMBER_ORDER)


class _Sink:
    """Where finished shards go: local temp names renamed at commit, or S3 final names uploaded at once."""

    def __init__(self, dest: str):
        self.dest = dest
        self.s3 = storage.is_s3(dest)
        self.tmpdir = tempfile.mkdtemp(prefix="cnf-shards-")
        self.pending: list[tuple[str, str]] = []  # (local path, final name) awaiting commit (local dest)
        self.written: list[str] = []  # final URIs that exist and must be removed on failure
        self.temps: list[str] = []  # every temporary path handed out, finished or not

    def new_path(self, name: str) -> str:
        if self.s3:
            path = os.path.join(self.tmpdir, name)
        else:
            folder = storage.local_path(self.dest)
            folder.mkdir(parents=True, exist_ok=True)
            path = str(folder / f".{name}.tmp-{os.getpid()}")
        self.temps.append(path)
        return path

    def finish(self, path: str, name: str) -> None:
        if self.s3:
            uri = storage.join(self.dest, name)
            self.written.append(uri)
            storage.put_file(path, uri)
            os.unlink(path)
        else:
            self.pending.append((path, name))

    def commit(self) -> None:
        for path, name in self.pending:
            final = storage.join(self.dest, name)
            os.replace(path, final)
            self.written.append(final)
        self.pending.clear()

    def abort(self) -> None:
        for path in self.temps:  # includes the shard that was being written when the error struck
            Path(path).unlink(missing_ok=True)
        for uri in self.written:
            try:
                storage.delete(uri)
            except storage.StorageError as exc:  # keep cleaning the rest; report what is left
                print(f"warning: could not remove {uri}: {exc}", file=sys.stderr)
        self.pending.clear()
        self.written.clear()

    def close(self) -> None:
        for p in Path(self.tmpdir).glob("*"):
            p.unlink(missing_ok=True)
        os.rmdir(self.tmpdir)


def read_manifest(dest: str) -> dict | None:
    """The manifest at ``dest``, or None when there is none (an absent or unfinished dataset)."""
    uri = storage.join(dest, MANIFEST)
    if not storage.exists(uri):
        return None
    try:
        manifest = json.loads(storage.get_bytes(uri))
    except json.JSONDecodeError as exc:
        raise ShardError(f"{uri}: not valid JSON ({exc})") from exc
    for field in ("dataset", "splits"):
        if field not in manifest:
            raise ShardError(f"{uri}: missing field {field!r}")
    return manifest


def is_up_to_date(dest: str, dataset: str, source_sha256: str, shard_size: int) -> dict | None:
    """The existing manifest when ``dest`` already holds exactly this dataset from this source, else None."""
    manifest = read_manifest(dest)
    if manifest is None:
        return None
    if (manifest.get("dataset"), manifest.get("source_sha256"), manifest.get("shard_size")) != (
        dataset, source_sha256, shard_size,
    ):
        return None
    present = set(storage.listdir(dest))
    names = [s["name"] for split in manifest["splits"].values() for s in split["shards"]]
    return manifest if all(n in present for n in names) else None


def remove_dataset(dest: str) -> None:
    """Delete the manifest (first) and every shard-named file at ``dest``."""
    manifest_uri = storage.join(dest, MANIFEST)
    storage.delete(manifest_uri)
    for name in storage.listdir(dest):
        # Also the hidden temporaries a killed (SIGKILL) writer could not clean up.
        if SHARD_RE.match(name) or TEMP_RE.match(name):
            storage.delete(storage.join(dest, name))


def write_dataset(
    dest: str,
    dataset: str,
    splits: Mapping[str, Iterable[Mapping[str, Any]]],
    *,
    source: str,
    source_sha256: str,
    shard_size: int = DEFAULT_SHARD_SIZE,
    expected_counts: Mapping[str, int] | None = None,
    totals: Mapping[str, int] | None = None,
    meta: Mapping[str, Any] | None = None,
) -> dict:
    """Write every split's samples as shards at ``dest``, then the manifest; all or nothing.

    ``splits`` maps split name -> iterable of samples ``{"__key__": str, "<member>": bytes | array | dict}``.
    ``expected_counts`` (split -> n) is checked before anything is committed. Returns the manifest.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    remove_dataset(dest)
    sink = _Sink(dest)
    manifest: dict[str, Any] = {
        "format": FORMAT, "dataset": dataset, "source": source, "source_sha256": source_sha256,
        "shard_size": shard_size, "splits": {}, "meta": dict(meta or {}),
    }
    try:
        for split, samples in splits.items():
            if not re.match(r"^[A-Za-z0-9_]+$", split):
                raise ShardError(f"split name {split!r} must be letters, digits or underscores")
            manifest["splits"][split] = _write_split(
                sink, dataset, split, samples, shard_size, (totals or {}).get(split)
            )
        for split, expected in (expected_counts or {}).items():
            got = manifest["splits"].get(split, {}).get("count", 0)
            if got != expected:
                raise ShardError(f"{dataset}: split {split!r} has {got} samples, expected {expected}")
        sink.commit()
        storage.put_bytes(json.dumps(manifest, indent=1, sort_keys=True).encode(), storage.join(dest, MANIFEST))
    except BaseException:
        sink.abort()
        storage.delete(storage.join(dest, MANIFEST))
        raise
    finally:
        sink.close()
    return manifest


def _write_split(sink: _Sink, dataset: str, split: str, samples: Iterable[Mapping[str, Any]],
                 shard_size: int, total: int | None) -> dict:

    shards: list[dict] = []
    seen: set[str] = set()
    progress = Progress(f"{dataset}/{split}", total, unit="samples", every=5.0)
    tar = path = name = handle = None
    count_in_shard = 0

    def close_current() -> None:
        nonlocal tar, path, count_in_shard
        if tar is None:
            return
        tar.close()
        handle.close()
        shards.append({"name": name, "sha256": storage.sha256_file(path), "count": count_in_shard})
        sink.finish(path, name)
        tar, path, count_in_shard = None, None, 0

    for sample in samples:
        key = sample.get("__key__")
        if not isinstance(key, str) or not KEY_RE.match(key):
            raise ShardError(f"{dataset}/{split}: sample key {key!r} must match {KEY_RE.pattern} (no dots)")
        if key in seen:
            raise ShardError(f"{dataset}/{split}: duplicate sample key {key!r}")
        seen.add(key)
        if tar is None:
            name = shard_name(split, len(shards))
            path = sink.new_path(name)
            handle = open(path, "wb")
            tar = tarfile.open(fileobj=handle, mode="w", format=tarfile.PAX_FORMAT)
        for member in _ordered_members(sample):
            data = encode_member(member, sample[member])
            tar.addfile(_tarinfo(f"{key}.{member}", len(data)), io.BytesIO(data))
        count_in_shard += 1
        progress.step()
        if count_in_shard >= shard_size:
            close_current()
    close_current()
    progress.done()
    return {"count": sum(s["count"] for s in shards), "shards": shards}


def iter_tar(stream: BinaryIO, where: str = "<stream>") -> Iterator[dict[str, bytes]]:
    """Samples of one tar stream as ``{"__key__": key, member: bytes}``; members of a key are consecutive."""
    current: dict[str, Any] | None = None
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                base = info.name.rsplit("/", 1)[-1]
                key, _, member = base.partition(".")
                data = tar.extractfile(info).read()
                if current is None or current["__key__"] != key:
                    if current is not None:
                        yield current
                    current = {"__key__": key}
                current[member] = data
    except tarfile.TarError as exc:
        raise ShardError(f"{where}: unreadable tar ({exc})") from exc
    if current is not None:
        yield current


def shard_uris(dest: str, split: str, manifest: dict | None = None) -> list[tuple[str, int]]:
    """``[(uri, count)]`` of a split's shards, from the manifest."""
    manifest = manifest or read_manifest(dest)
    if manifest is None:
        raise ShardError(f"{storage.join(dest, MANIFEST)}: no manifest (dataset not fetched, or fetch failed)")
    if split not in manifest["splits"]:
        raise ShardError(f"{storage.join(dest, MANIFEST)}: no split {split!r}; has {sorted(manifest['splits'])}")
    return [(storage.join(dest, s["name"]), s["count"]) for s in manifest["splits"][split]["shards"]]


def iter_samples(dest: str, split: str, decode: bool = True) -> Iterator[dict[str, Any]]:
    """Every sample of a split in shard order; members decoded with :func:`decode_member` when ``decode``."""
    for uri, _ in shard_uris(dest, split):
        with storage.open_read(uri) as stream:
            for sample in iter_tar(stream, uri):
                yield {k: (decode_member(k, v) if decode and k != "__key__" else v) for k, v in sample.items()}


def validate(dest: str, decode: bool = False) -> dict:
    """Check every shard against the manifest (sha256, sample count, unique keys); returns the manifest.

    With ``decode`` every member is also decoded, which catches corrupt PNG/NPY/JSON payloads.
    """

    manifest = read_manifest(dest)
    if manifest is None:
        raise ShardError(f"{storage.join(dest, MANIFEST)}: no manifest")
    for split, info in manifest["splits"].items():
        keys: set[str] = set()
        for shard in info["shards"]:
            uri = storage.join(dest, shard["name"])
            if not storage.exists(uri):
                raise ShardError(f"{uri}: listed in the manifest but missing")
            data = storage.get_bytes(uri)
            digest = hashlib.sha256(data).hexdigest()
            if digest != shard["sha256"]:
                raise ShardError(f"{uri}: sha256 {digest} does not match the manifest's {shard['sha256']}")
            n = 0
            for sample in iter_tar(io.BytesIO(data), uri):
                if sample["__key__"] in keys:
                    raise ShardError(f"{uri}: duplicate key {sample['__key__']!r} in split {split!r}")
                keys.add(sample["__key__"])
                if decode:
                    for member, payload in sample.items():
                        if member == "__key__":
                            continue
                        try:
                            decode_member(member, payload)
                        except Exception as exc:  # noqa: BLE001
                            raise ShardError(f"{uri}: {sample['__key__']}.{member} does not decode ({exc})") from exc
                n += 1
            if n != shard["count"]:
                raise ShardError(f"{uri}: {n} samples, manifest says {shard['count']}")
        if len(keys) != info["count"]:
            raise ShardError(f"{dest}: split {split!r} has {len(keys)} samples, manifest says {info['count']}")
    return manifest

