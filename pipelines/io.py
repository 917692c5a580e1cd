"""Local file output, written once: atomic writes and progress lines.

Every file a stage declares as an output goes through :func:`atomic_write`: the bytes land in a hidden
temporary file in the destination folder, are flushed and ``fsync``-ed, then renamed over the destination, and
the folder entry is synced. A reader (DVC, the next stage, a user) sees the old file or the whole new one, never
half of one; an error or an interrupt at any point removes the temporary file and leaves the destination as it
was. Outputs get the ordinary ``0o644`` permissions (``mkstemp`` alone would leave them ``0o600``).

``flowlib.checkpoint`` keeps its own atomic writer because ``flowlib`` imports only torch and numpy.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Mapping

#: Permissions of every output file (umask still applies), as ``open()`` would create it.
FILE_MODE = 0o644


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some filesystems do not open folders; the rename itself is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _publish(tmp: str, path: Path) -> None:
    """Give the synced temporary file ``tmp`` the output permissions and rename it onto ``path``."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, FILE_MODE & ~umask)
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """``with atomic_write(path) as f: f.write(...)``: ``path`` appears whole on success, untouched on error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_write(path) as f:
        f.write(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode())


def write_json(path: str | os.PathLike, payload: Mapping | list, *, indent: int = 2) -> Path:
    """``payload`` as sorted, indented JSON with a final newline (NaN/inf allowed, as Python writes them)."""
    text = json.dumps(payload, indent=indent, sort_keys=True, allow_nan=True, default=_json_default)
    return write_text(path, text + "\n")


def _json_default(value: Any):
    if isinstance(value, Path):
        return str(value)
    try:  # numpy scalars and 0-d arrays
        return value.item()
    except AttributeError:
        raise TypeError(f"not JSON serialisable: {type(value).__name__}") from None


def write_with(path: str | os.PathLike, writer: Callable[[str], Any], suffix: str = "") -> Path:
    """Atomic output of a writer that wants a file *name* (``fig.savefig``, ``torch.save``, ``Image.save``).

    ``writer(tmp_name)`` writes a temporary file (``suffix`` keeps a format-by-extension writer happy), which is
    then synced and renamed onto ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix or ".tmp", dir=path.parent)
    os.close(fd)
    try:
        writer(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        _publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def copy_file(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy ``src`` to ``dst`` atomically."""
    with open(src, "rb") as source, atomic_write(dst) as f:
        shutil.copyfileobj(source, f, 1 << 20)
    return Path(dst)


def format_eta(seconds: float) -> str:
    """``h:mm:ss``."""
    seconds = max(0, int(seconds))
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Progress of a long loop on stderr: ``label: n/total what (rate/s, ETA h:mm:ss)``.

    ``every`` seconds at most between lines (0: a line per ``step``); ``done()`` prints the final line.
    """

    def __init__(self, label: str, total: int | None = None, *, unit: str = "", every: float = 0.0,
                 stream=None):
        self.label, self.total, self.unit, self.every = label, total, unit, every
        self.stream = stream
        self.n, self.start = 0, time.monotonic()
        self.last = self.start

    def step(self, k: int = 1, what: str = "") -> None:
        self.n += k
        now = time.monotonic()
        if self.every <= 0 or now - self.last >= self.every:
            self.last = now
            self._print(now, what)

    def done(self, what: str = "") -> None:
        self._print(time.monotonic(), what)

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self.start
        return self.n / elapsed if elapsed > 0 else 0.0

    def line(self, now: float | None = None, what: str = "") -> str:
        now = time.monotonic() if now is None else now
        elapsed = now - self.start
        rate = self.n / elapsed if elapsed > 0 else 0.0
        count = f"{self.n}/{self.total}" if self.total else str(self.n)
        eta = f", ETA {format_eta((self.total - self.n) / rate)}" if self.total and rate > 0 and self.total >= self.n else ""
        unit = f" {self.unit}" if self.unit else ""
        what = f" {what}" if what else ""
        return f"{self.label}: {count}{unit}{what} ({rate:.2f}/s{eta})"

    def _print(self, now: float, what: str = "") -> None:
        print(self.line(now, what), file=self.stream or sys.stderr, flush=True)
