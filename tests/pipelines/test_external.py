"""Reading prediction files for `cnf score` (pipelines/evaluation/external.py, ``VesselSegmentation.read_prediction``).

A binary vessel mask is binary whatever its two values ({0, 1}, {0, 255}, bool): every encoding of the same masks
scores the same F. Soft maps keep their documented meaning (8-bit probability maps / 255, floats in [0, 1] as
they are). A map that fits no encoding is refused, naming the file, instead of being rescaled by a guess (a 0/1
mask taken for an 8-bit map scores as if every pixel were a vessel: F = 0.226 on DRIVE).
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from pipelines.evaluation.external import score_predictions
from pipelines.stages import cli


@pytest.fixture(scope="module")
def drive(tmp_path_factory):
    from pipelines.stages import fetch

    out = tmp_path_factory.mktemp("demo") / "drive"
    fetch.fetch("drive", "demo", str(out))
    return str(out)


@pytest.fixture(scope="module")
def masks(drive):
    """A noisy binary prediction per test sample (10% of pixels flipped), as bool (H, W)."""
    from pipelines.data import shards

    rng = np.random.default_rng(0)
    out = {}
    for s in shards.iter_samples(drive, "test"):
        target = np.asarray(s["target.png"]) > 0
        out[s["__key__"]] = target ^ (rng.random(target.shape) < 0.1)
    return out


def save(folder, name, array):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    if name.endswith(".npy"):
        np.save(folder / name, array)
    else:
        Image.fromarray(array).save(folder / name)
    return folder / name


def score(drive, folder):
    return score_predictions("vessel", drive, "test", pred=str(folder))


def test_binary_masks_score_the_same_in_every_encoding(drive, masks, tmp_path, capsys):
    from PIL import Image

    encodings = {  # name: (file suffix, encode)
        "uint8_01": (".png", lambda m: m.astype(np.uint8)),
        "uint8_0255": (".png", lambda m: (m * 255).astype(np.uint8)),
        "bool": (".png", lambda m: m),  # PIL writes a 1-bit PNG
        "uint16_01": (".png", lambda m: m.astype(np.uint16)),
        "float_01": (".npy", lambda m: m.astype(np.float32)),
        "float_0255": (".npy", lambda m: m.astype(np.float64) * 255),
    }
    results = {}
    for name, (suffix, encode) in encodings.items():
        for key, m in masks.items():
            save(tmp_path / name, f"{key}_manual{suffix}", encode(m))
        results[name] = score(drive, tmp_path / name)
    (tmp_path / "gif").mkdir()
    for key, m in masks.items():  # 0/1 palette indices, as annotation tools write GIFs
        Image.fromarray(m.astype(np.uint8)).convert("P").save(tmp_path / "gif" / f"{key}.gif")
    results["gif_01"] = score(drive, tmp_path / "gif")
    reference = results["uint8_0255"]
    for name, result in results.items():
        for metric in ("f1", "precision", "recall", "per_image"):
            assert result[metric] == reference[metric], (name, metric)
    # Better than calling every pixel a vessel, which is what a 0/1 mask read as an 8-bit map amounts to.
    everything = {k: np.ones_like(m) for k, m in masks.items()}
    for key, m in everything.items():
        save(tmp_path / "all", f"{key}.png", (m * 255).astype(np.uint8))
    assert reference["f1"] > score(drive, tmp_path / "all")["f1"] + 0.2

    # The CLI prints the same F for both encodings.
    printed = []
    for name in ("uint8_01", "uint8_0255"):
        assert cli.main(["score", "vessel", "--data", drive, "--split", "test", "--pred", str(tmp_path / name)]) == 0
        printed.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["f1"])
    assert printed[0] == printed[1] == reference["f1"]


def test_soft_maps_keep_their_documented_scale(drive, masks, tmp_path):
    rng = np.random.default_rng(1)
    for key, m in masks.items():
        soft = np.clip(0.5 * m + rng.uniform(0, 0.5, m.shape), 0, 1)
        eight_bit = np.rint(soft * 255).astype(np.uint8)
        save(tmp_path / "png", f"{key}.png", eight_bit)  # 8-bit probability map: / 255
        save(tmp_path / "npy", f"{key}.npy", eight_bit.astype(np.float64) / 255)  # probabilities as they are
    png, npy = score(drive, tmp_path / "png"), score(drive, tmp_path / "npy")
    assert png["f1"] == pytest.approx(npy["f1"], abs=1e-12) and png["threshold"] == pytest.approx(npy["threshold"])
    assert 0 < png["threshold"] < 1  # a soft map: the best threshold lies inside (0, 1)


@pytest.mark.parametrize("name, array, expected", [
    ("01.png", np.array([[0, 1], [2, 1]], np.uint8), r"integer values 0\.\.2 \(3 distinct\) are neither a binary"),
    ("01.npy", np.array([[0.0, 0.5], [3.0, 1.0]]), r"float values 0\.\.3 \(4 distinct\) lie outside \[0, 1\]"),
    ("01.npy", np.array([[0.0, np.nan], [1.0, 1.0]]), r"non-finite values"),
    ("01.npy", np.array([[0, -1], [1, 1]], np.int16), r"values -1\.\.1 include negatives"),
    ("01.png", np.array([[0, 300], [70, 1]], np.uint16), r"integer values 0\.\.300 \(4 distinct\) are neither"),
])
def test_a_map_that_fits_no_encoding_is_refused_naming_the_file(drive, masks, tmp_path, name, array, expected):
    h, w = masks["01"].shape
    tiled = np.tile(array, (h // 2 + 1, w // 2 + 1))[:h, :w]
    bad = save(tmp_path / "pred", name, tiled)
    save(tmp_path / "pred", "02.png", (masks["02"] * 255).astype(np.uint8))
    with pytest.raises(ValueError, match=expected) as err:
        score(drive, tmp_path / "pred")
    message = str(err.value)
    assert f"prediction {bad} (sample '01'" in message, message
    assert "expected a binary mask (two values: {0, 1}, {0, 255}, bool or {0, M}), an 8-bit probability map" in message
