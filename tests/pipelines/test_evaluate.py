"""`cnf evaluate` on tiny real models over the embedded demo shards, tracked in a temporary MLflow store."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from pipelines.stages import cli
from pipelines import tracking
from pipelines.evaluation.split import evaluate_split
from pipelines.tasks import get_task


def fetch_demo(name: str, root) -> str:
    out = root / name
    try:
        assert cli.main(["fetch", name, "--source", "demo", "--out", str(out)]) == 0
    except ImportError as exc:  # another engineer's stage, written concurrently
        pytest.skip(f"cnf fetch unavailable: {exc}")
    return str(out)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    for name in ("drive", "horses", "lfw_parts"):
        fetch_demo(name, root)
    return root


def loader(root, dataset, task, **kw):
    from pipelines.data.loader import make_loader

    return make_loader(str(root / dataset), "test", task, batch_size=2, train=False, pad_multiple=4, **kw)


class Oracle(torch.nn.Module):
    """A test double that knows the answers: predictions equal the targets it was shown."""

    def __init__(self, batches):
        super().__init__()
        self.answers = {b["x"].numpy().tobytes(): b["y"] for b in batches}

    def _y(self, x):
        return self.answers[x.numpy().tobytes()]

    def log_likelihood(self, y, x):
        return torch.full((y.shape[0],), -float(y[0].numel()) * np.log(2.0))  # 1 bit per dimension

    def num_dims(self, y):
        return int(y[0].numel())

    def sample(self, x, temperature=1.0):
        return self._y(x)

    def predict(self, x, n_samples=1, temperature=1.0):
        y = self._y(x)
        return {"mean": y, "prediction": y, "std": torch.zeros_like(y)}


def test_protocol_scores_a_perfect_model_perfectly(data_root):
    batches = list(loader(data_root, "drive", "vessel"))
    out = evaluate_split(Oracle(batches), batches, get_task("vessel"), n_samples=2, temperature=1.0)
    assert out["f1"] == pytest.approx(1.0) and out["bpd"] == pytest.approx(1.0)
    assert out["samples_pr"]["precision"] == [1.0] * (2 * out["n"])
    batches = list(loader(data_root, "horses", "horses", size=16))
    assert evaluate_split(Oracle(batches), batches, get_task("horses"), n_samples=1, temperature=1.0)["iou"] == 1.0
    batches = list(loader(data_root, "lfw_parts", "parts", size=16))
    out = evaluate_split(Oracle(batches), batches, get_task("parts"), n_samples=1, temperature=1.0)
    assert out["spa"] == 1.0 and out["superpixels"] == "shards"


class Overflowing(Oracle):
    """The oracle, but ``lost`` of each image's draws overflowed (``draws`` of flowlib's ``predict``)."""

    def __init__(self, batches, lost):
        super().__init__(batches)
        self.lost = lost

    def predict(self, x, n_samples=1, temperature=1.0):
        return {**super().predict(x, n_samples, temperature),
                "draws": torch.full((x.shape[0],), n_samples - self.lost, dtype=torch.long)}


def test_overflowed_draws_are_counted_and_an_image_without_any_fails_naming_it(data_root):
    batches = list(loader(data_root, "horses", "horses", size=16))
    n = sum(len(b["key"]) for b in batches)
    out = evaluate_split(Overflowing(batches, 1), batches, get_task("horses"), n_samples=3, temperature=1.0)
    assert out["iou"] == 1.0 and out["nonfinite_draws"] == n
    assert evaluate_split(Oracle(batches), batches, get_task("horses"), n_samples=3,
                          temperature=1.0)["nonfinite_draws"] == 0
    with pytest.raises(FloatingPointError, match=rf"every one of the 3 draws .*{batches[0]['key'][0]}"):
        evaluate_split(Overflowing(batches, 3), batches, get_task("horses"), n_samples=3, temperature=1.0)


@pytest.mark.parametrize("family,options", [
    ("cglow", {"levels": 1, "steps": 1, "hidden": 8, "cond_hidden": 4}),
])
def test_real_tiny_models_on_segmentation(data_root, family, options):
    from flowlib.models import build_model

    torch.manual_seed(0)
    batches = list(loader(data_root, "horses", "horses", size=16))
    b = batches[0]
    model = build_model(family, "binary", tuple(b["y"].shape[1:]), tuple(b["x"].shape[1:]), **options)
    out = evaluate_split(model, batches, get_task("horses"), n_samples=2, temperature=1.0)
    assert 0.0 <= out["iou"] <= 1.0 and np.isfinite(out["bpd"]) and out["bpd"] > 0
    assert out["n"] == sum(len(b["key"]) for b in batches)


def test_cnf_evaluate_drive_writes_metrics_info_plots_and_tracks(data_root, tmp_path, monkeypatch, capsys):
    checkpoint = pytest.importorskip("flowlib.checkpoint")
    from flowlib.models import build_model

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    model_opts = {"levels": 2, "steps": 1, "hidden": 8, "encoder": "vgg", "coupling": "additive",
                  "dequantization": "binary"}
    params = {"profile": "demo", "datasets": {"drive": {"source": "demo"}},
              "experiments": {"drive_cnf": {"paper": "winkler2019", "table": ["winkler_table3"], "task": "vessel",
                                            "data": {"dataset": "drive", "patch": 32, "pad_multiple": 4},
                                            "model": {"family": "cnf", **model_opts},
                                            "eval": {"n_samples": 2, "batch_size": 2}}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    b = next(iter(loader(data_root, "drive", "vessel")))
    torch.manual_seed(0)
    model = build_model("cnf", "binary", tuple(b["y"].shape[1:]), tuple(b["x"].shape[1:]), **model_opts)
    with torch.no_grad():
        model.nll(b["y"], b["x"])  # data-dependent initialisation, as training does
    checkpoint.save_checkpoint(tmp_path / "model.pt", model)
    run_id = tracking.open_run(tracking.experiment_name("winkler2019"), "drive_cnf")
    (tmp_path / "train.json").write_text(json.dumps({"mlflow_run_id": run_id}))

    outs = lambda tag: ["--out", str(tmp_path / f"{tag}.json"), "--info-out", str(tmp_path / f"{tag}_info.json"),  # noqa: E731
                        "--plots-out", str(tmp_path / f"{tag}_pr.json")]
    args = ["evaluate", "drive_cnf", "--params", str(tmp_path / "params.yaml"), "--model", str(tmp_path / "model.pt"),
            "--data", str(data_root), "--train-info", str(tmp_path / "train.json")]
    assert cli.main(args + outs("eval")) == 0
    metrics = json.loads((tmp_path / "eval.json").read_text())
    info = json.loads((tmp_path / "eval_info.json").read_text())
    test, test_info = metrics["test"], info["splits"]["test"]
    assert set(metrics) == {"test"} and set(test) == {"bpd", "f1", "precision", "recall"}  # numbers only
    assert info["mlflow_run_id"] == run_id and info["profile"] == "demo" and info["tables"] == ["winkler_table3"]
    assert info["temperature"] == 1.0 and "temperature_selection" not in info and "checkpoint" not in info  # tmp: outside
    assert 0.0 < test["f1"] <= 1.0 and test["bpd"] > 0 and test_info["n"] == 2
    assert len(test_info["curve"]["precision"]) == len(test_info["curve"]["thresholds"]) > 1
    assert len(test_info["samples_pr"]["recall"]) == test_info["n"] * 2  # min(SCATTER_SAMPLES, n_samples) per image
    pr = json.loads((tmp_path / "eval_pr.json").read_text())
    assert [r["threshold"] for r in pr] == test_info["curve"]["thresholds"] and {r["split"] for r in pr} == {"test"}
    assert max(r["f1"] for r in pr) == pytest.approx(test["f1"])

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking.tracking_uri())
    stage_run = client.get_run(run_id).data.tags["cnf.evaluate_run_id"]  # nested under the training run
    assert client.get_run(stage_run).data.metrics["eval.test.f1"] == pytest.approx(test["f1"])
    assert {a.path for a in client.list_artifacts(stage_run, "figures")} >= {
        "figures/drive_cnf_test_pr_curve.png", "figures/drive_cnf_test_pr_samples.png"}
    assert {a.path for a in client.list_artifacts(stage_run, "eval")} == {"eval/metrics.json", "eval/info.json",
                                                                         "eval/pr.json"}

    # Deterministic: a second run gives the same numbers.
    assert cli.main(args[:-2] + ["--train-info", str(tmp_path / "no.json")] + outs("again")) == 0
    assert json.loads((tmp_path / "again.json").read_text()) == metrics

    # The checkpoint must be one of the experiment evaluated: drive_cnf's model is no drive_factored model.
    params["experiments"]["drive_factored"] = {**params["experiments"]["drive_cnf"],
                                               "model": {"family": "factorized", "encoder": "vgg"}}
    params["experiments"]["drive_cnf_wide"] = {**params["experiments"]["drive_cnf"],
                                               "model": {"family": "cnf", **model_opts, "hidden": 16}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    checkpoint.save_checkpoint(tmp_path / "trained.pt", model, experiment="drive_cnf")  # as `cnf train` does
    other = ["--params", str(tmp_path / "params.yaml"), "--model", str(tmp_path / "trained.pt"), "--data",
             str(data_root), "--train-info", str(tmp_path / "no.json")] + outs("other")
    capsys.readouterr()
    assert cli.main(["evaluate", "drive_factored", *other]) == 2
    err = capsys.readouterr().err
    assert "trained.pt is a checkpoint of experiment 'drive_cnf', not of 'drive_factored'" in err
    assert not (tmp_path / "other.json").exists()
    assert cli.main(["sweep", "drive_factored", *other[:-6], "--figures", str(tmp_path / "f")]) == 2
    assert "not of 'drive_factored'" in capsys.readouterr().err
    # A checkpoint without an experiment name (saved elsewhere) is compared by its config.
    assert cli.main(["evaluate", "drive_cnf_wide", *other[:3], str(tmp_path / "model.pt"), *other[4:]]) == 2
    assert "model.hidden=8, but experiments.drive_cnf_wide.model.hidden is 16" in capsys.readouterr().err


# ------------------------------------------------------------------------------ bits/dim over real pixels only


@pytest.fixture(scope="module")
def set5_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("sr")
    fetch_demo("set5", root)
    return root


def _sr_model(batch):
    from flowlib.models import build_model

    torch.manual_seed(0)  # the factorized logistic baseline: an exact, deterministic likelihood
    return build_model("factorized", "image8", tuple(batch["y"].shape[1:]), tuple(batch["x"].shape[1:]),
                       encoder_options={"blocks": 1, "growth": 8})


def test_bits_per_dim_of_a_padded_image_equals_the_unpadded_one(set5_root):
    from pipelines.data.loader import make_loader

    def batches(multiple):
        return list(make_loader(str(set5_root / "set5"), "test", "sr", 1, train=False, pad_multiple=multiple))

    plain, padded = batches(1), batches(32)  # 48x48 HR (24x24 LR) -> 64x64 (32x32) with zeros
    assert plain[0]["y"].shape[-2:] == (48, 48) and padded[0]["y"].shape[-2:] == (64, 64)
    model = _sr_model(plain[0])
    a = evaluate_split(model, plain, get_task("sr"), n_samples=1, temperature=0.0)
    b = evaluate_split(model, padded, get_task("sr"), n_samples=1, temperature=0.0)
    assert b["bpd"] == pytest.approx(a["bpd"], abs=1e-6)


def test_likelihood_is_cut_to_the_flows_multiple_and_d_counts_those_pixels():
    from flowlib.models import build_model
    from pipelines.evaluation.split import real_likelihood

    torch.manual_seed(0)
    model = build_model("cnf", "continuous", (1, 16, 16), (1, 16, 16), levels=2, steps=1, hidden=8,
                        encoder="none")
    y, x = torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)
    unpadded = torch.zeros(2, 1, 16, 16)
    unpadded[0, :, :13, :10] = 1.0  # 13x10 real pixels -> 12x8 for a 2-level flow (multiple 4)
    unpadded[1] = 1.0  # a 16x16 image: all of it
    ll, dims = real_likelihood(model, {"y": y, "x": x, "unpadded": unpadded}, get_task("denoise"))
    assert dims == [12 * 8, 16 * 16]
    with torch.no_grad():
        assert ll[0] == pytest.approx(float(model.log_likelihood(y[:1, :, :12, :8], x[:1, :, :12, :8])[0]), rel=1e-5)
        assert ll[1] == pytest.approx(float(model.log_likelihood(y[1:], x[1:])[0]), rel=1e-5)


def test_bpd_over_random_crops_winkler_table2(set5_root):
    from pipelines.data.loader import make_loader
    from pipelines.evaluation.split import CropProtocol, crop_windows

    batches = list(make_loader(str(set5_root / "set5"), "test", "sr", 1, train=False, pad_multiple=4))
    model = _sr_model(batches[0])
    protocol = CropProtocol(count=7, size=16)
    assert [protocol.crops_of(i, 5) for i in range(5)] == [2, 2, 1, 1, 1]
    out = evaluate_split(model, batches, get_task("sr"), n_samples=1, temperature=0.0, bpd_crops=protocol,
                         total=5, seed=3)
    assert out["bpd_crops"] == 7 and out["bpd_protocol"].startswith("7 random 16x16 crops")
    total = 0.0
    with torch.no_grad():
        for i, b in enumerate(batches):
            for top, left in crop_windows(b["key"][0], (48, 48), protocol.crops_of(i, 5), 16, 2, seed=3):
                assert top % 2 == 0 and left % 2 == 0 and top + 16 <= 48 and left + 16 <= 48
                total += float(model.log_likelihood(b["y"][..., top:top + 16, left:left + 16],
                                                    b["x"][..., top // 2:top // 2 + 8, left // 2:left // 2 + 8])[0])
    assert out["bpd"] == pytest.approx(-total / (7 * 3 * 16 * 16 * np.log(2)), rel=1e-6)
    again = evaluate_split(model, batches, get_task("sr"), n_samples=1, temperature=0.0, bpd_crops=protocol,
                           total=5, seed=3)
    assert again["bpd"] == out["bpd"]  # seeded crops
    # Images smaller than the crop are used whole: the 48x48 demo benchmarks under 128x128 crops.
    whole = evaluate_split(model, batches, get_task("sr"), n_samples=1, temperature=0.0,
                           bpd_crops=CropProtocol(count=1000, size=128), total=5)
    plain = evaluate_split(model, batches, get_task("sr"), n_samples=1, temperature=0.0)
    assert whole["bpd"] == pytest.approx(plain["bpd"], rel=1e-9) and whole["bpd_crops"] == 1000
    assert "5 of 5 images smaller than 128 px used whole" in whole["bpd_protocol"]


def test_extra_split_bpd_crops_are_validated():
    from pipelines.evaluation.experiment import eval_splits
    from pipelines.params import parse_params

    raw = {"profile": "demo", "datasets": {"imagenet64": {"source": "demo"}, "set5": {"source": "demo"}},
           "experiments": {"sr": {"paper": "winkler2019", "task": "sr", "data": {"dataset": "imagenet64"},
                                  "model": {"family": "factorized"},
                                  "eval": {"extra_splits": {"set5": {"dataset": "set5",
                                                                     "bpd_crops": {"count": 10, "sizes": 3}}}}}}}
    exp = parse_params(raw).experiment("sr")
    with pytest.raises(ValueError, match=r"experiments.sr.eval.extra_splits.set5.bpd_crops: expected"):
        eval_splits(exp)
