"""Byte storage on a local disk or on S3, behind one small set of functions keyed by URI.

A location is either a local path (or ``file://`` URI) or ``s3://bucket/key``. S3 goes through boto3 with the
standard credential chain and ``AWS_ENDPOINT_URL`` (so a loopback moto server, MinIO or AWS all work the same
way), multipart transfers via ``TransferConfig``, and botocore's own retry loop with backoff for transient
errors (throttling, 5xx, dropped connections). Local writes go to a temporary name and are renamed into place,
so a reader never sees half a file.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import os
import shutil
import tempfile
import urllib.parse
from pathlib import Path
from typing import BinaryIO, Iterator

from pipelines import io as io_

#: Multipart above 32 MiB in 16 MiB parts: shards are ~100 MiB at most, so this keeps uploads resumable
#: part by part without paying multipart overhead for small manifests.
MULTIPART_THRESHOLD = 32 * 1024 * 1024
MULTIPART_CHUNKSIZE = 16 * 1024 * 1024


class StorageError(RuntimeError):
    """A storage operation failed; the message names the URI."""


def is_s3(uri: str | os.PathLike) -> bool:
    return str(uri).startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``."""
    parsed = urllib.parse.urlparse(str(uri))
    if parsed.scheme != "s3" or not parsed.netloc:
        raise StorageError(f"not an s3:// URI with a bucket: {uri!r}")
    return parsed.netloc, parsed.path.lstrip("/")


def local_path(uri: str | os.PathLike) -> Path:
    """A local path from a path or a ``file://`` URI."""
    text = str(uri)
    if text.startswith("file://"):
        return Path(urllib.parse.unquote(urllib.parse.urlparse(text).path))
    return Path(text)


def join(base: str | os.PathLike, *parts: str) -> str:
    """Join path components onto a local path or an S3 prefix."""
    text = str(base)
    if is_s3(text):
        return "/".join([text.rstrip("/"), *[p.strip("/") for p in parts]])
    return str(local_path(text).joinpath(*parts))


@functools.lru_cache(maxsize=None)
def _client_for(endpoint: str | None, pid: int):
    import boto3
    from botocore.config import Config

    # Adaptive mode adds client-side rate limiting on top of standard exponential backoff with jitter, which
    # is what a shared bucket under many parallel loader workers needs.
    config = Config(
        retries={"mode": "adaptive", "max_attempts": 8},
        connect_timeout=10,
        read_timeout=60,
        max_pool_connections=16,
    )
    return boto3.session.Session().client("s3", endpoint_url=endpoint or None, config=config)


def s3_client():
    """A boto3 S3 client for this process (cached per endpoint and per PID: clients do not survive fork)."""
    return _client_for(os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"), os.getpid())


def transfer_config():
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(
        multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_CHUNKSIZE, max_concurrency=4
    )


def _wrap(uri: str, exc: Exception) -> StorageError:
    return StorageError(f"{uri}: {type(exc).__name__}: {exc}")


@contextlib.contextmanager
def _s3_errors(uri: str):
    """Re-raise any failure of the S3 call inside as a :class:`StorageError` naming ``uri``."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - re-raised with the URI named
        raise _wrap(uri, exc) from exc


def put_file(src: str | os.PathLike, uri: str) -> None:
    """Copy a local file to ``uri``; local destinations are written under a temporary name and renamed."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        with _s3_errors(uri):
            s3_client().upload_file(str(src), bucket, key, Config=transfer_config())
        return
    io_.copy_file(src, local_path(uri))


def put_bytes(data: bytes, uri: str) -> None:
    """Write ``data`` to ``uri`` atomically (temporary name + rename locally; one PUT on S3)."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        with _s3_errors(uri):
            s3_client().put_object(Bucket=bucket, Key=key, Body=data)
        return
    io_.write_bytes(local_path(uri), data)


def get_file(uri: str, dst: str | os.PathLike) -> Path:
    """Copy ``uri`` to the local file ``dst`` (multipart download on S3)."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if is_s3(uri):
        bucket, key = split_s3(uri)
        with _s3_errors(uri):
            s3_client().download_file(bucket, key, str(dst), Config=transfer_config())
        return dst
    shutil.copyfile(local_path(uri), dst)
    return dst


def get_bytes(uri: str) -> bytes:
    if is_s3(uri):
        bucket, key = split_s3(uri)
        with _s3_errors(uri):
            return s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
    return local_path(uri).read_bytes()


def open_read(uri: str) -> BinaryIO:
    """A readable binary stream: the S3 body is streamed, not buffered whole."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        with _s3_errors(uri):
            return s3_client().get_object(Bucket=bucket, Key=key)["Body"]
    return open(local_path(uri), "rb")


def exists(uri: str) -> bool:
    if is_s3(uri):
        from botocore.exceptions import ClientError

        bucket, key = split_s3(uri)
        try:
            s3_client().head_object(Bucket=bucket, Key=key)
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise _wrap(uri, exc) from exc
    return local_path(uri).exists()


def listdir(uri: str) -> list[str]:
    """Names (not full URIs) of the objects/files directly under the folder or prefix ``uri``, sorted."""
    if is_s3(uri):
        bucket, prefix = split_s3(uri)
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        names: list[str] = []
        with _s3_errors(uri):
            for page in s3_client().get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=prefix, Delimiter="/"
            ):
                names.extend(obj["Key"][len(prefix):] for obj in page.get("Contents", []))
        return sorted(names)
    path = local_path(uri)
    return sorted(p.name for p in path.iterdir() if p.is_file()) if path.is_dir() else []


def delete(uri: str) -> None:
    """Remove one file/object; a missing one is not an error."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        with _s3_errors(uri):
            s3_client().delete_object(Bucket=bucket, Key=key)
        return
    local_path(uri).unlink(missing_ok=True)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_stream(stream: BinaryIO, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    for block in iter(lambda: stream.read(chunk), b""):
        digest.update(block)
    return digest.hexdigest()


def iter_bytes(uri: str, chunk: int = 1 << 20) -> Iterator[bytes]:
    with open_read(uri) as f:
        yield from iter(lambda: f.read(chunk), b"")


def read_stream(uri: str) -> io.BytesIO:
    """The whole object in memory (for random access, e.g. a tar read by members)."""
    return io.BytesIO(get_bytes(uri))


def register_webdataset_s3() -> None:
    """Let ``webdataset`` open ``s3://`` shard URLs through boto3 (its default handlers shell out to tools).

    ``wds.WebDataset(["s3://bucket/prefix/train-000000.tar", ...])`` then streams with the same credentials,
    endpoint and retries as the rest of the project. Reading only.
    """
    import importlib

    gopen = importlib.import_module("webdataset.gopen")  # the package re-exports a function of that name

    def gopen_s3(url, mode="rb", bufsize=8192, **_):
        if "r" not in mode:
            raise ValueError(f"{url}: the boto3 s3:// opener only reads")
        return open_read(url)

    gopen.gopen_schemes["s3"] = gopen_s3
