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


def test_temperature_grid_draws_only_the_real_pixels_of_padded_images(drive):
    """Images padded for the flow's size multiple are drawn without their padding: y, the samples and x (on its
    own grid) cut to the unpadded marker's box, for a batch and for a list of native-size inputs alike."""
    from flowlib.models import build_model
    from pipelines.data.loader import make_loader
    from pipelines.evaluation.sweep import temperature_grid
    from pipelines.tasks.base import UNPADDED

    batch = next(iter(make_loader(str(drive / "drive"), "test", "vessel", 2, train=False, pad_multiple=24)))
    assert tuple(batch["y"].shape[-2:]) == (72, 72) and batch[UNPADDED][0, 0].sum() == 64 * 64
    torch.manual_seed(0)
    model = build_model("factorized", "binary", tuple(batch["y"].shape[1:]), tuple(batch["x"].shape[1:]))
    for given in (batch, {k: [batch[k][i:i + 1] for i in range(2)] for k in ("x", "y", UNPADDED)}):
        rows = temperature_grid(model, given, [0.5], "vessel", seed=3)
        for row in rows:
            assert {image.shape for image in row.values()} == {(64, 64, 3)}
        np.testing.assert_array_equal(rows[1]["truth"][..., 0], batch["y"][1, 0, :64, :64].numpy())


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
                     str(tmp_path / "model.pt"), "--data", str(drive), "--out", str(out), "--info-out",
                     str(tmp_path / "info.json"), "--plots-out", str(tmp_path / "curves.json"), "--figures",
                     str(tmp_path / "figs"), "--train-info", str(tmp_path / "none.json")]) == 0
    metrics, info = json.loads(out.read_text()), json.loads((tmp_path / "info.json").read_text())
    curves = json.loads((tmp_path / "curves.json").read_text())
    assert info["temperatures"] == [0.0, 1.0] and info["splits"]["test"] == {"dataset": "drive", "split": "test",
                                                                             "n": 2}
    assert {(r["temperature"], r["split"]) for r in curves} == {(0.0, "test"), (1.0, "test")}
    assert {r["metric"] for r in curves} == {"f1", "precision", "recall"}  # bits/dim is no function of T
    f1 = {r["temperature"]: r["value"] for r in curves if r["metric"] == "f1"}
    assert all(0.0 <= v <= 1.0 for v in f1.values())
    # The metrics: the best value over the temperatures (numbers only), and where it was reached in the info.
    assert set(metrics) == {"test"} and metrics["test"]["f1"] == max(f1.values())
    assert f1[info["best_at"]["test"]["f1"]] == metrics["test"]["f1"] and "selection" not in info
    assert info["grid_keys"] == ["01", "02"] and "figures" not in info  # tmp_path: outside the project
    assert {p.name for p in (tmp_path / "figs").iterdir()} == {"drive_factored_temperature_grid.png",
                                                               "drive_factored_temperature_metrics.png"}
    assert all(p.stat().st_size > 0 for p in (tmp_path / "figs").iterdir())


def test_listed_only_records_an_unlisted_experiment_without_loading_a_model(tmp_path):
    """The pipeline's sweep stage runs per experiment; one without a `sweeps` entry writes empty outputs (so its
    evaluation depends on its own, unchanging sweep file) and needs no model or data."""
    params = {"profile": "demo", "datasets": {"drive": {"source": "demo"}},
              "experiments": {"drive_factored": {"paper": "winkler2019", "task": "vessel",
                                                 "data": {"dataset": "drive"}, "model": {"family": "factorized"}}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    paths = {"--out": tmp_path / "m.json", "--info-out": tmp_path / "i.json", "--plots-out": tmp_path / "p.json",
             "--figures": tmp_path / "figs"}
    argv = ["sweep", "drive_factored", "--listed-only", "--params", str(tmp_path / "params.yaml"), "--model",
            str(tmp_path / "absent.pt"), "--data", str(tmp_path / "no-data")]
    for flag, path in paths.items():
        argv += [flag, str(path)]
    assert cli.main(argv) == 0
    assert json.loads(paths["--out"].read_text()) == {} and json.loads(paths["--plots-out"].read_text()) == []
    info = json.loads(paths["--info-out"].read_text())
    assert info["swept"] is False and "sweeps.drive_factored" in info["reason"]
    assert paths["--figures"].is_dir() and not any(paths["--figures"].iterdir())
    first = {flag: path.read_bytes() for flag, path in paths.items() if path.is_file()}
    assert cli.main(argv) == 0  # a rerun writes the same bytes: the evaluation downstream stays valid
    assert first == {flag: path.read_bytes() for flag, path in paths.items() if path.is_file()}
    params["sweeps"] = {"drive_factored": {"dataset": "drive"}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(FileNotFoundError, match="absent.pt"):  # listed now: the model is needed
        cli.main(argv)


def test_select_temperature_takes_the_best_and_ties_go_low():
    from pipelines.evaluation.sweep import select_temperature

    results = {0.0: {"psnr": 20.0, "bpd": 3.0}, 0.5: {"psnr": 22.0, "bpd": 2.5}, 0.8: {"psnr": 22.0, "bpd": 2.0},
               1.0: {"psnr": float("inf"), "bpd": 2.0}}
    assert select_temperature(results, "psnr") == 0.5  # inf is no score; 0.5 and 0.8 tie
    assert select_temperature(results, "bpd") == 0.8  # lower is better for bits/dim
    with pytest.raises(ValueError, match="no temperature has a finite 'f1'.*'bpd', 'psnr'"):
        select_temperature(results, "f1")


@pytest.fixture(scope="module")
def sr_data(tmp_path_factory):
    from pipelines.stages import fetch

    root = tmp_path_factory.mktemp("srdata")
    for name in ("imagenet64", "set5"):
        fetch.fetch(name, "demo", str(root / name))
    return root


def test_sweep_chooses_the_temperature_on_validation_and_evaluate_uses_it(sr_data, tmp_path):
    """Winkler Table 2: the temperature is chosen on ImageNet64's validation split, then the test sets are
    sampled at it; the sweep also scores the test sets at every temperature, and agrees with the evaluation."""
    from flowlib.checkpoint import save_checkpoint
    from flowlib.models import build_model
    from pipelines.data.loader import make_loader

    exp = {"paper": "winkler2019", "table": ["winkler_table1", "winkler_table2"], "task": "sr",
           "data": {"dataset": "imagenet64", "eval_split": "valid", "size": 32, "pad_multiple": 4},
           "model": {"family": "factorized", "encoder_options": {"blocks": 1, "growth": 8}},
           "eval": {"n_samples": 2, "batch_size": 4, "temperature": 1.0,
                    "extra_splits": {"set5": {"dataset": "set5", "split": "test",
                                              "bpd_crops": {"count": 10, "size": 16}}}},
           "sweep": {"temperatures": [0.0, 0.7, 1.0]}}
    params = {"profile": "demo", "datasets": {"imagenet64": {"source": "demo"}, "set5": {"source": "demo"}},
              "experiments": {"sr_f": exp}, "sweeps": {"sr_f": {"dataset": "imagenet64", "select": "psnr"}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    b = next(iter(make_loader(str(sr_data / "imagenet64"), "valid", "sr", 2, train=False, size=32)))
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "model.pt", build_model("factorized", "image8", tuple(b["y"].shape[1:]),
                                                       tuple(b["x"].shape[1:]), encoder_options={"blocks": 1,
                                                                                                 "growth": 8}))
    common = ["--params", str(tmp_path / "params.yaml"), "--model", str(tmp_path / "model.pt"), "--data",
              str(sr_data), "--train-info", str(tmp_path / "none.json")]
    evaluate = ["evaluate", "sr_f", *common, "--out", str(tmp_path / "eval.json"), "--info-out",
                str(tmp_path / "eval_info.json"), "--plots-out", str(tmp_path / "pr.json"), "--sweeps",
                str(tmp_path / "sw")]
    with pytest.raises(FileNotFoundError, match=r"sr_f.json: missing; sweeps.sr_f.select asks for the temperature"):
        cli.main(evaluate)
    assert cli.main(["sweep", "sr_f", *common, "--out", str(tmp_path / "sweep.json"), "--info-out",
                     str(tmp_path / "sw" / "sr_f.json"), "--plots-out", str(tmp_path / "curves.json"),
                     "--figures", str(tmp_path / "figs")]) == 0
    sweep = json.loads((tmp_path / "sw" / "sr_f.json").read_text())
    curves = json.loads((tmp_path / "curves.json").read_text())
    psnr = {(r["split"], r["temperature"]): r["value"] for r in curves if r["metric"] == "psnr"}
    chosen = sweep["selection"]
    assert chosen["metric"] == "psnr" and chosen["split"] == "valid" and chosen["dataset"] == "imagenet64"
    best = max(v for (split, _), v in psnr.items() if split == "valid")
    assert psnr["valid", chosen["temperature"]] == best == chosen["value"]
    assert json.loads((tmp_path / "sweep.json").read_text())["valid"]["psnr"] == best
    assert sweep["splits"]["set5"] == {"dataset": "set5", "split": "test", "n": 5}
    assert sorted(t for split, t in psnr if split == "set5") == [0.0, 0.7, 1.0]
    assert all(v > 0 for v in psnr.values())

    assert cli.main(evaluate) == 0
    metrics, info = (json.loads((tmp_path / f).read_text()) for f in ("eval.json", "eval_info.json"))
    assert info["temperature"] == chosen["temperature"]
    assert info["temperature_selection"]["source"] == "sr_f.json"  # outside the project: the file's name only
    assert metrics["set5"]["psnr"] == pytest.approx(psnr["set5", chosen["temperature"]])
    assert info["splits"]["set5"]["bpd_crops"] == 10 and set(metrics["set5"]) == {"bpd", "psnr", "ssim"}
    assert json.loads((tmp_path / "pr.json").read_text()) == []  # no PR curve for SR


def test_a_sweep_entry_names_its_bad_keys():
    from pipelines.evaluation.sweep import sweep_entry

    assert sweep_entry({"sweeps": {"a": {"dataset": "drive"}}}, "a").select is None
    assert sweep_entry({"sweeps": {}}, "a") is None
    with pytest.raises(ValueError, match=r"sweeps.a: expected \{dataset: <name>\[, select: <metric>\]\}"):
        sweep_entry({"sweeps": {"a": "drive"}}, "a")
    with pytest.raises(ValueError, match=r"sweeps.a.select: expected a metric name"):
        sweep_entry({"sweeps": {"a": {"dataset": "drive", "select": 3}}}, "a")


def test_sweep_extra_splits_off_scores_the_sweep_split_alone():
    from pipelines.evaluation.sweep import sweep_splits
    from pipelines.params import parse_params

    exp = {"paper": "winkler2019", "task": "sr", "data": {"dataset": "sr_train", "eval_split": "valid"},
           "model": {"family": "factorized"},
           "eval": {"extra_splits": {"set5": {"dataset": "set5", "split": "test",
                                              "bpd_crops": {"count": 10, "size": 16}}}}}
    raw = {"profile": "cpu", "datasets": {"sr_train": {"source": "x"}, "set5": {"source": "y"}},
           "experiments": {"sr": exp}}
    both = parse_params(raw).experiment("sr")
    splits = sweep_splits(both)
    assert list(splits) == ["valid", "set5"] and splits["set5"]["dataset"] == "set5"
    assert "bpd_crops" not in splits["set5"]  # whole-image bits/dim there
    alone = parse_params(raw, ["experiments.sr.sweep.extra_splits=false"]).experiment("sr")
    assert sweep_splits(alone) == {"valid": {"dataset": "sr_train", "split": "valid"}}


def test_temperature_grid_draws_inputs_of_different_sizes_one_by_one():
    """Native-size validation images (SR) cannot share a batch: the grid takes them as a list."""
    from flowlib.models import build_model
    from pipelines.evaluation.sweep import temperature_grid

    torch.manual_seed(0)
    model = build_model("cnf", "image8", (3, 16, 16), (3, 8, 8), levels=2, steps=1, hidden=8).eval()
    xs = [torch.rand(1, 3, 8, 12), torch.rand(1, 3, 12, 8)]
    ys = [torch.randint(0, 256, (1, 3, 16, 24)).float(), torch.randint(0, 256, (1, 3, 24, 16)).float()]
    rows = temperature_grid(model, {"x": xs, "y": ys}, [0.0, 1.0], "sr", seed=1)
    assert [row["T=1"].shape for row in rows] == [(16, 24, 3), (24, 16, 3)]
    assert [row["truth"].shape for row in rows] == [(16, 24, 3), (24, 16, 3)]
    again = temperature_grid(model, {"x": xs[:1], "y": ys[:1]}, [1.0], "sr", seed=1)
    np.testing.assert_array_equal(again[0]["T=1"], rows[0]["T=1"])  # the first input's noise: the seed's


def test_grid_batch_keeps_native_sizes_of_the_sr_validation_split(shared_datasets, tmp_path):
    """The real sr_train valid images differ in size (the failure this guards: the sweep's grid batched them)."""
    from pathlib import Path

    from pipelines.evaluation.sweep import GRID_INPUTS, grid_batch
    from pipelines.params import load_params
    from pipelines.stages import fetch

    fetch.fetch("sr_train", str(shared_datasets), str(tmp_path / "sr_train"))
    exp = load_params(Path(__file__).resolve().parents[2] / "params-cpu.yaml").experiments["sr_cnf"]
    batch = grid_batch(exp, tmp_path)
    assert isinstance(batch["x"], list) and len(batch["x"]) == len(batch["key"]) == GRID_INPUTS
    assert len({tuple(x.shape) for x in batch["x"]}) > 1
    for x, y in zip(batch["x"], batch["y"]):
        assert x.shape[0] == 1 and y.shape[-2:] == (2 * x.shape[-2], 2 * x.shape[-1])


def _sweep_cli(name: str, tmp_path, data) -> dict:
    """`cnf sweep <name>` with tmp_path's params.yaml and model.pt; returns the info file it wrote."""
    assert cli.main(["sweep", name, "--params", str(tmp_path / "params.yaml"), "--model", str(tmp_path / "model.pt"),
                     "--data", str(data), "--train-info", str(tmp_path / "none.json"), "--out",
                     str(tmp_path / "sweep.json"), "--info-out", str(tmp_path / "info.json"), "--plots-out",
                     str(tmp_path / "curves.json"), "--figures", str(tmp_path / "figs")]) == 0
    return json.loads((tmp_path / "info.json").read_text())


def test_denoising_sweep_reads_the_training_sets_valid_split_caps_it_and_skips_an_overflowing_temperature(
        tmp_path):
    """c-Glow denoising tests on CBSD68 but chooses its temperature on bsds500's held-out valid split (the
    sweeps entry's dataset), over its first ``sweep.max_images``; a temperature at which every draw of an image
    overflows float32 is recorded as failed instead of ending the sweep, and is never chosen."""
    from flowlib.checkpoint import save_checkpoint
    from flowlib.models import build_model
    from pipelines.data.loader import make_loader
    from pipelines.stages import fetch

    data = tmp_path / "data"
    for name in ("bsds500", "cbsd68"):
        fetch.fetch(name, "demo", str(data / name))
    exp = {"paper": "lu2020", "table": ["cglow_table3"], "task": "denoise",
           "data": {"dataset": "bsds500", "eval_dataset": "cbsd68", "size": 16},
           "model": {"family": "cglow", "levels": 1, "steps": 1, "hidden": 8, "cond_hidden": 8, "residual": 1.0},
           "eval": {"n_samples": 2, "batch_size": 1},
           "sweep": {"temperatures": [0.0, 1.0, 3.0e38], "split": "valid", "max_images": 1,
                     "extra_splits": False}}
    params = {"profile": "demo", "datasets": {"bsds500": {"source": "demo"}, "cbsd68": {"source": "demo"}},
              "experiments": {"dn": exp}, "sweeps": {"dn": {"dataset": "bsds500", "select": "psnr"}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    b = next(iter(make_loader(str(data / "bsds500"), "valid", "denoise", 1, train=False, size=16)))
    torch.manual_seed(0)
    model = build_model("cglow", "continuous", tuple(b["y"].shape[1:]), tuple(b["x"].shape[1:]), levels=1,
                        steps=1, hidden=8, cond_hidden=8, residual=1.0)
    save_checkpoint(tmp_path / "model.pt", model)
    info = _sweep_cli("dn", tmp_path, data)
    assert info["dataset"] == "bsds500" and info["splits"] == {"valid": {"dataset": "bsds500", "split": "valid",
                                                                         "n": 1}}
    assert info["grid_keys"] == ["300000", "307919"]  # the grid is the valid split's too (uncapped), not CBSD68's
    assert list(info["failed"]["valid"]) == ["3e+38"] and "overflowed" in info["failed"]["valid"]["3e+38"]
    curves = json.loads((tmp_path / "curves.json").read_text())
    assert {r["temperature"] for r in curves} == {0.0, 1.0}
    assert info["selection"]["temperature"] in (0.0, 1.0) and info["selection"]["dataset"] == "bsds500"


def test_horses_sweep_chooses_on_the_training_sets_held_out_tail(tmp_path):
    """``sweep.split: holdout``: the temperature is chosen on the last ``data.holdout`` training samples (those
    ``train.select`` picks the checkpoint on), never on the test set; without held-out samples it is refused."""
    from flowlib.checkpoint import save_checkpoint
    from flowlib.models import build_model
    from pipelines.data.loader import make_loader
    from pipelines.evaluation.sweep import sweep_splits
    from pipelines.params import ParamsError, parse_params
    from pipelines.stages import fetch

    data = tmp_path / "data"
    fetch.fetch("horses", "demo", str(data / "horses"))
    exp = {"paper": "lu2020", "table": ["cglow_table1"], "task": "horses",
           "data": {"dataset": "horses", "size": 16, "holdout": 2},
           "model": {"family": "cglow", "levels": 1, "steps": 1, "hidden": 8, "cond_hidden": 8},
           "eval": {"n_samples": 2, "batch_size": 1},
           "sweep": {"temperatures": [0.0, 1.0], "split": "holdout", "extra_splits": False}}
    params = {"profile": "demo", "datasets": {"horses": {"source": "demo"}}, "experiments": {"h": exp},
              "sweeps": {"h": {"dataset": "horses", "select": "iou"}}}
    parsed = parse_params(params).experiment("h")
    assert sweep_splits(parsed) == {"holdout": {"dataset": "horses", "split": "train", "holdout": 2}}
    with pytest.raises(ValueError, match=r"sweeps.h.dataset: 'drive'.*held out of the training set 'horses'"):
        sweep_splits(parsed, "drive")
    with pytest.raises(ParamsError, match=r"experiments.h.sweep.split: 'holdout' is the held-out tail of 'train'; "
                                          r"set experiments.h.data.holdout"):
        parse_params(params, ["experiments.h.data.holdout=0"])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    held = [b for b in make_loader(str(data / "horses"), "train", "horses", 1, train=False, size=16, holdout=2,
                                   held_out=True)]
    torch.manual_seed(0)
    model = build_model("cglow", "binary", tuple(held[0]["y"].shape[1:]), tuple(held[0]["x"].shape[1:]), levels=1,
                        steps=1, hidden=8, cond_hidden=8)
    save_checkpoint(tmp_path / "model.pt", model)
    info = _sweep_cli("h", tmp_path, data)
    assert info["splits"] == {"holdout": {"dataset": "horses", "split": "train", "holdout": 2, "n": 2}}
    assert info["grid_keys"] == [k for b in held for k in b["key"]]  # the held-out horses, not the test ones
    test_keys = {k for b in make_loader(str(data / "horses"), "test", "horses", 1, train=False, size=16)
                 for k in b["key"]}
    assert not set(info["grid_keys"]) & test_keys
    assert info["selection"]["split"] == "holdout" and info["selection"]["temperature"] in (0.0, 1.0)
