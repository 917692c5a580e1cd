"""Stage `cnf fetch DATASET --source URI --out DEST`: a dataset release -> verified WebDataset shards.

URI: a folder, an archive (.zip, .tar, .tar.gz, .tgz), ``file://``, ``https://``, ``s3://bucket/key``, or
``demo`` for the embedded demo set. DEST: a folder or ``s3://bucket/prefix``. A rerun whose DEST already holds
a manifest for the same dataset, source checksum and shard size does nothing. Any failure (checksum, missing
or undecodable file, wrong labels or counts) exits non-zero naming the file, and leaves no shards or manifest.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

from pipelines.data import shards, storage
from pipelines.data.datasets import get_dataset
from pipelines.data.datasets.readers import ReaderError

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


class FetchError(RuntimeError):
    """The source is not a valid copy of the dataset; the message names the file and what was expected."""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", help="dataset name (pipelines/data/datasets/registry.py)")
    parser.add_argument("--source", required=True,
                        help="folder, archive, file://, https://, s3://bucket/key, or 'demo'")
    parser.add_argument("--out", required=True, help="destination folder or s3://bucket/prefix")
    parser.add_argument("--shard-size", type=int, default=shards.DEFAULT_SHARD_SIZE,
                        help="samples per shard (default %(default)s)")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the checksum check of known archives (for re-packed copies)")


def _terminate(signum, frame):
    # SIGTERM (DVC, Ray, a CI timeout) becomes an exception so the writer removes what it wrote.
    raise SystemExit(128 + signum)


def run(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _terminate)
    try:
        manifest = fetch(args.dataset, args.source, args.out, shard_size=args.shard_size,
                         verify=not args.no_verify)
    except (FetchError, ReaderError, shards.ShardError, storage.StorageError, KeyError, ValueError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"cnf fetch {args.dataset}: error: {message}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{s}={v['count']}" for s, v in manifest["splits"].items())
    print(f"{args.dataset}: {counts} -> {args.out}")
    return 0


def fetch(dataset: str, source: str, dest: str, shard_size: int = shards.DEFAULT_SHARD_SIZE,
          verify: bool = True) -> dict:
    """Fetch ``dataset`` from ``source`` into shards at ``dest``; returns the manifest."""
    spec = get_dataset(dataset)
    if source == "demo":
        from pipelines.data.datasets import demo

        source_sha = hashlib.sha256(f"{demo.DEMO_VERSION}:{dataset}".encode()).hexdigest()
        existing = shards.is_up_to_date(dest, dataset, source_sha, shard_size)
        if existing is not None:
            print(f"{dataset}: {dest} is up to date (demo)", file=sys.stderr)
            return existing
        splits = demo.build(dataset)
        return shards.write_dataset(dest, dataset, splits, source="demo", source_sha256=source_sha,
                                    shard_size=shard_size, meta={"task": spec.task, "scale": spec.scale,
                                                                 "demo": True})
    with tempfile.TemporaryDirectory(prefix=f"cnf-fetch-{dataset}-") as tmp:
        local = _materialize(source, Path(tmp))
        source_sha = _source_sha256(local, spec, verify)
        existing = shards.is_up_to_date(dest, dataset, source_sha, shard_size)
        if existing is not None:
            print(f"{dataset}: {dest} is up to date", file=sys.stderr)
            return existing
        root = _unpack(local, Path(tmp) / "unpacked")
        from pipelines.data.datasets import readers

        splits = getattr(readers, spec.reader)(root, spec)
        expected = {k: v for k, v in spec.splits.items() if v is not None}
        return shards.write_dataset(dest, dataset, splits, source=source, source_sha256=source_sha,
                                    shard_size=shard_size, expected_counts=expected, totals=expected,
                                    meta={"task": spec.task, "scale": spec.scale, "demo": False})


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


def _source_sha256(path: Path, spec, verify: bool) -> str:
    """sha256 of an archive (checked against the registry when its name is known), or of a folder's files."""
    if path.is_file():
        digest = storage.sha256_file(path)
        expected = spec.archives.get(path.name)
        if verify and expected and digest != expected:
            raise FetchError(f"{path}: sha256 {digest} does not match the expected {expected} for {path.name}")
        return digest
    tree = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        tree.update(f"{file.relative_to(path)}\0{storage.sha256_file(file)}\n".encode())
    return tree.hexdigest()


def _link(src: str, dst: str) -> None:
    os.symlink(os.path.realpath(src), dst)


def _unpack(path: Path, dst: Path) -> Path:
    """Extract an archive into ``dst`` (refusing members that escape it); a folder is returned as is."""
    if path.is_dir():
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
