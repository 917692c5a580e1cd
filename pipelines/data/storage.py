"""Byte storage on a local disk or on S3, behind one small set of functions keyed by URI.

A location is either a local path (or ``file://`` URI) or ``s3://bucket/key``. S3 goes through boto3 with the
standard credential chain and ``AWS_ENDPOINT_URL`` (so a loopback moto server, MinIO or AWS all work the same
way), multipart transfers via ``TransferConfig``, and botocore's own retry loop with backoff for transient
errors (throttling, 5xx, dropped connections). Local writes go to a temporary name and are renamed into place,
so a reader never sees half a file.

Writers of a whole folder or prefix (``pipelines.data.shards.write_dataset``) also find here:
  - :func:`lock`: one writer per destination. Local: ``fcntl.flock`` on ``<parent>/.<name>.lock`` beside the
    folder (beside, because the folder itself is swapped); a second writer waits, saying which pid holds it.
    S3: a ``<prefix>/.lock`` object created with a conditional PUT (``If-None-Match: *``); a second writer on
    this host waits while the holder lives and takes over the lock of a dead one; a holder on another host is
    refused by name (its lock object is removed by hand once that fetch is known to be dead).
  - :func:`replace_folder`: a complete folder swapped in for an old one (``renameat2(RENAME_EXCHANGE)``).
  - :func:`scratch_dir` / :func:`remove_stale_scratch`: temporary folders tagged ``<pid>@<host>``, so the next
    writer removes those that a killed (SIGKILL) or out-of-space process left behind.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import hashlib
import io
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

from pipelines import io as io_

#: Multipart above 32 MiB in 16 MiB parts: shards are ~100 MiB at most, so this keeps uploads resumable
#: part by part without paying multipart overhead for small manifests.
MULTIPART_THRESHOLD = 32 * 1024 * 1024
MULTIPART_CHUNKSIZE = 16 * 1024 * 1024


class StorageError(RuntimeError):
    """A storage operation failed; the message names the URI."""


class LockError(StorageError):
    """Another writer holds a destination's lock and cannot be waited for; the message names it."""


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


def list_sizes(uri: str, recursive: bool = False) -> dict[str, int]:
    """``{name: bytes}`` of the files/objects under the folder or prefix ``uri`` (one listing call per 1000 on
    S3); names are relative to ``uri`` (with ``/`` inside them when ``recursive``)."""
    if is_s3(uri):
        bucket, prefix = split_s3(uri)
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        out: dict[str, int] = {}
        kwargs = {"Bucket": bucket, "Prefix": prefix, **({} if recursive else {"Delimiter": "/"})}
        with _s3_errors(uri):
            for page in s3_client().get_paginator("list_objects_v2").paginate(**kwargs):
                out.update((obj["Key"][len(prefix):], int(obj["Size"])) for obj in page.get("Contents", []))
        return out
    path = local_path(uri)
    if not path.is_dir():
        return {}
    if not recursive:
        return {e.name: e.stat().st_size for e in os.scandir(path) if e.is_file()}
    return {p.relative_to(path).as_posix(): p.stat().st_size for p in path.rglob("*") if p.is_file()}


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


def sha256_uri(uri: str) -> str:
    """sha256 of a local file or an S3 object (streamed)."""
    if not is_s3(uri):
        return sha256_file(local_path(uri))
    with open_read(uri) as stream, _s3_errors(uri):
        return sha256_stream(stream)


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


# ------------------------------------------------------------------------------------- writers of a whole folder
def pid_alive(pid: int | str | None) -> bool:
    """Whether process ``pid`` of this host still runs (a zombie counts as running until it is reaped)."""
    try:
        pid = int(pid)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


_held = threading.local()


def _held_locks() -> dict[str, int]:
    if not hasattr(_held, "locks"):
        _held.locks = {}
    return _held.locks


def lock_uri(uri: str) -> str:
    """Where the write lock of the destination ``uri`` lives: beside a local folder, inside an S3 prefix."""
    if is_s3(uri):
        return join(uri, ".lock")
    folder = Path(os.path.realpath(local_path(uri)))
    return str(folder.parent / f".{folder.name}.lock")


@contextlib.contextmanager
def lock(uri: str, poll: float = 1.0, wait: bool = True) -> Iterator[None]:
    """Hold the write lock of the folder or prefix ``uri`` for the block (re-entrant within one thread).

    A second writer waits (and says once which process it waits for), or with ``wait=False`` is refused with
    :class:`LockError` naming the holder; on S3 a holder on another host is always refused, since this host
    cannot tell whether it still runs.
    """
    key = lock_uri(uri)
    held = _held_locks()
    if key in held:
        held[key] += 1
        try:
            yield
        finally:
            held[key] -= 1
        return
    with (_s3_lock(uri, key, poll, wait) if is_s3(uri) else _local_lock(uri, Path(key), wait)):
        held[key] = 1
        try:
            yield
        finally:
            del held[key]


@contextlib.contextmanager
def _local_lock(uri: str, path: Path, wait: bool = True) -> Iterator[None]:
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 128, 0).decode(errors="replace").strip() or "a process that has not said"
            if not wait:
                raise LockError(f"{uri}: another process holds {path} ({holder}); wait for it to finish")
            print(f"{uri}: waiting for the writer that holds {path} ({holder})", file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        # Who holds it, for the message of the next one to wait; the lock itself is the flock, not this text.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the flock; the file stays (deleting lock files races with the next writer)


def _read_lock(key: str) -> dict | None:
    """The S3 lock object's holder, or None when there is none (released meanwhile)."""
    from botocore.exceptions import ClientError

    bucket, obj = split_s3(key)
    try:
        body = s3_client().get_object(Bucket=bucket, Key=obj)["Body"].read()
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise _wrap(key, exc) from exc
    try:
        holder = json.loads(body)
    except ValueError:
        holder = None
    if not isinstance(holder, dict):
        raise LockError(f"{key}: a lock object that is not this project's (expected JSON with host and pid); "
                        "remove it if nothing else writes this prefix")
    return holder


@contextlib.contextmanager
def _s3_lock(uri: str, key: str, poll: float, wait: bool = True) -> Iterator[None]:
    from botocore.exceptions import ClientError

    bucket, obj = split_s3(key)
    host = socket.gethostname()
    me = {"host": host, "pid": os.getpid(), "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
          "token": os.urandom(8).hex()}
    said = False
    while True:
        try:
            s3_client().put_object(Bucket=bucket, Key=obj, Body=json.dumps(me).encode(), IfNoneMatch="*")
            break
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("PreconditionFailed", "412",
                                                                 "ConditionalRequestConflict", "409"):
                raise _wrap(key, exc) from exc
        holder = _read_lock(key)
        if holder is None:
            continue  # released between our PUT and our GET
        who = f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}"
        if holder.get("host") != host:
            raise LockError(f"{uri}: another writer holds {key} ({who}); it cannot be checked from {host}. "
                            f"Wait for it, or delete {key} once that process is known to be gone")
        if not pid_alive(holder.get("pid")):
            print(f"{uri}: taking over {key} from {who}, which no longer runs", file=sys.stderr, flush=True)
            delete(key)
            continue
        if not wait:
            raise LockError(f"{uri}: another process holds {key} ({who}); wait for it to finish")
        if not said:
            print(f"{uri}: waiting for the writer that holds {key} ({who})", file=sys.stderr, flush=True)
            said = True
        time.sleep(poll)
    try:
        yield
    finally:
        current = _read_lock(key)
        if current is not None and current.get("token") == me["token"]:
            delete(key)


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two names in one step (Linux ``renameat2``); False where the C library or filesystem lacks it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise StorageError(f"{b}: could not swap in {a} ({os.strerror(code)})")


def replace_folder(new: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Put the complete folder ``new`` at ``dest`` in one step; the old ``dest`` (if any) is left at ``new``.

    ``renameat2(RENAME_EXCHANGE)`` swaps the two names atomically: a reader of ``dest`` sees the old folder or
    the new one, never neither. Where that call is missing, ``dest`` is renamed to ``<new>_old`` and ``new``
    into place: for that instant ``dest`` is absent, and a crash there leaves the old folder at ``<new>_old``
    (``pipelines.data.shards`` moves it back on the next write).
    """
    new, dest = Path(new), Path(dest)
    if not dest.exists():
        os.rename(new, dest)
    elif not _exchange(new, dest):
        old = new.with_name(new.name + "_old")
        os.rename(dest, old)
        os.rename(new, dest)
        os.rename(old, new)
    io_._fsync_dir(dest.parent)


def _scratch_pattern(prefix: str) -> re.Pattern:
    return re.compile(rf"^{re.escape(prefix)}(?P<pid>\d+)@(?P<host>.+)-[A-Za-z0-9_]+$")


@contextlib.contextmanager
def scratch_dir(prefix: str, parent: str | os.PathLike | None = None) -> Iterator[Path]:
    """A fresh folder ``<parent>/<prefix><pid>@<host>-XXXXXXXX`` (``parent``: the system temporary folder),
    removed with all it holds when the block ends, by error or not. The tag lets :func:`remove_stale_scratch`
    tell what a killed process left from what a running one uses."""
    if parent is not None:
        Path(parent).mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}@{socket.gethostname()}-", dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        if path.exists():  # not raised: it would hide the error that ended the block
            print(f"warning: could not remove {path}", file=sys.stderr)


def stale_scratch(prefix: str, parent: str | os.PathLike | None = None) -> list[Path]:
    """This host's ``prefix`` scratch folders whose process no longer runs (killed, or died of a full disk)."""
    folder = Path(parent if parent is not None else tempfile.gettempdir())
    pattern, host = _scratch_pattern(prefix), socket.gethostname()
    try:
        entries = sorted(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = []
    for entry in entries:
        match = pattern.match(entry.name)
        if match and match["host"] == host and not pid_alive(match["pid"]):
            found.append(entry)
    return found


def remove_stale_scratch(prefix: str, parent: str | os.PathLike | None = None) -> list[Path]:
    """Remove what :func:`stale_scratch` finds; returns the removed paths."""
    removed = []
    for entry in stale_scratch(prefix, parent):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        if not entry.exists():
            removed.append(entry)
    return removed


def delete_many(uris: Iterable[str]) -> None:
    """Remove several files/objects (S3: up to 1000 per request); missing ones are not an error."""
    by_bucket: dict[str, list[str]] = {}
    for uri in uris:
        if not is_s3(uri):
            local_path(uri).unlink(missing_ok=True)
            continue
        bucket, key = split_s3(uri)
        by_bucket.setdefault(bucket, []).append(key)
    for bucket, keys in by_bucket.items():
        for start in range(0, len(keys), 1000):
            chunk = keys[start:start + 1000]
            where = f"s3://{bucket}/{chunk[0]}"
            with _s3_errors(where):
                reply = s3_client().delete_objects(
                    Bucket=bucket, Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True})
            if reply.get("Errors"):
                first = reply["Errors"][0]
                raise StorageError(f"s3://{bucket}/{first.get('Key')}: could not delete ({first.get('Message')}); "
                                   f"{len(reply['Errors'])} object(s) left")
