"""pipelines/data/storage.py on a local folder and on a real loopback S3 server (moto)."""
from __future__ import annotations

import os

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

    from pipelines.stages import fetch

    dest = f"s3://{s3_bucket}/drive"
    fetch.fetch("drive", "demo", dest)
    storage.register_webdataset_s3()
    urls = [storage.join(dest, "train-000000.tar")]
    keys = [s["__key__"] for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False)]
    assert keys == ["21", "22", "23", "24"]
