"""The three profiles (params-demo.yaml, params-cpu.yaml, params-paper.yaml) and the one-step switch."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from pipelines.data.datasets.registry import DATASETS
from pipelines.params import load_params

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "datasets"

# The tables the cpu profile fills from real data (issue: Winkler 2, 3; c-Glow 1, 3, 5).
CPU_TABLES = {"winkler_table2", "winkler_table3", "cglow_table1", "cglow_table3", "cglow_table5"}


@pytest.mark.parametrize("name", ["demo", "cpu", "paper"])
def test_every_profile_parses_and_names_itself(name):
    params = load_params(ROOT / f"params-{name}.yaml")
    assert params.profile == name
    for exp_name, exp in params.experiments.items():
        assert exp.data.dataset in params.datasets, (exp_name, exp.data.dataset)
        assert (exp.data.eval_dataset or exp.data.dataset) in params.datasets, exp_name


def test_the_committed_params_yaml_is_the_demo_profile():
    """`dvc repro` on a fresh clone runs the demo profile; `make profile PROFILE=demo` restores it exactly."""
    assert (ROOT / "params.yaml").read_bytes() == (ROOT / "params-demo.yaml").read_bytes()


def test_cpu_profile_covers_its_tables_from_the_shared_archives():
    params = load_params(ROOT / "params-cpu.yaml")
    tables = {t for exp in params.experiments.values() for t in exp.table}
    assert tables == CPU_TABLES
    for name, spec in params.datasets.items():
        source = Path(spec.source)
        assert not source.is_absolute() and str(source).startswith("../shared/datasets"), (name, spec.source)
        expected = set(DATASETS[name].archives)
        if source.suffix:  # one archive: a name the registry checks the checksum of
            assert source.name in expected, (name, source.name, expected)
        if SHARED.is_dir():
            where = ROOT / source
            assert where.exists(), where
            if where.is_dir():
                assert any((where / archive).is_file() for archive in expected), (name, expected)
    # Every experiment and score runs on real data: no demo source is left.
    assert all(spec.source != "demo" for spec in params.datasets.values())
    for exp in params.experiments.values():
        assert exp.scaling.use_gpu is False


def test_make_profile_switches_in_one_step_and_refuses_an_unknown_one(tmp_path):
    if shutil.which("make") is None:
        pytest.skip("make absent")
    for name in ("Makefile", "params-demo.yaml", "params-cpu.yaml", "params-paper.yaml", "params.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    run = subprocess.run(["make", "-s", "profile", "PROFILE=cpu"], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "params.yaml").read_bytes() == (ROOT / "params-cpu.yaml").read_bytes()
    bad = subprocess.run(["make", "-s", "profile", "PROFILE=gpu"], cwd=tmp_path, capture_output=True, text=True)
    assert bad.returncode != 0 and "params-gpu.yaml" in bad.stderr
    assert (tmp_path / "params.yaml").read_bytes() == (ROOT / "params-cpu.yaml").read_bytes()
    subprocess.run(["make", "-s", "profile", "PROFILE=demo"], cwd=tmp_path, check=True, capture_output=True)
    assert (tmp_path / "params.yaml").read_bytes() == (ROOT / "params-demo.yaml").read_bytes()
