"""`cnf score` on the real benchmarks: the rows that need no training must reproduce the papers' numbers.

- bicubic x2 on Set5: Winkler et al. 2019, Table 2 reports 33.7 dB / 0.930 (the SR literature: 33.66 / 0.9299).
- the second DRIVE observer: Winkler et al. 2019, Table 3 "Human" F = 0.791 (DRIU protocol: per-image P/R
  averaged, then F of the averages; the pooled-pixel variant gives 0.789 and the mean of per-image F 0.788).
"""
from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest

from pipelines.stages import cli
from pipelines.stages.score import match_key, predictions_by_key
from tests.conftest import shared_archive


def fetch(name: str, archive: str, out) -> str:
    source = shared_archive(archive)
    try:
        rc = cli.main(["fetch", name, "--source", str(source), "--out", str(out)])
    except ImportError as exc:  # the fetch stage is another engineer's, written concurrently
        pytest.skip(f"cnf fetch unavailable: {exc}")
    assert rc == 0
    return str(out)


@pytest.fixture(scope="module")
def set5(tmp_path_factory):
    return fetch("set5", "Set5.zip", tmp_path_factory.mktemp("set5") / "shards")


@pytest.fixture(scope="module")
def drive(tmp_path_factory):
    return fetch("drive", "DRIVE.zip", tmp_path_factory.mktemp("drive") / "shards")


def last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_bicubic_set5_reproduces_table2(set5, capsys, tmp_path):
    out = tmp_path / "bicubic.json"
    assert cli.main(["score", "sr", "--data", set5, "--split", "test", "--method", "bicubic", "--scale", "2",
                     "--out", str(out)]) == 0
    result = last_json(capsys)
    assert result["n"] == 5
    assert result["psnr"] == pytest.approx(33.66, abs=0.1)
    assert result["ssim"] == pytest.approx(0.930, abs=0.002)
    saved = json.loads(out.read_text())
    assert saved["dataset"] and len(saved["per_image"]["psnr"]) == 5


def test_second_observer_reproduces_human_row(drive, capsys):
    assert cli.main(["score", "vessel", "--data", drive, "--split", "test", "--method", "second_observer"]) == 0
    result = last_json(capsys)
    assert result["n"] == 20
    assert result["f1"] == pytest.approx(0.791, abs=0.001)


def test_pred_folder_of_gifs_matches_keys(drive, capsys, tmp_path):
    # The 2nd_manual GIFs as released (`01_manual2.gif`) scored as predictions made elsewhere.
    with zipfile.ZipFile(shared_archive("DRIVE.zip")) as z:
        for name in z.namelist():
            if "/2nd_manual/" in name and name.endswith(".gif"):
                (tmp_path / name.rsplit("/", 1)[-1]).write_bytes(z.read(name))
    assert cli.main(["score", "vessel", "--data", drive, "--split", "test", "--pred", str(tmp_path)]) == 0
    assert last_json(capsys)["f1"] == pytest.approx(0.791, abs=0.001)


def test_match_key_longest_leading_key():
    keys = ["01", "010", "baby", "01_test"]
    assert match_key("01_manual2", keys) == "01"
    assert match_key("010_x", keys) == "010"
    assert match_key("01_test_pred", keys) == "01_test"
    assert match_key("baby", keys) == "baby"
    assert match_key("babyx", keys) is None
    assert match_key("02", keys) is None


def test_missing_prediction_named(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "01.png")
    with pytest.raises(FileNotFoundError, match="'02'"):
        predictions_by_key(tmp_path, ["01", "02"])
