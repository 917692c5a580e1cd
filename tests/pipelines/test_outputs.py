"""What `cnf evaluate`, `cnf sweep` and `cnf score` write for the demo profile (params.yaml, untrained tiny
models, the embedded demo shards): metrics files of numbers only, narrow enough for `dvc metrics show`; the rest
in info files, without the writing machine's absolute paths; curves as plot records.

Issue 14: metrics files held labels, configs, curves, per-image lists and run ids, and `dvc metrics show` was
hundreds of columns wide.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from pipelines.stages import cli

ROOT = Path(__file__).resolve().parents[2]
WIDTH = 200  # terminal columns `dvc metrics show` may take per metrics file
PRECISION = 5  # `dvc metrics show`'s default --precision: f"{value:.5g}"


def flatten(payload, prefix: str = "") -> dict:
    """A metrics file's keys as `dvc metrics show` prints them (joined by '.'), with their leaves."""
    if isinstance(payload, dict):
        out = {}
        for key, value in payload.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: payload}


def assert_numbers_only(path: Path) -> dict:
    payload = json.loads(path.read_text())
    assert isinstance(payload, dict) and payload, f"{path}: expected a non-empty object"
    flat = flatten(payload)
    for key, value in flat.items():
        assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{path}: {key} = {value!r}"
        assert math.isfinite(value), f"{path}: {key} = {value!r} (missing values are left out)"
    return flat


def show_width(path: str, flat: dict) -> int:
    """The width of `dvc metrics show`'s table for one file: the Path column, then one column per key, each as
    wide as its header or its value (5 significant digits), two spaces apart."""
    cells = [max(len(k), len(f"{v:.{PRECISION}g}" if isinstance(v, float) else str(v))) for k, v in flat.items()]
    return len(path) + sum(2 + c for c in cells)


def test_show_width_counts_what_dvc_prints():
    assert flatten({"a": {"b": 1, "c": {"d": 2.0}}}) == {"a.b": 1, "a.c.d": 2.0}
    assert show_width("m.json", {"test.f1": 0.123456789}) == len("m.json") + 2 + len("0.12346")


def assert_no_machine_paths(path: Path) -> None:
    text = path.read_text()
    assert str(ROOT) not in text and "/tmp/" not in text and str(Path.home()) + "/" not in text, path


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo shards of the experiments below, in the project's layout (data root outside the project)."""
    from pipelines.stages import fetch

    root = tmp_path_factory.mktemp("data")
    for name in ("imagenet64", "set5", "set14", "bsd100", "drive"):
        fetch.fetch(name, "demo", str(root / name))
    return root


def untrained_checkpoint(name: str, data_root: Path, path: Path) -> Path:
    """``experiments.<name>`` of params.yaml built as `cnf train` builds it (untrained), saved as it saves it."""
    from flowlib.checkpoint import save_checkpoint
    from pipelines.data.loader import loader_options, make_loader
    from pipelines.params import load_params
    from pipelines.tasks import get_task
    from pipelines.training.driver import model_options
    from pipelines.training.worker import TrainJob, build_for_batch

    exp = load_params(ROOT / "params.yaml").experiment(name)
    task = get_task(exp.task)
    batch = next(iter(make_loader(str(data_root / exp.data.dataset), exp.data.train_split, exp.task, 2, train=True,
                                  seed=0, **loader_options(exp.data, train=True))))
    torch.manual_seed(0)
    job = TrainJob(experiment=exp, target=task.target, model_options=model_options(exp, task), data_dir="")
    return save_checkpoint(path, build_for_batch(job, batch["y"].float(), batch["x"].float()), experiment=name)


def test_demo_metrics_are_numbers_only_and_fit_dvc_metrics_show(demo, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)  # the project root: outputs name files relative to it, or not at all
    out = tmp_path / "out"
    params = ["--params", str(ROOT / "params.yaml"), "--set", "eval.n_samples=1", "--set", "sweep.n_samples=1"]
    written = []

    def files(stage: str, name: str) -> list[str]:
        paths = {kind: out / kind / stage / f"{name}.json" for kind in ("metrics", "info", "plots")}
        written.append((stage, name, paths))
        return ["--out", str(paths["metrics"]), "--info-out", str(paths["info"])] + (
            ["--plots-out", str(paths["plots"])] if stage != "score" else [])

    # The widest results: ImageNet64 SR (its validation split and three test sets) and DRIVE (the PR curve).
    for name in ("sr_imagenet64_cnf", "drive_cnf"):
        model = untrained_checkpoint(name, demo, tmp_path / f"{name}.pt")
        common = [name, *params, "--model", str(model), "--data-root", str(demo), "--train-info",
                  str(tmp_path / "none.json")]
        assert cli.main(["sweep", *common, "--temperatures", "0,1", "--figures", str(tmp_path / "figs"),
                         *files("sweep", name)]) == 0
        assert cli.main(["evaluate", *common, "--sweeps", str(out / "info" / "sweep"), *files("eval", name)]) == 0
    for name, task, dataset, method in (("set5_bicubic", "sr", "set5", "bicubic"),
                                        ("drive_human", "vessel", "drive", "second_observer")):
        assert cli.main(["score", task, "--data", str(demo / dataset), "--split", "test", "--method", method,
                         "--name", name, "--params", str(ROOT / "params.yaml"), *files("score", name)]) == 0

    for stage, name, paths in written:
        flat = assert_numbers_only(paths["metrics"])
        shown = f"metrics/{stage}/{name}.json"
        print(f"{shown}: {show_width(shown, flat)} columns")
        assert show_width(shown, flat) <= WIDTH, f"{shown}: {show_width(shown, flat)} columns: {sorted(flat)}"
        assert all(len(part) <= 14 for key in flat for part in key.split(".")), sorted(flat)  # short names
        info = json.loads(paths["info"].read_text())
        assert info["profile"] == "demo" and None not in info.values()
        for path in paths.values():
            if path.exists():
                assert_no_machine_paths(path)

    sr = json.loads((out / "metrics" / "eval" / "sr_imagenet64_cnf.json").read_text())
    assert set(sr) == {"valid", "set5", "set14", "bsd100"} and set(sr["set5"]) == {"bpd", "psnr", "ssim"}
    sr_info = json.loads((out / "info" / "eval" / "sr_imagenet64_cnf.json").read_text())
    assert sr_info["temperature_selection"]["metric"] == "psnr" and sr_info["splits"]["set5"]["n"] == 5
    # The split the temperature was chosen on keeps its bits/dim; its PSNR/SSIM, biased by the choice, are info.
    assert set(sr["valid"]) == {"bpd"} and sr_info["splits"]["valid"]["selection_biased"] == ["psnr", "ssim"]
    assert "psnr" in sr_info["splits"]["valid"]
    sweep = json.loads((out / "plots" / "sweep" / "sr_imagenet64_cnf.json").read_text())
    assert {(r["split"], r["temperature"]) for r in sweep} == {(s, t) for s in sr for t in (0.0, 1.0)}
    drive_pr = json.loads((out / "plots" / "eval" / "drive_cnf.json").read_text())
    assert drive_pr and {"split", "threshold", "precision", "recall", "f1"} == set(drive_pr[0])
    human = json.loads((out / "metrics" / "score" / "drive_human.json").read_text())
    assert set(human) == {"f1", "precision", "recall"}
    human_info = json.loads((out / "info" / "score" / "drive_human.json").read_text())
    assert human_info["name"] == "drive_human" and "curve" in human_info and "data" not in human_info
