"""pipelines/data/fetching.py: a failed or killed fetch keeps the old dataset, one fetch per DEST at a time,
re-fetches compare content, and what killed fetches leave behind is removed by the next one."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.data import fetching, shards, storage
from tests.conftest import ROOT, shared_archive


@pytest.fixture(params=["local", "s3"])
def dest(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "shards" / "drive")
    bucket = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/shards/drive"


def _drive_without_fov_mask(root: Path) -> Path:
    """One DRIVE training pair in the release layout whose FOV mask is missing."""
    base = root / "DRIVE" / "training"
    for sub in ("images", "1st_manual", "mask"):
        (base / sub).mkdir(parents=True)
    Image.fromarray(np.zeros((12, 10, 3), np.uint8)).save(base / "images" / "21_training.tif")
    Image.fromarray((np.eye(12, 10) * 255).astype(np.uint8)).save(base / "1st_manual" / "21_manual1.gif")
    return root


def _everything(dest: str) -> dict[str, bytes]:
    return {name: storage.get_bytes(storage.join(dest, name))
            for name in storage.list_sizes(dest, recursive=True) if name != ".lock"}


def test_a_failed_refetch_keeps_the_good_dataset(dest, tmp_path):
    good = fetching.fetch("drive", "demo", dest)
    before = _everything(dest)
    with pytest.raises(Exception, match="FOV mask 21"):
        fetching.fetch("drive", str(_drive_without_fov_mask(tmp_path / "release")), dest)
    assert _everything(dest) == before  # not one byte changed, nothing added
    assert shards.validate(dest, decode=True) == good
    assert [s["__key__"] for s in shards.iter_samples(dest, "test")] == ["01", "02"]
    if not storage.is_s3(dest):
        assert sorted(p.name for p in Path(dest).parent.iterdir()) == [".drive.lock", "drive"]


def _cnf_fetch(dest: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipelines.stages.cli", "fetch", "drive", "--source", "demo",
                             "--out", dest, "--shard-size", "2"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_two_fetches_into_one_dest_take_turns(dest):
    # Hold DEST's lock here so that both fetches are certainly running, and waiting, at the same time.
    with storage.lock(dest):
        procs = [_cnf_fetch(dest), _cnf_fetch(dest)]
        first_lines = [p.stderr.readline() for p in procs]  # each blocks until that fetch says it waits
        for line in first_lines:
            assert f"{dest}: waiting for the writer that holds" in line and f"pid {os.getpid()}" in line
        assert [p.poll() for p in procs] == [None, None]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert sum("is up to date" in err for _, err in results) == 1  # the second found the first's work
    manifest = shards.validate(dest, decode=True)
    assert {s: v["count"] for s, v in manifest["splits"].items()} == {"train": 4, "test": 2}
    # And without the head start: two fetches started together still leave one complete dataset.
    procs = [_cnf_fetch(dest + "2"), _cnf_fetch(dest + "2")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    assert shards.validate(dest + "2", decode=True)["splits"] == manifest["splits"]  # same shards, same bytes


def test_a_refetch_over_a_truncated_or_edited_shard_rebuilds_it(dest, capsys):
    manifest = fetching.fetch("drive", "demo", dest, shard_size=2)
    uri = shards.shard_uris(dest, "train")[1][0]
    good = storage.get_bytes(uri)
    storage.put_bytes(good[:-1024], uri)
    capsys.readouterr()
    rebuilt = fetching.fetch("drive", "demo", dest, shard_size=2)
    err = capsys.readouterr().err
    assert f"{uri}: {len(good) - 1024} bytes" in err and "rebuilding" in err and "up to date" not in err
    assert shards.validate(dest)["splits"] == rebuilt["splits"]
    assert [s["sha256"] for s in rebuilt["splits"]["train"]["shards"]] == [
        s["sha256"] for s in manifest["splits"]["train"]["shards"]]  # the same bytes as before the damage
    uri = shards.shard_uris(dest, "test")[0][0]
    edited = bytearray(storage.get_bytes(uri))
    edited[700] ^= 0xFF  # same size: only the sha256 sees it
    storage.put_bytes(bytes(edited), uri)
    fetching.fetch("drive", "demo", dest, shard_size=2)
    assert f"{uri}: sha256" in capsys.readouterr().err
    shards.validate(dest)
    fetching.fetch("drive", "demo", dest, shard_size=2)
    assert "is up to date" in capsys.readouterr().err


def test_a_refetch_records_the_sizes_an_old_manifest_lacks(tmp_path, capsys):
    import json

    dest = tmp_path / "drive"
    manifest = fetching.fetch("drive", "demo", str(dest))
    old = json.loads((dest / "manifest.json").read_text())
    old["format"] = "cnf-shards/1"
    for split in old["splits"].values():
        for shard in split["shards"]:
            del shard["size"]
    (dest / "manifest.json").write_text(json.dumps(old))
    shard_times = {p.name: p.stat().st_mtime_ns for p in dest.glob("*.tar")}
    assert fetching.fetch("drive", "demo", str(dest)) == manifest
    assert "recorded shard sizes (cnf-shards/2)" in capsys.readouterr().err
    assert shards.read_manifest(str(dest)) == manifest
    assert {p.name: p.stat().st_mtime_ns for p in dest.glob("*.tar")} == shard_times  # not rebuilt


_STALLED_FETCH = """
import sys, time
from pipelines.data import fetching, shards

write = shards.write_dataset

def stalled(dest, dataset, splits, **kw):
    def stall(samples):
        for i, sample in enumerate(samples):
            yield sample
            if i == 2:  # one shard of two written, the next one open
                print("stalled", flush=True)
                time.sleep(600)
    return write(dest, dataset, {k: stall(v) for k, v in splits.items()}, **kw)

shards.write_dataset = stalled
fetching.fetch("set5", sys.argv[1], sys.argv[2], shard_size=2)
"""


def test_what_a_killed_fetch_leaves_is_removed_by_the_next(tmp_path, monkeypatch):
    with zipfile.ZipFile(shared_archive("Set5.zip")) as archive:
        archive.extractall(tmp_path / "unzipped")
    source = tmp_path / "unzipped"
    dest = tmp_path / "shards" / "set5"
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    old = fetching.fetch("drive", "demo", str(dest))  # something to keep: another dataset at DEST
    child = subprocess.Popen([sys.executable, "-c", _STALLED_FETCH, str(source), str(dest)], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                             env={**os.environ, "TMPDIR": str(scratch)})
    assert child.stdout.readline() == "stalled\n"
    child.send_signal(signal.SIGKILL)  # no handler runs: whatever it wrote stays
    child.wait(timeout=30)
    sides = list(dest.parent.glob(".set5.new-*"))
    assert len(sides) == 1 and (sides[0] / "test-000000.tar").is_file()
    assert any(p.name.endswith(".tmp") for p in sides[0].iterdir())  # the shard being written
    assert [p.name.split("@")[0] for p in scratch.iterdir()] == [f"cnf-fetch-{child.pid}"]
    assert shards.validate(str(dest)) == old  # the old dataset is untouched by the kill
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    manifest = fetching.fetch("set5", str(source), str(dest))
    assert manifest["splits"]["test"]["count"] == 5 and shards.validate(str(dest)) == manifest
    assert sorted(p.name for p in dest.parent.iterdir()) == [".set5.lock", "set5"]
    assert list(scratch.iterdir()) == []


def test_a_folder_source_stands_for_the_archives_the_registry_names(tmp_path):
    """sr_train from a folder of releases: only T91.zip and BSDS500.zip are checked, hashed and unpacked."""
    import zipfile

    from pipelines.data import fetching
    from pipelines.data.datasets import get_dataset

    spec = get_dataset("sr_train")
    folder = tmp_path / "releases"
    folder.mkdir()
    with zipfile.ZipFile(folder / "T91.zip", "w") as z:
        z.writestr("T91/t1.bmp", b"not the release")
    with pytest.raises(fetching.FetchError, match="T91.zip"):
        fetching._source_sha256(folder, spec, verify=True)
    unverified = fetching._source_sha256(folder, spec, verify=False)
    (folder / "unrelated.zip").write_bytes(b"another release")
    assert fetching._source_sha256(folder, spec, verify=False) == unverified
    root = fetching._unpack(folder, tmp_path / "unpacked", spec)
    assert sorted(p.name for p in root.iterdir()) == ["T91"]
