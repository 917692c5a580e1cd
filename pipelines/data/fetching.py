"""A dataset release -> verified WebDataset shards: what `cnf fetch` does besides parsing its arguments.

:func:`fetch` materialises the source (a folder, an archive, ``file://``, ``https://``, ``s3://bucket/key``, or
``demo``), checks known archives' sha256 against the registry, unpacks, reads the release with its reader and
writes the shards (``pipelines.data.shards.write_dataset``: the old dataset at DEST stays readable until the new
one replaces it whole). The whole fetch holds DEST's lock, so a second fetch into the same DEST waits and then
finds it up to date. Downloads and unpacked files live in a scratch folder that is removed at the end, and
that the next fetch removes if this process was killed.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tarfile
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

from pipelines.data import shards, storage
from pipelines.data.datasets import get_dataset

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
#: Scratch folders (downloads, unpacked releases) in the system temporary folder.
SCRATCH_PREFIX = "cnf-fetch-"


class FetchError(RuntimeError):
    """The source is not a valid copy of the dataset; the message names the file and what was expected."""


def fetch(dataset: str, source: str, dest: str, shard_size: int = shards.DEFAULT_SHARD_SIZE,
          verify: bool = True) -> dict:
    """Fetch ``dataset`` from ``source`` into shards at ``dest``; returns the manifest.

    A ``dest`` already holding this dataset from this source with this shard size, every shard's size and
    sha256 as its manifest says, is left as it is. ``verify``: check known archives' sha256.
    """
    spec = get_dataset(dataset)
    with storage.lock(dest):
        storage.remove_stale_scratch(SCRATCH_PREFIX)
        if source == "demo":
            from pipelines.data.datasets import demo

            source_sha = hashlib.sha256(f"{demo.DEMO_VERSION}:{dataset}".encode()).hexdigest()
            existing = _up_to_date(dest, dataset, source_sha, shard_size, "(demo)")
            if existing is not None:
                return existing
            return shards.write_dataset(dest, dataset, demo.build(dataset), source="demo",
                                        source_sha256=source_sha, shard_size=shard_size,
                                        meta={"task": spec.task, "scale": spec.scale, "demo": True})
        with storage.scratch_dir(SCRATCH_PREFIX) as tmp:
            local = _materialize(source, tmp)
            source_sha = _source_sha256(local, spec, verify)
            existing = _up_to_date(dest, dataset, source_sha, shard_size)
            if existing is not None:
                return existing
            root = _unpack(local, tmp / "unpacked", spec)
            from pipelines.data.datasets import readers

            splits = getattr(readers, spec.reader)(root, spec)
            expected = {k: v for k, v in spec.splits.items() if v is not None}
            return shards.write_dataset(dest, dataset, splits, source=source, source_sha256=source_sha,
                                        shard_size=shard_size, expected_counts=expected, totals=expected,
                                        meta={"task": spec.task, "scale": spec.scale, "demo": False})


def _up_to_date(dest: str, dataset: str, source_sha: str, shard_size: int, what: str = "") -> dict | None:
    """The manifest when DEST needs no rebuild (then also tidied, and a /1 manifest given its sizes)."""
    existing = shards.is_up_to_date(dest, dataset, source_sha, shard_size)
    if existing is None:
        return None
    if existing.get("format") != shards.FORMAT:
        existing = shards.record_sizes(dest, existing)
        print(f"{dataset}: {dest}: recorded shard sizes ({shards.FORMAT})", file=sys.stderr)
    shards.remove_leftovers(dest, existing)
    print(f"{dataset}: {dest} is up to date{' ' + what if what else ''}", file=sys.stderr)
    return existing


def _materialize(source: str, tmp: Path) -> Path:
    """A local path for the source: local paths as they are, remote ones downloaded into ``tmp``."""
    if storage.is_s3(source):
        _, key = storage.split_s3(source)
        dst = tmp / (key.rsplit("/", 1)[-1] or "source")
        print(f"downloading {source}", file=sys.stderr)
        return storage.get_file(source, dst)
    if source.startswith(("http://", "https://")):
        name = Path(urllib.parse.urlparse(source).path).name or "source"
        dst = tmp / name
        print(f"downloading {source}", file=sys.stderr)
        try:
            with urllib.request.urlopen(source, timeout=60) as response, open(dst, "wb") as out:
                shutil.copyfileobj(response, out, 1 << 20)
        except OSError as exc:
            raise FetchError(f"{source}: download failed ({exc})") from exc
        return dst
    path = storage.local_path(source)
    if not path.exists():
        raise FetchError(f"{path}: source does not exist")
    return path


def _is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _named_archives(folder: Path, spec) -> list[Path]:
    """The archives of ``folder`` that the registry names for ``spec`` (e.g. T91.zip and BSDS500.zip for
    ``sr_train`` in a folder holding every release); [] when the folder holds none of them."""
    if not spec.archives:
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name in spec.archives)


def _file_sha256(path: Path, spec, verify: bool) -> str:
    digest = storage.sha256_file(path)
    expected = spec.archives.get(path.name)
    if verify and expected and digest != expected:
        raise FetchError(f"{path}: sha256 {digest} does not match the expected {expected} for {path.name}")
    return digest


def _source_sha256(path: Path, spec, verify: bool) -> str:
    """sha256 of an archive (checked against the registry when its name is known), or of a folder's files.

    A folder holding archives the registry names for this dataset stands for those archives alone: each is
    checked, and only they make the source's hash (other files beside them neither count nor get unpacked).
    """
    if path.is_file():
        return _file_sha256(path, spec, verify)
    named = _named_archives(path, spec)
    files = named or sorted(p for p in path.rglob("*") if p.is_file())
    tree = hashlib.sha256()
    for file in files:
        digest = _file_sha256(file, spec, verify) if named else storage.sha256_file(file)
        tree.update(f"{file.relative_to(path) if not named else file.name}\0{digest}\n".encode())
    return tree.hexdigest()


def _link(src: str, dst: str) -> None:
    os.symlink(os.path.realpath(src), dst)


def _unpack(path: Path, dst: Path, spec=None) -> Path:
    """Extract an archive into ``dst`` (refusing members that escape it); a folder is returned as is, or, when
    it holds archives the registry names for ``spec``, just those are unpacked into ``dst``."""
    if path.is_dir():
        named = _named_archives(path, spec) if spec is not None else []
        if named:
            dst.mkdir(parents=True, exist_ok=True)
            for archive in named:
                _unpack(archive, dst / archive.name.split(".")[0])
            return dst
        archives = [p for p in path.rglob("*") if _is_archive(p)]
        if not archives:
            return path
        # A folder of archives (e.g. LFW's .tgz files): link its entries into dst and unpack beside them.
        dst.mkdir(parents=True, exist_ok=True)
        for entry in path.iterdir():
            if entry.is_dir():  # real folders of linked files: rglob does not descend into linked folders
                shutil.copytree(entry, dst / entry.name, symlinks=False, copy_function=_link)
            else:
                (dst / entry.name).symlink_to(entry.resolve())
        for archive in archives:
            _unpack(archive, dst / archive.relative_to(path).parent / archive.name.split(".")[0])
        return dst
    if not _is_archive(path):
        raise FetchError(f"{path}: not a folder or a known archive ({', '.join(ARCHIVE_SUFFIXES)})")
    dst.mkdir(parents=True, exist_ok=True)
    try:
        if path.name.lower().endswith(".zip"):
            with zipfile.ZipFile(path) as archive:
                for member in archive.namelist():
                    if os.path.isabs(member) or ".." in Path(member).parts:
                        raise FetchError(f"{path}: member {member!r} escapes the archive")
                archive.extractall(dst)
        else:
            with tarfile.open(path) as archive:
                archive.extractall(dst, filter="data")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        raise FetchError(f"{path}: corrupt or truncated archive ({exc})") from exc
    # Nested archives (e.g. LFW's several .tgz files in one folder) are unpacked in place.
    for inner in sorted(dst.rglob("*")):
        if _is_archive(inner):
            _unpack(inner, inner.parent / inner.name.split(".")[0])
    return dst
