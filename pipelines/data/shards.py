"""Write, read and check a dataset as WebDataset tar shards on disk or on S3.

Layout (docs/datasets.md): ``DEST/manifest.json`` and the shards it lists, ``DEST/<split>-NNNNNN.tar`` on
disk, ``DEST/<shard_dir>/<split>-NNNNNN.tar`` on S3 (a fresh ``shard_dir`` per write)::

    {"format": "cnf-shards/2", "dataset": ..., "source": ..., "source_sha256": ..., "shard_size": N,
     "shard_dir": "gen-...",  # S3 only
     "splits": {split: {"count": n, "shards": [{"name", "sha256", "count", "size"}]}}, "meta": {...}}

``size`` is each shard's byte size, checked whenever a split is opened (:func:`shard_uris`); sha256 is checked
on open too when ``CNF_VERIFY_SHARDS=1`` (or ``verify=True``), and always by :func:`is_up_to_date` and
:func:`validate`. ``cnf-shards/1`` manifests (no sizes) are still read; their shards are checked by name on
open until the next ``cnf fetch``, which verifies their sha256 and records the sizes.

Write protocol (:func:`write_dataset`): the dataset already at DEST stays whole and readable until the new
one is complete, and a failure at any point leaves it as it was.
  1. The writer holds DEST's lock (:func:`pipelines.data.storage.lock`) throughout, and first removes what
     killed writers left (their side and staging folders; hidden temporaries and unlisted shards at DEST).
  2. Local DEST: shards and then the manifest are written, each fsync-ed, into a side folder beside DEST
     (``.<name>.new-<pid>@<host>-XXXXXXXX``), which then takes DEST's place in one atomic swap
     (``renameat2(RENAME_EXCHANGE)``); the old folder, now at the side name, is deleted. DEST must hold
     nothing but a dataset, since the whole folder is replaced.
  3. S3 DEST (no rename): shards are built in a local staging folder and uploaded under a new
     ``shard_dir``; the old manifest and shards are not touched. The new manifest is one PUT (a reader sees
     the old dataset or the new one); only then are the old shards deleted. A reader that opened the old
     manifest before that may find its shards gone, and reopens.
  4. On an error before the swap / the manifest PUT, what this write produced is deleted, nothing else.
Tars are byte-deterministic (fixed mtime/owner, members in a fixed order) so the same samples give the same
sha256 on every run.
"""
from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import re
import secrets
import sys
import tarfile
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Mapping

import numpy as np

from pipelines.data import storage
from pipelines.io import Progress, atomic_write

MANIFEST = "manifest.json"
FORMAT = "cnf-shards/2"
#: Manifest formats this module reads: /1 has no shard sizes and no shard_dir.
FORMATS = ("cnf-shards/1", "cnf-shards/2")
DEFAULT_SHARD_SIZE = 1000
#: ``CNF_VERIFY_SHARDS=1``: every split opened is also checked against the manifest's sha256s.
VERIFY_ENV = "CNF_VERIFY_SHARDS"
SHARD_RE = re.compile(r"^(?P<split>[A-Za-z0-9_]+)-(?P<index>\d{6})\.tar$")
#: Hidden temporaries of this module (``.<shard>.tmp-<pid>``, before cnf-shards/2) and of ``pipelines.io``.
LEFTOVER_RE = re.compile(r"^\.(?:manifest\.json|[A-Za-z0-9_]+-\d{6}\.tar)\.(?:tmp-\d+|[A-Za-z0-9_]+\.tmp)$")
GENERATION_RE = re.compile(r"^gen-\d{8}T\d{6}Z-[0-9a-f]{8}$")
#: Where tars bound for S3 are built (the system temporary folder), tagged for :func:`storage.scratch_dir`.
STAGING_PREFIX = "cnf-shards-"
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
    """Inverse of :func:`encode_member`: PNG -> uint8/uint16 array, .npy -> array, .json -> object.

    Undecodable bytes raise :class:`ShardError` naming the member; callers add the shard and the key.
    """
    try:
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
    except Exception as exc:  # noqa: BLE001 - PIL alone raises OSError, SyntaxError, ValueError...
        raise ShardError(f"member {name!r} does not decode ({type(exc).__name__}: {exc})") from exc
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


# ------------------------------------------------------------------------------------------------ manifest
def read_manifest(dest: str) -> dict | None:
    """The manifest at ``dest``, or None when there is none (an absent dataset)."""
    uri = storage.join(dest, MANIFEST)
    if not storage.exists(uri):
        return None
    try:
        manifest = json.loads(storage.get_bytes(uri))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ShardError(f"{uri}: not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict):
        raise ShardError(f"{uri}: expected a JSON object, got {type(manifest).__name__}")
    for field in ("dataset", "splits"):
        if field not in manifest:
            raise ShardError(f"{uri}: missing field {field!r}")
    fmt = manifest.get("format", FORMATS[0])
    if fmt not in FORMATS:
        raise ShardError(f"{uri}: format {fmt!r} is not one this code reads ({', '.join(FORMATS)}); "
                         "fetch it again with this version")
    return manifest


def _manifest_bytes(manifest: Mapping[str, Any]) -> bytes:
    return json.dumps(manifest, indent=1, sort_keys=True).encode()


def shard_base(dest: str, manifest: Mapping[str, Any]) -> str:
    """The folder or prefix holding the manifest's shards."""
    return storage.join(dest, manifest["shard_dir"]) if manifest.get("shard_dir") else str(dest)


def _listed(manifest: Mapping[str, Any], splits: Iterable[str] | None = None) -> Iterator[dict]:
    for split in (manifest["splits"] if splits is None else splits):
        yield from manifest["splits"][split]["shards"]


def check_shards(dest: str, manifest: Mapping[str, Any], splits: Iterable[str] | None = None, *,
                 hashes: bool = False) -> list[str]:
    """What differs between the shards at ``dest`` and what ``manifest`` promises (empty: nothing).

    Always: each listed shard exists and has the manifest's byte size (one listing call, no reads). With
    ``hashes`` also its sha256 (reads every byte). Each problem names the shard and both values.
    """
    base = shard_base(dest, manifest)
    present = storage.list_sizes(base)
    where = storage.join(dest, MANIFEST)
    problems = []
    for shard in _listed(manifest, splits):
        uri = storage.join(base, shard["name"])
        if shard["name"] not in present:
            problems.append(f"{uri}: listed in {where} but missing")
        elif "size" in shard and present[shard["name"]] != shard["size"]:
            problems.append(f"{uri}: {present[shard['name']]} bytes, {where} says {shard['size']}")
        elif hashes:
            digest = storage.sha256_uri(uri)
            if digest != shard["sha256"]:
                problems.append(f"{uri}: sha256 {digest}, {where} says {shard['sha256']}")
    return problems


def verify_requested() -> bool:
    """Whether ``$CNF_VERIFY_SHARDS`` asks for sha256 checks when splits are opened."""
    raw = os.environ.get(VERIFY_ENV, "")
    value = raw.strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise ValueError(f"${VERIFY_ENV}={raw!r}: expected 1/true/yes/on or 0/false/no/off")


def is_up_to_date(dest: str, dataset: str, source_sha256: str, shard_size: int) -> dict | None:
    """The manifest when ``dest`` holds exactly this dataset from this source, content checked, else None.

    Same dataset, source sha256 and shard size, and every shard present with the manifest's size and
    sha256; what differs is printed (it is rebuilt). An unreadable manifest counts as no dataset.
    """
    try:
        manifest = read_manifest(dest)
    except ShardError as exc:
        print(f"{exc}: rebuilding", file=sys.stderr)
        return None
    if manifest is None:
        return None
    if (manifest.get("dataset"), manifest.get("source_sha256"), manifest.get("shard_size")) != (
        dataset, source_sha256, shard_size,
    ):
        return None
    problems = check_shards(dest, manifest, hashes=True)
    for problem in problems:
        print(f"{problem}: rebuilding", file=sys.stderr)
    return None if problems else manifest


def record_sizes(dest: str, manifest: dict) -> dict:
    """A ``cnf-shards/1`` manifest whose shards were just verified, rewritten as ``cnf-shards/2`` with sizes."""
    present = storage.list_sizes(shard_base(dest, manifest))
    for shard in _listed(manifest):
        shard["size"] = present[shard["name"]]
    manifest["format"] = FORMAT
    storage.put_bytes(_manifest_bytes(manifest), storage.join(dest, MANIFEST))
    return manifest


# ------------------------------------------------------------------------------------------------- writing
def _local_folder(dest: str) -> Path:
    # The real folder: a symlinked DEST is replaced where it points, beside its target.
    return Path(os.path.realpath(storage.local_path(dest)))


def _side_prefix(folder: Path) -> str:
    return f".{folder.name}.new-"


def _is_dataset_entry(entry: os.DirEntry) -> bool:
    return entry.is_file() and bool(entry.name == MANIFEST or SHARD_RE.match(entry.name)
                                    or LEFTOVER_RE.match(entry.name))


def remove_leftovers(dest: str, manifest: Mapping[str, Any]) -> list[str]:
    """Delete what killed or out-of-space writers left at ``dest`` beside the dataset ``manifest`` describes.

    Local: stale side folders beside DEST, hidden temporaries, and shard files the manifest does not list
    (zero-byte ones too). S3: shards outside the manifest's ``shard_dir`` (older generations, flat /1 names)
    and hidden temporaries. Call it holding DEST's lock. Returns what was removed.
    """
    base = shard_base(dest, manifest)
    listed = {s["name"] for s in _listed(manifest)}
    if not storage.is_s3(dest):
        folder = _local_folder(dest)
        removed = [str(p) for p in storage.remove_stale_scratch(_side_prefix(folder), folder.parent)]
        doomed = [storage.join(base, name) for name in storage.list_sizes(base)
                  if LEFTOVER_RE.match(name) or (SHARD_RE.match(name) and name not in listed)]
    else:
        current = manifest.get("shard_dir") or ""
        doomed = []
        for rel in storage.list_sizes(dest, recursive=True):
            top, _, rest = rel.partition("/")
            if not rest and (LEFTOVER_RE.match(top) or (SHARD_RE.match(top) and (current or top not in listed))):
                doomed.append(storage.join(dest, rel))
            elif rest and GENERATION_RE.match(top) and (top != current or rest not in listed):
                doomed.append(storage.join(dest, rel))
        removed = []
    storage.delete_many(doomed)
    return removed + doomed


def _restore_interrupted_swap(folder: Path) -> None:
    """Where a swap without ``RENAME_EXCHANGE`` died between its renames, put the old dataset back."""
    if folder.exists():
        return
    for stale in storage.stale_scratch(_side_prefix(folder), folder.parent):
        if stale.name.endswith("_old") and (stale / MANIFEST).is_file():
            os.rename(stale, folder)
            print(f"{folder}: restored the dataset an interrupted write left at {stale}", file=sys.stderr)
            return


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
    """Write every split's samples as shards at ``dest``, then the manifest; all or nothing (module docstring).

    ``splits`` maps split name -> iterable of samples ``{"__key__": str, "<member>": bytes | array | dict}``.
    ``expected_counts`` (split -> n) is checked before the new dataset replaces the old. Returns the manifest.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")

    def build(folder: Path, publish: Callable[[Path, str], None] | None) -> dict:
        manifest: dict[str, Any] = {
            "format": FORMAT, "dataset": dataset, "source": source, "source_sha256": source_sha256,
            "shard_size": shard_size, "splits": {}, "meta": dict(meta or {}),
        }
        for split, samples in splits.items():
            if not re.match(r"^[A-Za-z0-9_]+$", split):
                raise ShardError(f"split name {split!r} must be letters, digits or underscores")
            manifest["splits"][split] = _write_split(folder, publish, dataset, split, samples, shard_size,
                                                     (totals or {}).get(split))
        for split, expected in (expected_counts or {}).items():
            got = manifest["splits"].get(split, {}).get("count", 0)
            if got != expected:
                raise ShardError(f"{dataset}: split {split!r} has {got} samples, expected {expected}")
        return manifest

    with storage.lock(dest):
        return _write_s3(dest, build) if storage.is_s3(dest) else _write_local(dest, build)


def _write_local(dest: str, build: Callable) -> dict:
    folder = _local_folder(dest)
    if folder.exists() and not folder.is_dir():
        raise ShardError(f"{folder}: exists and is not a folder")
    _restore_interrupted_swap(folder)
    if folder.is_dir():
        foreign = sorted(e.name + ("/" if e.is_dir() else "") for e in os.scandir(folder)
                         if not _is_dataset_entry(e))
        if foreign:
            more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
            raise ShardError(f"{folder}: holds {', '.join(foreign[:5])}{more}, which are not part of a dataset; "
                             "a fetch replaces the whole folder, so move them out or choose another destination")
    folder.parent.mkdir(parents=True, exist_ok=True)
    storage.remove_stale_scratch(_side_prefix(folder), folder.parent)
    with storage.scratch_dir(_side_prefix(folder), folder.parent) as side:
        manifest = build(side, None)
        storage.put_bytes(_manifest_bytes(manifest), str(side / MANIFEST))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(side, 0o777 & ~umask)  # a folder, as mkdir would make it (mkdtemp gives 0700)
        storage.replace_folder(side, folder)
    return manifest


def _write_s3(dest: str, build: Callable) -> dict:
    generation = f"gen-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{secrets.token_hex(4)}"
    uploaded: list[str] = []

    def publish(path: Path, name: str) -> None:
        uri = storage.join(dest, generation, name)
        uploaded.append(uri)
        storage.put_file(path, uri)
        path.unlink()

    storage.remove_stale_scratch(STAGING_PREFIX)
    with storage.scratch_dir(STAGING_PREFIX) as staging:
        try:
            manifest = build(staging, publish)
            manifest["shard_dir"] = generation
            storage.put_bytes(_manifest_bytes(manifest), storage.join(dest, MANIFEST))
        except BaseException:
            if not _manifest_names(dest, generation):
                try:
                    storage.delete_many(uploaded)
                except storage.StorageError as exc:  # report what is left; the original error goes on
                    print(f"warning: {exc}", file=sys.stderr)
            raise
    remove_leftovers(dest, manifest)
    return manifest


def _manifest_names(dest: str, generation: str) -> bool:
    """Whether DEST's manifest is the one naming ``generation`` (a PUT that failed after it landed)."""
    try:
        current = read_manifest(dest)
    except (ShardError, storage.StorageError):
        return False
    return bool(current and current.get("shard_dir") == generation)


_END = object()


def _write_split(folder: Path, publish: Callable[[Path, str], None] | None, dataset: str, split: str,
                 samples: Iterable[Mapping[str, Any]], shard_size: int, total: int | None) -> dict:
    """Tars of ``shard_size`` samples in ``folder`` (each through the atomic writer), handed to ``publish``."""
    shards: list[dict] = []
    seen: set[str] = set()
    progress = Progress(f"{dataset}/{split}", total, unit="samples", every=5.0)
    it = iter(samples)
    for index in itertools.count():
        first = next(it, _END)
        if first is _END:
            break
        name = shard_name(split, index)
        path = folder / name
        count = 0
        with atomic_write(path) as handle, tarfile.open(fileobj=handle, mode="w",
                                                             format=tarfile.PAX_FORMAT) as tar:
            for sample in itertools.chain([first], itertools.islice(it, shard_size - 1)):
                key = sample.get("__key__")
                if not isinstance(key, str) or not KEY_RE.match(key):
                    raise ShardError(f"{dataset}/{split}: sample key {key!r} must match {KEY_RE.pattern} (no dots)")
                if key in seen:
                    raise ShardError(f"{dataset}/{split}: duplicate sample key {key!r}")
                seen.add(key)
                for member in _ordered_members(sample):
                    data = encode_member(member, sample[member])
                    tar.addfile(_tarinfo(f"{key}.{member}", len(data)), io.BytesIO(data))
                count += 1
                progress.step()
        shards.append({"name": name, "sha256": storage.sha256_file(path), "count": count,
                       "size": path.stat().st_size})
        if publish is not None:
            publish(path, name)
    progress.done()
    return {"count": sum(s["count"] for s in shards), "shards": shards}


# ------------------------------------------------------------------------------------------------- reading
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


_WARNED_V1: set[str] = set()


def shard_uris(dest: str, split: str, manifest: dict | None = None,
               verify: bool | None = None) -> list[tuple[str, int]]:
    """``[(uri, count)]`` of a split's shards, after checking them against the manifest.

    Sizes are always checked (one listing); sha256 too when ``verify`` (default: ``$CNF_VERIFY_SHARDS``).
    A shard that differs raises :class:`ShardError` naming it and what differs.
    """
    manifest = manifest or read_manifest(dest)
    where = storage.join(dest, MANIFEST)
    if manifest is None:
        raise ShardError(f"{where}: no manifest (dataset not fetched, or fetch failed)")
    if split not in manifest["splits"]:
        raise ShardError(f"{where}: no split {split!r}; has {sorted(manifest['splits'])}")
    verify = verify_requested() if verify is None else verify
    problems = check_shards(dest, manifest, [split], hashes=verify)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ShardError(f"split {split!r} does not match its manifest: {'; '.join(problems[:3])}{more}; "
                         f"the shards changed after the fetch: run `cnf fetch` again to rebuild them")
    if manifest.get("format", FORMATS[0]) == FORMATS[0] and where not in _WARNED_V1:
        _WARNED_V1.add(where)
        print(f"warning: {where} is {FORMATS[0]} (no shard sizes): shards are checked by name only; "
              f"`cnf fetch` again records their sizes", file=sys.stderr)
    base = shard_base(dest, manifest)
    return [(storage.join(base, s["name"]), s["count"]) for s in manifest["splits"][split]["shards"]]


def decode_sample(raw: Mapping[str, Any], uri: str) -> dict[str, Any]:
    """Every member of a raw sample decoded; a failure names the shard ``uri``, the key and the member."""
    key = raw.get("__key__")
    out: dict[str, Any] = {"__key__": key}
    for member, payload in raw.items():
        if member == "__key__":
            continue
        try:
            out[member] = decode_member(member, payload)
        except ShardError as exc:
            raise ShardError(f"{uri}: sample {key!r}: {exc}") from exc
    return out


def iter_samples(dest: str, split: str, decode: bool = True, verify: bool | None = None) -> Iterator[dict[str, Any]]:
    """Every sample of a split in shard order (checked as :func:`shard_uris` checks), decoded when ``decode``."""
    for uri, _ in shard_uris(dest, split, verify=verify):
        with storage.open_read(uri) as stream:
            for sample in iter_tar(stream, uri):
                yield decode_sample(sample, uri) if decode else sample


def validate(dest: str, decode: bool = False) -> dict:
    """Check every shard against the manifest (size, sha256, sample count, unique keys); returns the manifest.

    With ``decode`` every member is also decoded, which catches corrupt PNG/NPY/JSON payloads.
    """
    manifest = read_manifest(dest)
    if manifest is None:
        raise ShardError(f"{storage.join(dest, MANIFEST)}: no manifest")
    problems = check_shards(dest, manifest)
    if problems:
        raise ShardError("; ".join(problems))
    base = shard_base(dest, manifest)
    for split, info in manifest["splits"].items():
        keys: set[str] = set()
        for shard in info["shards"]:
            uri = storage.join(base, shard["name"])
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
                    decode_sample(sample, uri)
                n += 1
            if n != shard["count"]:
                raise ShardError(f"{uri}: {n} samples, manifest says {shard['count']}")
        if len(keys) != info["count"]:
            raise ShardError(f"{dest}: split {split!r} has {len(keys)} samples, manifest says {info['count']}")
    return manifest
