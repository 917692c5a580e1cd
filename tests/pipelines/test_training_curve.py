"""`cnf train --plots-out`: the training curves for `dvc plots`, read back from the run's MLflow history
(pipelines/training/driver.py ``training_curve``), without starting Ray."""
from __future__ import annotations

import argparse

from pipelines import tracking


def test_training_curve_reads_the_history_back_as_records(tmp_path, monkeypatch):
    from pipelines.training.driver import training_curve

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = tracking.open_run(tracking.experiment_name("winkler2019"), "drive_cnf")
    for step in (50, 25, 75):  # logged out of order, as a resumed run may
        tracking.log_metrics(run_id, {"train_nll": 100.0 / step, "train_bpd": 1.0 / step, "lr": 1e-3}, step=step)
    tracking.log_metrics(run_id, {"train_nll": float("nan")}, step=100)  # a skipped step is no point
    assert training_curve(run_id) == [
        {"step": 25, "train_nll": 4.0, "train_bpd": 0.04}, {"step": 50, "train_nll": 2.0, "train_bpd": 0.02},
        {"step": 75, "train_nll": 100.0 / 75, "train_bpd": 1.0 / 75}]


def test_plots_out_is_a_run_path(tmp_path):
    from pipelines.stages import train

    parser = argparse.ArgumentParser()
    train.configure(parser)
    args = parser.parse_args(["drive_cnf", "--plots-out", str(tmp_path / "plots" / "drive_cnf.json"),
                              "--storage", str(tmp_path / "runs")])

    class Exp:
        name = "drive_cnf"

        class data:
            dataset = "drive"

    paths = train.run_paths(args, Exp)
    assert paths.plots_out == tmp_path / "plots" / "drive_cnf.json"
    assert train.run_paths(parser.parse_args(["drive_cnf", "--storage", str(tmp_path)]), Exp).plots_out is None
