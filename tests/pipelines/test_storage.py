"""pipelines/data/storage.py on a local folder and on a real loopback S3 server (moto)."""
from __future__ import annotations

import os
import socket

import pytest

from pipelines.data import storage


def _roundtrip(base: str, tmp_path) -> None:
    uri = storage.join(base, "sub", "a.bin")
    assert not storage.exists(uri)
    storage.put_bytes(b"hello", uri)
    assert storage.exists(uri) and storage.get_bytes(uri) == b"hello"
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 1000)
    storage.put_file(src, storage.join(base, "sub", "b.bin"))
    assert storage.listdir(storage.join(base, "sub")) == ["a.bin", "b.bin"]
    with storage.open_read(storage.join(base, "sub", "b.bin")) as f:
        assert f.read() == b"x" * 1000
    got = storage.get_file(storage.join(base, "sub", "b.bin"), tmp_path / "back.bin")
    assert got.read_bytes() == b"x" * 1000
    storage.delete(uri)
    storage.delete(uri)  # deleting twice is fine
    assert not storage.exists(uri)
    assert storage.listdir(storage.join(base, "sub")) == ["b.bin"]


def test_local_roundtrip_and_no_temp_files_left(tmp_path):
    _roundtrip(str(tmp_path / "store"), tmp_path)
    assert sorted(os.listdir(tmp_path / "store" / "sub")) == ["b.bin"]
    assert storage.local_path(f"file://{tmp_path}/store") == tmp_path / "store"


def test_s3_roundtrip(s3_bucket, tmp_path):
    _roundtrip(f"s3://{s3_bucket}/prefix", tmp_path)


def test_s3_multipart_upload_and_download(s3_bucket, tmp_path, monkeypatch):
    monkeypatch.setattr(storage, "MULTIPART_THRESHOLD", 5 * 1024 * 1024)
    monkeypatch.setattr(storage, "MULTIPART_CHUNKSIZE", 5 * 1024 * 1024)
    data = os.urandom(11 * 1024 * 1024)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    uri = f"s3://{s3_bucket}/big.bin"
    storage.put_file(src, uri)
    head = storage.s3_client().head_object(Bucket=s3_bucket, Key="big.bin")
    assert head["ETag"].strip('"').endswith("-3")  # three parts: multipart really happened
    assert storage.get_file(uri, tmp_path / "back.bin").read_bytes() == data


def test_s3_errors_name_the_uri(s3_server):
    with pytest.raises(storage.StorageError, match="s3://no-such-bucket-xyz/key"):
        storage.get_bytes("s3://no-such-bucket-xyz/key")
    with pytest.raises(storage.StorageError, match="bucket"):
        storage.split_s3("s3:///nobucket")


def test_webdataset_reads_s3_shards_through_boto3(s3_bucket):
    import webdataset as wds

    from pipelines.data import fetching, shards

    dest = f"s3://{s3_bucket}/drive"
    fetching.fetch("drive", "demo", dest)
    storage.register_webdataset_s3()
    urls = [uri for uri, _ in shards.shard_uris(dest, "train")]
    keys = [s["__key__"] for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False)]
    assert keys == ["21", "22", "23", "24"]


def test_list_sizes_and_delete_many(tmp_path, s3_bucket):
    for base in (str(tmp_path / "store"), f"s3://{s3_bucket}/store"):
        storage.put_bytes(b"abc", storage.join(base, "a.bin"))
        storage.put_bytes(b"", storage.join(base, "empty.bin"))
        storage.put_bytes(b"12345", storage.join(base, "sub", "b.bin"))
        assert storage.list_sizes(base) == {"a.bin": 3, "empty.bin": 0}
        assert storage.list_sizes(base, recursive=True) == {"a.bin": 3, "empty.bin": 0, "sub/b.bin": 5}
        assert storage.sha256_uri(storage.join(base, "a.bin")) == storage.sha256_file(_local(tmp_path, b"abc"))
        storage.delete_many([storage.join(base, "a.bin"), storage.join(base, "sub", "b.bin"),
                             storage.join(base, "never-there")])
        assert storage.list_sizes(base, recursive=True) == {"empty.bin": 0}
    assert storage.list_sizes(str(tmp_path / "absent")) == {}


def _local(tmp_path, data: bytes):
    path = tmp_path / "ref.bin"
    path.write_bytes(data)
    return path


_HOLD = """
import sys, time
from pipelines.data import storage
print("asking", flush=True)
with storage.lock(sys.argv[1], poll=0.1):
    print("got", flush=True)
"""


def test_local_lock_makes_a_second_writer_wait_and_names_the_holder(tmp_path):
    import subprocess
    import sys

    dest = str(tmp_path / "data" / "drive")
    with storage.lock(dest):
        assert (tmp_path / "data" / ".drive.lock").read_text() == f"pid {os.getpid()} on {socket.gethostname()}\n"
        with storage.lock(dest):  # re-entrant in one thread: write_dataset inside fetch
            pass
        child = subprocess.Popen([sys.executable, "-c", _HOLD, dest], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        assert child.stdout.readline() == "asking\n"
        line = child.stderr.readline()  # blocks until the child reports that it waits
        assert f"{dest}: waiting for the writer that holds" in line and f"pid {os.getpid()}" in line
        assert child.poll() is None  # still waiting while we hold it
    out, _ = child.communicate(timeout=30)
    assert child.returncode == 0 and out == "got\n"
    assert not (tmp_path / "data" / "drive").exists()  # the lock lives beside the folder, not in it


def test_s3_lock_waits_takes_over_a_dead_holder_and_refuses_another_host(s3_bucket):
    import json
    import subprocess
    import sys
    import threading
    import time

    dest = f"s3://{s3_bucket}/shards/drive"
    lock = storage.lock_uri(dest)
    assert lock == f"{dest}/.lock"
    with storage.lock(dest):
        holder = json.loads(storage.get_bytes(lock))
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        events = []
        waiter = threading.Thread(target=lambda: (storage.lock(dest, poll=0.05).__enter__(), events.append("got")))
        waiter.start()
        time.sleep(0.5)
        assert events == []  # another thread waits while we hold it
    waiter.join(timeout=10)
    assert events == ["got"]
    storage.delete(lock)  # the thread never left its block; drop its lock by hand

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    storage.put_bytes(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout), "since": "x"}).encode(), lock)
    with storage.lock(dest):  # a dead holder on this host: taken over
        assert json.loads(storage.get_bytes(lock))["pid"] == os.getpid()
    assert not storage.exists(lock)  # released

    storage.put_bytes(json.dumps({"host": "elsewhere-7", "pid": 4242, "since": "2024-01-01T00:00:00Z"}).encode(),
                      lock)
    with pytest.raises(storage.LockError, match=r"pid 4242 on elsewhere-7 since 2024-01-01.*delete .*/\.lock"):
        with storage.lock(dest):
            pass
    assert json.loads(storage.get_bytes(lock))["host"] == "elsewhere-7"  # someone else's lock is left alone


def test_replace_folder_swaps_whole_folders(tmp_path, monkeypatch):
    for exchange in (True, False):
        dest, new = tmp_path / f"dest{exchange}", tmp_path / f"new{exchange}"
        new.mkdir()
        (new / "n.txt").write_text("new")
        storage.replace_folder(new, dest)  # no old folder: a plain rename
        assert (dest / "n.txt").read_text() == "new" and not new.exists()
        new.mkdir()
        (new / "n.txt").write_text("newer")
        if not exchange:  # a C library or filesystem without renameat2(RENAME_EXCHANGE)
            monkeypatch.setattr(storage, "_exchange", lambda a, b: False)
        storage.replace_folder(new, dest)
        assert (dest / "n.txt").read_text() == "newer" and (new / "n.txt").read_text() == "new"


def test_scratch_dirs_of_dead_processes_are_found_and_removed(tmp_path):
    import subprocess
    import sys

    with storage.scratch_dir("cnf-x-", tmp_path) as live:
        assert live.name.startswith(f"cnf-x-{os.getpid()}@{socket.gethostname()}-")
        (live / "f").write_bytes(b"")
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True)
        stale = tmp_path / f"cnf-x-{int(dead.stdout)}@{socket.gethostname()}-abc123_x"
        stale.mkdir()
        (stale / "zero.tar").write_bytes(b"")
        other_host = tmp_path / f"cnf-x-{int(dead.stdout)}@another-host-abc123_x"
        other_host.mkdir()
        assert storage.stale_scratch("cnf-x-", tmp_path) == [stale]
        assert storage.remove_stale_scratch("cnf-x-", tmp_path) == [stale]
        assert live.exists() and other_host.exists() and not stale.exists()
    assert not live.exists()  # removed at the end of its block
    with pytest.raises(RuntimeError):
        with storage.scratch_dir("cnf-x-", tmp_path) as failing:
            raise RuntimeError("boom")
    assert not failing.exists()
