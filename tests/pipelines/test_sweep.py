"""`cnf sweep` (pipelines/stages/sweep.py over pipelines/evaluation/sweep.py) on a tiny model and demo DRIVE."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from pipelines.stages import cli


@pytest.fixture(scope="module")
def drive(tmp_path_factory):
    from pipelines.stages import fetch

    root = tmp_path_factory.mktemp("data")
    fetch.fetch("drive", "demo", str(root / "drive"))
    return root


def test_temperature_grid_draws_every_cell_with_the_task(drive):
    from flowlib.models import build_model
    from pipelines.data.loader import make_loader
    from pipelines.evaluation.sweep import temperature_grid

    batch = next(iter(make_loader(str(drive / "drive"), "test", "vessel", 2, train=False, pad_multiple=4)))
    torch.manual_seed(0)
    model = build_model("factorized", "binary", tuple(batch["y"].shape[1:]), tuple(batch["x"].shape[1:]))
    rows = temperature_grid(model, batch, [0.0, 1.0], "vessel", seed=3)
    assert len(rows) == 2 and set(rows[0]) == {"input", "T=0", "T=1", "truth"}
    for row in rows:
        for image in row.values():
            assert image.shape == (64, 64, 3) and image.min() >= 0 and image.max() <= 1
    np.testing.assert_array_equal(rows[0]["truth"][..., 0], batch["y"][0, 0].numpy())
    again = temperature_grid(model, batch, [1.0], "vessel", seed=3)
    np.testing.assert_array_equal(again[0]["T=1"], rows[0]["T=1"])  # the same noise for the same seed


def test_sample_grid_refuses_undrawn_images(tmp_path):
    from pipelines.reporting import figures

    with pytest.raises(ValueError, match=r"expected \(H, W, 3\) images"):
        figures.sample_grid([{"y": np.zeros((1, 8, 8))}], ["y"], tmp_path / "grid.png")
    with pytest.raises(ValueError, match="outside"):
        figures.sample_grid([{"y": np.full((8, 8, 3), 255.0)}], ["y"], tmp_path / "grid.png")


def test_cnf_sweep_writes_metrics_per_temperature_and_figures(drive, tmp_path):
    from flowlib.checkpoint import save_checkpoint
    from flowlib.models import build_model
    from pipelines.data.loader import make_loader

    params = {"profile": "demo", "datasets": {"drive": {"source": "demo"}},
              "experiments": {"drive_factored": {"paper": "winkler2019", "table": ["winkler_table3"], "task": "vessel",
                                                 "data": {"dataset": "drive", "patch": 32, "pad_multiple": 4},
                                                 "model": {"family": "factorized"},
                                                 "eval": {"n_samples": 2, "batch_size": 2},
                                                 "sweep": {"temperatures": [0.0, 1.0]}}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    b = next(iter(make_loader(str(drive / "drive"), "test", "vessel", 2, train=False, pad_multiple=4)))
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "model.pt",
                    build_model("factorized", "binary", tuple(b["y"].shape[1:]), tuple(b["x"].shape[1:])))
    out = tmp_path / "sweep.json"
    assert cli.main(["sweep", "drive_factored", "--params", str(tmp_path / "params.yaml"), "--model",
                     str(tmp_path / "model.pt"), "--data", str(drive), "--out", str(out), "--figures",
                     str(tmp_path / "figs"), "--train-metrics", str(tmp_path / "none.json")]) == 0
    result = json.loads(out.read_text())
    assert result["temperatures"] == [0.0, 1.0] and set(result["results"]) == {"0", "1"}
    for metrics in result["results"].values():
        assert metrics["n"] == 2 and 0.0 <= metrics["f1"] <= 1.0 and metrics["bpd"] > 0
    assert result["grid_keys"] == ["01", "02"]
    assert {p.rsplit("/", 1)[-1] for p in result["figures"]} == {"drive_factored_temperature_grid.png",
                                                                  "drive_factored_temperature_metrics.png"}
    assert all((tmp_path / "figs" / p.rsplit("/", 1)[-1]).stat().st_size > 0 for p in result["figures"])
