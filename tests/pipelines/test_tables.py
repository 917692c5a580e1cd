"""`cnf tables` against a real MLflow store (SQLite in tmp_path) filled by short runs."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from pipelines.reporting import tables
from pipelines.stages import cli
from pipelines.reporting import reported
from pipelines import tracking
from pathlib import Path

EXPERIMENTS = {
    # name: (paper, tables, task, family, dequantization, dataset, size, primary metrics, extra splits)
    "drive_cnf": ("winkler2019", ["winkler_table3"], "vessel", "cnf", "binary", "drive", None,
                  {"f1": 0.61, "bpd": 0.3}, {}),
    "drive_factored": ("winkler2019", ["winkler_table3"], "vessel", "factorized", None, "drive", None,
                       {"f1": 0.55, "bpd": 0.4}, {}),
    "sr_imagenet64_cnf": ("winkler2019", ["winkler_table1", "winkler_table2"], "sr", "cnf", None, "imagenet64", 32,
                          {"bpd": 4.1, "psnr": 25.0, "ssim": 0.7},
                          {"set5": {"dataset": "set5", "bpd": 4.5, "psnr": 26.0, "ssim": 0.71}}),
    "horses64_cglow": ("lu2020", ["cglow_table1"], "horses", "cglow", None, "horses", 24,
                       {"iou": 0.5, "iou_fg": 0.4, "bpd": 0.9}, {}),
    "denoise_cglow": ("lu2020", ["cglow_table3"], "denoise", "cglow", None, "bsds500", 16, {"psnr": 20.5}, {}),
    "inpaint_cglow": ("lu2020", ["cglow_table5"], "inpaint", "cglow", None, "celeba_subset", 16,
                      {"psnr": 21.5, "psnr_block": 15.48, "bpd": 3.5}, {}),
}


def write_result(root, kind: str, name: str, metrics: dict, info: dict) -> None:
    """A result as `cnf evaluate` / `cnf score` write it: numbers in metrics/, the rest in info/."""
    for folder, payload in (("metrics", metrics), ("info", info)):
        (root / folder / kind).mkdir(parents=True, exist_ok=True)
        (root / folder / kind / f"{name}.json").write_text(json.dumps(payload))


def write_params(root, experiments, scores) -> Path:
    import yaml

    datasets = {d: {"source": "demo"} for d in ("drive", "imagenet64", "set5", "horses", "bsds500",
                                                    "celeba_subset")}
    params = {"profile": "demo", "datasets": datasets, "scores": scores,
              "experiments": {name: {"paper": paper, "table": tbls, "task": task,
                                     "data": {"dataset": dataset, **({"size": size} if size else {})},
                                     "model": {"family": family, **({"dequantization": deq} if deq else {})}}
                              for name, (paper, tbls, task, family, deq, dataset, size, *_) in experiments.items()}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root / "params.yaml"


HUMAN = {"drive_human": {"task": "vessel", "dataset": "drive", "split": "test", "method": "second_observer"}}


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_ids = {}
    for name, (paper, tbls, task, family, deq, dataset, size, primary, extra) in EXPERIMENTS.items():
        run_id = tracking.open_run(tracking.experiment_name(paper), name)
        for step in range(1, 4):
            tracking.log_metrics(run_id, {"train_nll": 10.0 / step}, step=step)
        run_ids[name] = run_id
        curve = {"thresholds": [0.5, 1.0], "precision": [0.5, 0.8], "recall": [0.9, 0.5], "f1": [0.64, 0.61]}
        metrics = {"test": dict(primary), **{s: {k: v for k, v in values.items() if k != "dataset"}
                                             for s, values in extra.items()}}
        splits = {"test": {"dataset": dataset, "split": "test", "n": 2}}
        if task == "vessel":
            splits["test"].update(curve=curve, samples_pr={"precision": [0.6, 0.7], "recall": [0.8, 0.7]})
        for split_name, values in extra.items():
            splits[split_name] = {"split": "test", "n": 5, "dataset": values["dataset"]}
        info = {"experiment": name, "paper": paper, "tables": tbls, "task": task, "profile": "demo",
                "mlflow_run_id": run_id, "model": {"family": family, "dequantization": deq},
                "data": {"dataset": dataset, "size": size}, "primary": "test", "splits": splits,
                "temperature": 1.0}
        if task == "sr":
            info.update(temperature=0.5, temperature_selection={
                "metric": "psnr", "temperature": 0.5, "split": "valid", "dataset": "imagenet64"})
        write_result(tmp_path, "eval", name, metrics, info)
    # A score row that needs no training: the DRIVE second observer, tracked in its own run.
    human_run = tracking.open_run(tracking.experiment_name("winkler2019"), "drive_human")
    tracking.log_metrics(human_run, {"f1": 0.791})
    write_result(tmp_path, "score", "drive_human", {"f1": 0.791, "precision": 0.807, "recall": 0.776},
                 {"task": "vessel", "method": "second_observer", "dataset": "drive", "name": "drive_human",
                  "per_image": {"precision": [0.8, 0.81], "recall": [0.77, 0.78]}, "mlflow_run_id": human_run})
    run_ids["drive_human"] = human_run
    write_params(tmp_path, EXPERIMENTS, HUMAN)
    return tmp_path, run_ids


def test_tables_cite_existing_runs_beside_reported_rows(store):
    from mlflow import MlflowClient

    root, run_ids = store
    out, figs = root / "tables", root / "figures"
    assert cli.main(["tables", "--params", str(root / "params.yaml"), "--metrics", str(root / "metrics"), "--info",
                     str(root / "info"), "--out", str(out), "--figures", str(figs)]) == 0

    for name in [f"winkler_table{i}" for i in (1, 2, 3)] + [f"cglow_table{i}" for i in range(1, 6)]:
        for ext in ("md", "csv", "tex"):
            assert (out / f"{name}.{ext}").is_file(), f"{name}.{ext}"
    client = MlflowClient(tracking_uri=tracking.tracking_uri())
    computed_total = 0
    for csv in out.glob("*.csv"):
        df = pd.read_csv(csv)
        ours = df[df["source"].str.startswith("computed")]
        for run_id in ours["mlflow_run_id"]:
            assert isinstance(run_id, str), f"{csv.name}: computed row without a run id"
            assert client.get_run(run_id).info.run_id == run_id
        computed_total += len(ours)
        # Reported rows carry exactly the papers' numbers.
        theirs = df[df["source"].str.startswith("reported")]
        assert len(theirs) == len(reported.TABLES[csv.stem]["rows"])
        assert theirs["mlflow_run_id"].isna().all()
    assert computed_total == 8  # 2 DRIVE + human + table1 + Set5 + horses + denoise + inpainting

    t3 = pd.read_csv(out / "winkler_table3.csv")
    human = t3[(t3["method"] == "Human")]
    assert sorted(human["f1"].tolist()) == [0.791, 0.791]
    assert human[human["source"].str.startswith("computed")]["mlflow_run_id"].item() == run_ids["drive_human"]
    cnf = t3[(t3["method"] == "CNF") & t3["source"].str.startswith("computed")]
    assert cnf["f1"].item() == pytest.approx(0.61)
    assert cnf["mlflow_run_id"].item() == run_ids["drive_cnf"]
    assert t3[t3["method"] == "Factored"]["source"].str.startswith("computed").sum() == 1

    t2 = pd.read_csv(out / "winkler_table2.csv")
    ours = t2[t2["source"].str.startswith("computed")]
    assert ours[["dataset", "method"]].values.tolist() == [["Set5", "CNF"]]
    assert ours["psnr"].item() == 26.0

    t5 = pd.read_csv(out / "cglow_table5.csv")  # both PSNR regions, the whole image in the paper's column
    ours = t5[t5["source"].str.startswith("computed")]
    assert ours[["psnr", "psnr_block"]].values.tolist() == [[21.5, 15.48]]
    assert t5[t5["method"] == "c-Glow"]["psnr"].tolist()[0] == 24.88

    t1 = pd.read_csv(out / "cglow_table1.csv")
    row = t1[t1["source"].str.startswith("computed")].iloc[0]
    assert row["image_size"] == "24x24" and "64x64" in row["notes"]

    readme = (out / "README.md").read_text()
    assert "demo" in readme and "f1 0.61 (paper 0.819)" in readme and "iou 0.5 (paper 0.852)" in readme
    assert "(Winkler et al. 2019, Table 3)" in (out / "winkler_table3.md").read_text()
    for fig in ("winkler_fig5_pr_curves.png", "winkler_fig5_pr_samples.png", "cglow_fig6_likelihood_curves.png",
                "winkler_likelihood_curves.png"):
        assert (figs / fig).stat().st_size > 1000
    assert tables.metric_histories({"x": run_ids["drive_cnf"]})["x (train_nll)"][1] == [10.0, 5.0, 10.0 / 3]


def test_tables_without_results_have_only_reported_rows(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    frames = tables.build_all(tmp_path / "none", tmp_path / "t", None, profile="demo")
    assert set(frames) == set(reported.TABLES)
    for name, df in frames.items():
        assert (df["source"].str.startswith("reported")).all()
        assert not df[list(reported.TABLES[name]["metrics"])].isna().all().all()


def test_reported_numbers_match_paper_transcription():
    assert reported.reported_value("winkler_table3", "f1", method="CNF") == 0.819
    assert reported.reported_value("winkler_table2", "psnr", dataset="Set5", method="Bicubic") == 33.7
    assert reported.reported_value("cglow_table4", "psnr", method="c-Glow") == 36.53
    assert math.isclose(reported.reported_value("winkler_table1", "bpd", dataset="ImageNet64", method="CNF"), 2.90)


def test_table2_prints_the_chosen_temperature_and_table1_both_ious(store):
    root, _ = store
    frames = tables.build_all(root / "metrics", root / "tables", None, profile="demo", check_runs=False)
    t2 = frames["winkler_table2"]
    ours = t2[t2["source"].str.startswith("computed")].iloc[0]
    assert "temperature" in t2.columns and ours["temperature"] == 0.5
    assert "chosen by psnr on imagenet64 valid" in ours["notes"]
    assert t2[t2["source"].str.startswith("reported")]["temperature"].isna().all()  # the paper does not say
    t1 = frames["cglow_table1"]
    ours = t1[t1["source"].str.startswith("computed")].iloc[0]
    assert ours["iou"] == 0.5 and ours["iou_fg"] == 0.4
    md = (root / "tables" / "winkler_table2.md").read_text()
    header = md.split("\n")[2]
    assert header.startswith("| dataset") and "temperature" in header  # printed in the table itself


def test_every_choice_is_in_its_tables_notes_and_the_readme(store):
    root, _ = store
    tables.build_all(root / "metrics", root / "tables", None, profile="demo", check_runs=False)
    readme = (root / "tables" / "README.md").read_text()
    assert "## Choices where the papers are silent" in readme
    for name, spec in reported.TABLES.items():
        md = (root / "tables" / f"{name}.md").read_text()
        for choice in spec.get("choices", []):
            assert choice in md and f"**{name}**: {choice}" in readme
    for name in ("winkler_table2", "winkler_table3", "cglow_table1", "cglow_table3", "cglow_table4",
                 "cglow_table5"):
        assert reported.TABLES[name]["choices"], name  # the tables whose protocol the papers leave open
    assert "sigma = 25" in (root / "tables" / "cglow_table3.md").read_text()
    assert "hidden block" in (root / "tables" / "cglow_table5.md").read_text()


def test_an_unknown_table_name_is_refused_naming_it(store, tmp_path):
    root, _ = store
    with pytest.raises(ValueError, match=r"experiments.drive_cnf.table: unknown table 'winkler_table4'; known"):
        reported.table_names(["winkler_table3", "winkler_table4"], "experiments.drive_cnf.table")
    assert reported.table_names("winkler_table3", "x") == ("winkler_table3",)
    bad = json.loads((root / "info" / "eval" / "drive_cnf.json").read_text())
    bad["tables"] = ["winkler_table3", "winkler_table4"]
    (root / "info" / "eval" / "drive_cnf.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"drive_cnf.json: unknown table 'winkler_table4'"):
        tables.build_all(root / "metrics", tmp_path / "t", None, profile="demo", check_runs=False)
    import yaml

    params = {"profile": "demo", "datasets": {"drive": {"source": "demo"}},
              "experiments": {"drive_cnf": {"paper": "winkler2019", "table": ["winkler_table4"], "task": "vessel",
                                            "data": {"dataset": "drive"}, "model": {"family": "factorized"}}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ValueError, match=r"experiments.drive_cnf.table: unknown table 'winkler_table4'"):
        cli.main(["evaluate", "drive_cnf", "--params", str(tmp_path / "params.yaml"), "--model",
                  str(tmp_path / "absent.pt")])  # refused before any model is loaded


@pytest.mark.parametrize("profile", ["params.yaml", "params-paper.yaml"])
def test_both_profiles_name_only_tables_that_exist(profile):
    from pathlib import Path

    from pipelines.params import load_params

    params = load_params(Path(__file__).resolve().parents[2] / profile)
    for name, exp in params.experiments.items():
        assert reported.table_names(exp.table, f"{profile}: experiments.{name}.table")


@pytest.mark.parametrize("kind,name,folder", [("eval", "drive_factored", "metrics"), ("eval", "horses64_cglow", "info"),
                                              ("score", "drive_human", "metrics")])
def test_a_row_params_ask_for_without_its_result_is_an_error_naming_the_file(store, kind, name, folder, capsys):
    """Issue 16: an experiment whose `table` names a table (or a `scores` entry) without its eval (score)
    result fails the tables, naming the file, instead of dropping the row."""
    root, _ = store
    (root / folder / kind / f"{name}.json").unlink()
    args = ["tables", "--params", str(root / "params.yaml"), "--metrics", str(root / "metrics"), "--info",
            str(root / "info"), "--out", str(root / "t"), "--figures", str(root / "f")]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert f"{root / folder / kind / name}.json" in err and "missing" in err
    assert not (root / "t").exists()
    # Without the params the tables use the results there are (the row is missing, not an error).
    (root / ("info" if folder == "metrics" else "metrics") / kind / f"{name}.json").unlink()
    frames = tables.build_all(root / "metrics", root / "t", None, check_runs=False, info_dir=root / "info")
    assert name not in set().union(*(set(df["experiment"].dropna()) for df in frames.values()))


def test_a_computed_row_must_cite_a_run_the_store_has(store, capsys):
    root, _ = store
    info = json.loads((root / "info" / "eval" / "denoise_cglow.json").read_text())
    info["mlflow_run_id"] = "0" * 32
    (root / "info" / "eval" / "denoise_cglow.json").write_text(json.dumps(info))
    args = ["tables", "--params", str(root / "params.yaml"), "--metrics", str(root / "metrics"), "--info",
            str(root / "info"), "--out", str(root / "t"), "--figures", str(root / "f")]
    assert cli.main(args) == 2
    assert f"MLflow runs the tracking store does not have: {'0' * 32}" in capsys.readouterr().err
    del info["mlflow_run_id"]
    (root / "info" / "eval" / "denoise_cglow.json").write_text(json.dumps(info))
    assert cli.main(args) == 2
    assert "computed rows of ['denoise_cglow'] cite no MLflow run id" in capsys.readouterr().err
    assert cli.main(args + ["--no-check-runs"]) == 0


def test_each_row_notes_what_training_and_evaluation_cost_and_on_what_machine():
    machine = {"cpu": "AMD EPYC", "cpus": 2, "cpus_usable": 2, "torch": "2.13.0"}
    ev = {"experiment": "drive_cnf", "profile": "cpu", "tables": ["winkler_table3"], "primary": "test",
          "mlflow_run_id": "r1", "splits": {"test": {"f1": 0.8, "bpd": 0.1, "n_runs": 1}},
          "training": {"steps": 4000, "wall_s": 1320.0, "samples_per_s": 11.46, "machine": machine},
          "evaluation": {"wall_s": 95.0, "machine": machine}}
    [row] = tables.computed_rows("winkler_table3", [ev], [])
    assert row["notes"] == ("one run (train.seeds: 1): no std; trained 4000 steps in 22.0 min (11.5 samples/s), "
                            "evaluated in 1.6 min on AMD EPYC, 2 CPUs")
    ev["training"] = None  # an info file from before the cost was recorded: the evaluation's alone
    [row] = tables.computed_rows("winkler_table3", [ev], [])
    assert row["notes"].endswith("; evaluated in 1.6 min on AMD EPYC, 2 CPUs")
    horses = {**ev, "tables": ["cglow_table1"], "experiment": "horses32_cglow", "data": {"size": 32},
              "splits": {"test": {"iou": 0.8, "iou_fg": 0.7}}, "evaluation": None}
    horses["training"] = {"steps": 10, "wall_s": 30.0}
    [row] = tables.computed_rows("cglow_table1", [horses], [])
    assert row["notes"] == "trained 10 steps in 30 s"
    # Since the ISA is recorded, the label tells an AVX2 VM from an AVX512-BF16 one (same "AMD EPYC" name)
    for capability, bf16, label in (("AVX2", False, "AMD EPYC, 2 CPUs (AVX2)"),
                                    ("AVX512", True, "AMD EPYC, 2 CPUs (AVX512, bf16)")):
        recorded = {**machine, "cpu_capability": capability, "bfloat16_native": bf16}
        ev["evaluation"] = {"wall_s": 95.0, "machine": recorded}
        [row] = tables.computed_rows("winkler_table3", [ev], [])
        assert row["notes"].endswith(f"evaluated in 1.6 min on {label}")


def test_a_residual_flow_says_so_in_its_sr_rows():
    """A CNF trained with model.residual models y - a x, not the paper's y: its Table 1/2 rows say so."""
    ev = {"experiment": "sr_cnf", "profile": "cpu", "tables": ["winkler_table2"], "primary": "valid",
          "temperature": 0.0, "model": {"family": "cnf", "residual": 1.0},
          "splits": {"set5": {"dataset": "set5", "psnr": 35.0, "ssim": 0.95, "bpd": 3.0}}}
    (row,) = tables.computed_rows("winkler_table2", [ev], [])
    assert "the flow models y - bicubic(x)" in row["notes"] and "temperature 0.0" in row["notes"]
    (row,) = tables.computed_rows("winkler_table2", [{**ev, "model": {"family": "cnf", "residual": 0.5}}], [])
    assert "the flow models y - 0.5 bicubic(x)" in row["notes"]
    plain = {**ev, "model": {"family": "cnf"}}
    (row,) = tables.computed_rows("winkler_table2", [plain], [])
    assert "residual" not in row["notes"]
