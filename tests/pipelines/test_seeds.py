"""Several runs of one experiment (train.seeds): seed runs, their files, and mean +/- std in evaluate and tables."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch
import yaml

from pipelines import tracking
from pipelines.evaluation.seeds import aggregate_seed_results, seed_model_paths
from pipelines.params import ParamsError, parse_params
from pipelines.stages import cli


def drive_params(seeds: int) -> dict:
    return {"profile": "demo", "datasets": {"drive": {"source": "demo"}},
            "experiments": {"drive_cnf": {
                "paper": "winkler2019", "table": ["winkler_table3"], "task": "vessel",
                "data": {"dataset": "drive", "patch": 32, "pad_multiple": 4},
                "model": {"family": "cnf", "levels": 2, "steps": 1, "hidden": 8, "encoder": "vgg",
                          "coupling": "additive", "dequantization": "binary"},
                "train": {"seed": 3, "seeds": seeds}, "eval": {"n_samples": 2, "batch_size": 2}}}}


def test_seed_runs_have_their_own_name_and_seed_and_seeds_are_validated():
    exp = parse_params(drive_params(3)).experiment("drive_cnf")
    assert exp.seed_run(0) is exp
    runs = [exp.seed_run(k) for k in (1, 2)]
    assert [r.name for r in runs] == ["drive_cnf-seed1", "drive_cnf-seed2"]
    assert [r.train.seed for r in runs] == [4, 5] and all(r.train.seeds == 1 for r in runs)
    assert runs[0].model == exp.model and runs[0].data == exp.data
    with pytest.raises(ValueError, match="train.seeds is 3: no seed run 3"):
        exp.seed_run(3)
    with pytest.raises(ParamsError, match="train.seeds"):
        parse_params(drive_params(0))


def test_mean_and_sample_std_over_runs_and_run_zero_keeps_the_rest():
    runs = [{"test": {"f1": f1, "bpd": bpd, "n": 20, "curve": {"k": i}}}
            for i, (f1, bpd) in enumerate([(0.80, 0.10), (0.82, 0.12), (0.78, 0.11)])]
    out = aggregate_seed_results(runs, ("f1", "bpd", "precision"), [0, 1, 2])["test"]
    assert out["f1"] == pytest.approx(statistics.mean([0.80, 0.82, 0.78]))
    assert out["f1_std"] == pytest.approx(statistics.stdev([0.80, 0.82, 0.78]))  # ddof = 1
    assert out["bpd_std"] == pytest.approx(statistics.stdev([0.10, 0.12, 0.11]))
    assert "precision" not in out and out["curve"] == {"k": 0} and out["n"] == 20 and out["n_runs"] == 3
    assert out["seed_runs"][1] == {"seed": 1, "f1": 0.82, "bpd": 0.12}
    # One run: as is, no std.
    assert aggregate_seed_results(runs[:1], ("f1",), [0]) == {"test": runs[0]["test"]}


def test_missing_seed_checkpoint_is_named(tmp_path):
    exp = parse_params(drive_params(2)).experiment("drive_cnf")
    with pytest.raises(FileNotFoundError, match=r"seed1.pt: missing; experiments.drive_cnf.train.seeds is 2"):
        seed_model_paths(exp, tmp_path / "m.pt", tmp_path / "seeds")
    (tmp_path / "seeds").mkdir()
    (tmp_path / "seeds" / "seed1.pt").write_bytes(b"")
    runs = seed_model_paths(exp, tmp_path / "m.pt", tmp_path / "seeds")
    assert [(r.name, Path(p).name) for r, p in runs] == [("drive_cnf", "m.pt"), ("drive_cnf-seed1", "seed1.pt")]


def test_stale_seed_files_are_removed_and_the_folder_always_exists(tmp_path):
    from pipelines.stages.train import keep_seed_files

    folder = tmp_path / "models" / "x.seeds"
    keep_seed_files(folder, 1)
    assert folder.is_dir() and not list(folder.iterdir())  # DVC declares it even for one run
    for k in (1, 2, 3):
        for suffix in (".pt", ".json", ".info.json"):
            (folder / f"seed{k}{suffix}").write_text("x")
    (folder / "notes.txt").write_text("mine")
    keep_seed_files(folder, 3)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["notes.txt"] + [f"seed{k}{s}" for k in (1, 2) for s in (".pt", ".json", ".info.json")])


@pytest.fixture(scope="module")
def drive_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    assert cli.main(["fetch", "drive", "--source", "demo", "--out", str(root / "drive")]) == 0
    return root


def test_evaluate_reports_mean_and_std_over_seed_runs_and_the_table_shows_them(drive_root, tmp_path, monkeypatch):
    from flowlib.checkpoint import save_checkpoint
    from flowlib.models import build_model
    from pipelines.data.loader import make_loader
    from pipelines.reporting.tables import build_table, load_results

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    params = drive_params(3)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    exp = parse_params(params).experiment("drive_cnf")
    b = next(iter(make_loader(str(drive_root / "drive"), "test", "vessel", batch_size=2, train=False,
                              pad_multiple=4)))
    seeds_dir = tmp_path / "models" / "drive_cnf.seeds"
    seeds_dir.mkdir(parents=True)
    paths = [tmp_path / "models" / "drive_cnf.pt", seeds_dir / "seed1.pt", seeds_dir / "seed2.pt"]
    for k, path in enumerate(paths):
        torch.manual_seed(k)
        model = build_model("cnf", "binary", tuple(b["y"].shape[1:]), tuple(b["x"].shape[1:]),
                            **exp.model.build_options())
        with torch.no_grad():
            model.nll(b["y"], b["x"])
            for p in model.parameters():  # runs that differ
                p.add_(0.01 * torch.randn_like(p))
        save_checkpoint(path, model, experiment=exp.seed_run(k).name)
    run_id = tracking.open_run(tracking.experiment_name("winkler2019"), "drive_cnf")
    (tmp_path / "train.json").write_text(json.dumps({"mlflow_run_id": run_id}))
    base = ["evaluate", "drive_cnf", "--params", str(tmp_path / "params.yaml"), "--model", str(paths[0]),
            "--data-root", str(drive_root), "--train-info", str(tmp_path / "train.json"),
            "--seeds-dir", str(seeds_dir)]
    outs = ["--out", str(tmp_path / "metrics/eval/drive_cnf.json"),
            "--info-out", str(tmp_path / "info/eval/drive_cnf.json"), "--plots-out", str(tmp_path / "pr.json")]
    assert cli.main(base + outs) == 0
    metrics = json.loads((tmp_path / "metrics/eval/drive_cnf.json").read_text())["test"]
    info = json.loads((tmp_path / "info/eval/drive_cnf.json").read_text())["splits"]["test"]
    per_run = info["seed_runs"]
    assert [r["seed"] for r in per_run] == [3, 4, 5] and info["n_runs"] == 3
    for metric in ("f1", "bpd"):
        values = [r[metric] for r in per_run]
        assert metric == "f1" or len(set(values)) == 3, values  # untrained: F can tie (all-vessel maps)
        assert metrics[metric] == pytest.approx(statistics.mean(values))
        assert metrics[f"{metric}_std"] == pytest.approx(statistics.stdev(values))
    # Run 0 alone gives run 0's numbers.
    single = ["--out", str(tmp_path / "one.json"), "--info-out", str(tmp_path / "one_info.json"),
              "--plots-out", str(tmp_path / "one_pr.json")]
    assert cli.main(base[:-2] + single + ["--set", "experiments.drive_cnf.train.seeds=1"]) == 0
    one = json.loads((tmp_path / "one.json").read_text())["test"]
    assert one["f1"] == pytest.approx(per_run[0]["f1"]) and "f1_std" not in one
    # A seed run's checkpoint must be that run's.
    save_checkpoint(seeds_dir / "seed2.pt", model, experiment="drive_cnf-seed1")
    assert cli.main(base + outs) == 2

    evals = load_results(tmp_path / "metrics", tmp_path / "info", "eval")
    df = build_table("winkler_table3", evals, [])
    row = df[df["source"].str.startswith("computed")].iloc[0]
    assert row["f1"] == pytest.approx(metrics["f1"]) and row["f1_std"] == pytest.approx(metrics["f1_std"])
    assert row["bpd_std"] == pytest.approx(metrics["bpd_std"]) and "3 runs" in row["notes"]
