"""Checkpoints: atomic write, round trip to identical log-likelihoods, folder and MLflow-run sources."""
from __future__ import annotations

import os

import pytest
import torch

from flowlib.checkpoint import FORMAT, load_checkpoint, load_model, save_checkpoint
from flowlib.models import build_model
from randomize import randomize

TINY = {
    "cnf": dict(levels=1, steps=1, hidden=8, encoder_options={"blocks": 1, "growth": 4}, context_channels=4),
    "cglow": dict(levels=1, steps=1, hidden=8, cond_hidden=4),
    "factorized": dict(hidden=8, encoder_options={"blocks": 1, "growth": 4, "width": 4}, context_channels=4),
}


_perturb = randomize  # non-identity parameters: a round trip that dropped a zero-initialised layer would show


@pytest.mark.parametrize("family,target,extra", [
    ("cnf", "binary", {"dequantization": "binary"}),
    ("cglow", "categorical", {"num_classes": 3}),
    ("factorized", "image8", {"param_budget": 3000}),
])
def test_round_trip_gives_identical_log_likelihood(tmp_path, family, target, extra):
    y_shape = (1, 4, 4) if target != "image8" else (3, 4, 4)
    model = _perturb(build_model(family, target, y_shape, (3, 4, 4), **{**TINY[family], **extra})).eval()
    y = torch.randint(0, 2, (2, *y_shape)).float() if target != "image8" else torch.randint(0, 256, (2, 3, 4, 4)).float()
    x = torch.rand(2, 3, 4, 4)
    path = save_checkpoint(tmp_path / "sub" / "model.pt", model, step=7, experiment="demo")
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temporary left behind
    ckpt = load_checkpoint(path)
    assert ckpt["format"] == FORMAT and ckpt["step"] == 7 and ckpt["experiment"] == "demo"
    for source in (path, path.parent, str(path)):
        clone = load_model(source).eval()
        torch.manual_seed(0)
        a = model.log_likelihood(y, x)
        torch.manual_seed(0)
        b = clone.log_likelihood(y, x)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.manual_seed(1)
        sa = model.sample(x, 0.8)
        torch.manual_seed(1)
        torch.testing.assert_close(sa, clone.sample(x, 0.8), rtol=0, atol=0)


def test_failed_write_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    model = build_model("factorized", "binary", (1, 4, 4), (3, 4, 4), **TINY["factorized"])
    path = save_checkpoint(tmp_path / "model.pt", model, step=1)

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, step=2)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert sorted(os.listdir(tmp_path)) == ["model.pt"]


def test_bad_sources_name_what_was_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.pt"):
        load_model(tmp_path)
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a flowlib/1 checkpoint"):
        load_model(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match="runs:/"):
        load_model(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="config"):
        save_checkpoint(tmp_path / "x.pt", torch.nn.Linear(2, 2))


def test_a_damaged_checkpoint_names_the_file_and_what_was_expected(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"not a torch file at all")
    with pytest.raises(ValueError, match=rf"load_model: {path} is not a readable flowlib/1 checkpoint"):
        load_model(path)
    torch.manual_seed(0)
    model = build_model("cnf", "binary", (1, 8, 8), (3, 8, 8), levels=1, steps=1, hidden=4, encoder="vgg",
                        encoder_options={"width": 2})
    save_checkpoint(path, model)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])  # truncated, e.g. by a full disk outside save_checkpoint
    with pytest.raises(ValueError, match=rf"load_model: {path} is not a readable .*truncated or overwritten"):
        load_model(path)
    save_checkpoint(path, model)
    ckpt = load_checkpoint(path)
    ckpt["state_dict"] = {k: v[..., :1] if v.ndim else v for k, v in ckpt["state_dict"].items()}
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match=rf"load_model: {path}: cannot rebuild the model it holds"):
        load_model(path)


def test_load_from_an_mlflow_run(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    model = _perturb(build_model("cnf", "continuous", (1, 4, 4), (3, 4, 4), **TINY["cnf"])).eval()
    ckpt = save_checkpoint(tmp_path / "ckpt" / "model.pt", model)
    mlflow.set_experiment("flowlib-checkpoint-test")
    with mlflow.start_run() as run:
        mlflow.log_artifact(str(ckpt), artifact_path="checkpoint")
    y, x = torch.randn(2, 1, 4, 4), torch.rand(2, 3, 4, 4)
    expected = model.log_likelihood(y, x)
    for source in (f"runs:/{run.info.run_id}", run.info.run_id):
        torch.testing.assert_close(load_model(source).eval().log_likelihood(y, x), expected, rtol=0, atol=0)
