"""dvc.yaml describes the graph truthfully: each stage depends on the code its command runs and the params it reads.

DVC reruns a stage only when a listed dependency changes, so a module a stage imports but does not list (or a
params key it reads but does not list) is a stale result waiting to happen. These tests derive both from the
code: the project modules a stage's command imports (transitively, including imports inside functions), and the
params sections it reads through the experiment (``exp.<section>`` / ``exp["<section>"]``) or the top level
(``params.profile``, ``params.mlflow``).
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipelines", "flowlib")
# ExperimentParams fields that are params.yaml sections below experiments.<name> (and under defaults).
SECTIONS = ("data", "model", "train", "scaling", "eval", "sweep")
SCALARS = ("task", "paper", "table")
EXPERIMENT_NAMES = ("exp", "experiment")
# The sections params.yaml's `defaults` holds (DVC refuses a listed params key that does not exist).
DEFAULTS = set(yaml.safe_load((ROOT / "params.yaml").read_text()).get("defaults") or {})


def _stages() -> dict[str, dict]:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {name: (body.get("do") or body) for name, body in stages.items()}


def _stage_module(cmd: str) -> str:
    from pipelines.stages.cli import STAGES

    match = re.match(r"\s*cnf\s+(\w+)", cmd)
    assert match, f"dvc.yaml: stage command {cmd!r} does not call `cnf <stage>`"
    return STAGES[match.group(1)][0]


def _module_file(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _imports(path: Path) -> set[str]:
    """Project modules imported anywhere in ``path`` (module level or inside functions)."""
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    if path.name == "__init__.py":
        package = package.rsplit(".", 1)[0]
    else:
        package = package.rsplit(".", 1)[0] if "." in package else package
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names = [module] + [f"{module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] in PACKAGES and _module_file(name) is not None:
                found.add(name)
    return found


def _closure(module: str) -> dict[str, Path]:
    """Every project module ``module`` imports, transitively, with the packages' ``__init__`` files."""
    todo, seen = [module], {}
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = _module_file(name)
        if path is None:
            continue
        seen[name] = path
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # parent packages run their __init__
        todo.extend(_imports(path))
    return seen


def _covered(path: Path, deps: list[str]) -> bool:
    rel = path.relative_to(ROOT).as_posix()
    return any(rel == d.rstrip("/") or rel.startswith(d.rstrip("/") + "/") for d in deps)


def _params_read(files: list[Path]) -> set[str]:
    """params.yaml keys read through the experiment object or the top-level Params in ``files``."""
    read = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                base, key = node.value.id, node.attr
            elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) \
                    and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
                base, key = node.value.id, node.slice.value
            else:
                continue
            if base in EXPERIMENT_NAMES and key in SECTIONS + SCALARS:
                read.add(f"experiments.{key}")
            elif base == "params" and key in ("profile", "mlflow"):
                read.add(key)
    return read


def missing_deps(cmd: str, deps: list[str]) -> list[str]:
    """Non-empty project files that ``cmd`` imports and ``deps`` does not cover."""
    modules = _closure(_stage_module(cmd))
    return sorted(p.relative_to(ROOT).as_posix() for p in modules.values()
                  if p.read_text().strip() and not _covered(p, deps))


def missing_params(cmd: str, params: list) -> list[str]:
    """params.yaml keys that ``cmd`` reads and a stage with ``params`` does not list."""
    listed = [p if isinstance(p, str) else next(iter(p)) for p in params]
    missing = []
    # params.py is the schema: it validates every key of every experiment, which is not reading them for output.
    files = [f for f in _closure(_stage_module(cmd)).values() if f != ROOT / "pipelines" / "params.py"]
    for key in sorted(_params_read(files)):
        if key.startswith("experiments."):
            field = key.split(".", 1)[1]
            own = f"experiments.${{key}}.{field}"
            if not {"experiments", "experiments.${key}", own} & set(listed):  # the whole section covers its keys
                missing.append(own)
            if field in SECTIONS and field in DEFAULTS and f"defaults.{field}" not in listed \
                    and "defaults" not in listed:
                missing.append(f"defaults.{field}")  # experiments are defaults deep-merged with their own entry
        elif key not in listed:
            missing.append(key)
    return missing


STAGES = _stages()


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_dependency_exists(stage):
    for dep in STAGES[stage].get("deps", []):
        if "${" in dep or dep.split("/")[0] in ("data", "models", "metrics", "info", "plots"):
            continue  # outputs of other stages and per-item paths
        assert (ROOT / dep).exists(), f"dvc.yaml: stage {stage!r} lists dependency {dep!r}, which does not exist"


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_deps_cover_the_code_its_command_runs(stage):
    body = STAGES[stage]
    missing = missing_deps(body["cmd"], body.get("deps", []))
    assert not missing, f"dvc.yaml: stage {stage!r} runs code it does not depend on: {missing}"


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_params_cover_the_keys_it_reads(stage):
    body = STAGES[stage]
    missing = missing_params(body["cmd"], body.get("params", []))
    assert not missing, f"dvc.yaml: stage {stage!r} reads params it does not list: {missing}"


def test_the_checks_find_what_is_missing():
    """Not vacuous: a stage listing only its own file misses its library code, and one listing no params
    misses the sections it reads."""
    cmd = "cnf sweep drive_cnf --data data/shards"
    assert "flowlib/metrics.py" in missing_deps(cmd, ["pipelines/stages/sweep.py"])
    assert missing_deps(cmd, ["pipelines", "flowlib"]) == []
    missing = missing_params(cmd, [])
    assert "experiments.${key}.sweep" in missing and ("defaults.sweep" in missing or "sweep" not in DEFAULTS)
    assert missing_params(cmd, ["experiments.${key}", "defaults", "profile", "mlflow"]) == []


def _declared(body: dict) -> dict[str, dict]:
    """``{path: options}`` of a stage's outs, metrics and plots."""
    out = {}
    for section in ("outs", "metrics", "plots"):
        for entry in body.get(section, []):
            path, options = (entry, {}) if isinstance(entry, str) else next(iter(entry.items()))
            out[path] = {**(options or {}), "section": section}
    return out


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_file_a_command_writes_is_declared_as_the_right_kind(stage):
    """metrics/ are DVC metrics, committed (cache: false); info/ are cached outs (not committed, so a fresh
    clone reruns the stage and its MLflow run ids exist in its own store); plots/ are committed outs."""
    body = STAGES[stage]
    declared = _declared(body)
    written = re.findall(r"--(?:out|info-out|plots-out|metrics-out)\s+(\S+)", body["cmd"])
    for path in written:
        top = path.split("/")[0]
        if top not in ("metrics", "info", "plots"):
            continue
        assert path in declared, f"dvc.yaml: stage {stage!r} writes {path} but does not declare it"
        kind = declared[path]
        if top == "metrics":
            assert kind["section"] == "metrics" and kind.get("cache") is False, (stage, path)
        elif top == "info":
            assert kind["section"] == "outs" and kind.get("cache", True), (stage, path)
        else:
            assert kind["section"] == "outs" and kind.get("cache") is False, (stage, path)
    if stage in ("evaluate", "sweep", "score"):
        assert {p.split("/")[0] for p in written} >= {"metrics", "info"}, stage


def test_top_level_plots_use_templates_that_exist_and_data_the_stages_write():
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    builtin = {"linear", "simple", "scatter", "smooth", "confusion", "confusion_normalized", "bar_horizontal",
               "bar_horizontal_sorted"}
    outs = {p for body in STAGES.values() for p in _declared(body)}
    plots = spec.get("plots") or []
    assert {next(iter(p)) for p in plots} >= {"plots/train", "plots/sweep", "plots/eval"}
    for entry in plots:
        (folder, props), = entry.items()
        template = props.get("template", "linear")
        assert template in builtin or (ROOT / ".dvc" / "plots" / f"{template}.json").is_file(), template
        assert any(o.startswith(folder + "/") for o in outs), f"no stage writes into {folder}"


@pytest.mark.slow
def test_dvc_plots_show_draws_the_curves_with_the_templates(tmp_path):
    """`dvc plots show` on the top-level plots of dvc.yaml and the templates of .dvc/plots: the training curves
    one panel per field, the sweep one panel per metric and a line per split, the PR curves per split (an
    empty PR file, for a task without one, is skipped)."""
    import json
    import shutil
    import subprocess
    import sys

    dvc = str(Path(sys.executable).with_name("dvc"))
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([dvc, "init", "-q"], cwd=tmp_path, check=True)
    shutil.copytree(ROOT / ".dvc" / "plots", tmp_path / ".dvc" / "plots", dirs_exist_ok=True)
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"plots": spec["plots"]}))
    data = {
        "plots/train/a.json": [{"step": s, "train_nll": 100.0 / s, "train_bpd": 1.0 / s} for s in (25, 50)],
        "plots/sweep/a.json": [{"temperature": t, "split": s, "metric": m, "value": t + 1.0}
                               for t in (0.0, 1.0) for s in ("valid", "set5") for m in ("bpd", "psnr")],
        "plots/eval/a.json": [{"split": "test", "threshold": t, "precision": t, "recall": 1 - t, "f1": 0.5}
                              for t in (0.0, 0.5)],
        "plots/eval/b.json": [],
    }
    for path, rows in data.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(json.dumps(rows))
    shown = subprocess.run([dvc, "plots", "show", "--json"], cwd=tmp_path, check=True, capture_output=True,
                           text=True).stdout
    plots = json.loads(shown)["data"]
    assert {k for k, v in plots.items() if v} == {"plots/train/a.json", "plots/sweep/a.json", "plots/eval/a.json"}
    assert plots.get("plots/eval/b.json", []) == []  # nothing to draw, no error
    train = plots["plots/train/a.json"][0]["content"]
    assert train["facet"]["row"]["field"] == "field" and len(train["data"]["values"]) == 4
    sweep = plots["plots/sweep/a.json"][0]["content"]
    assert sweep["facet"]["row"]["field"] == "metric" and sweep["spec"]["encoding"]["color"]["field"] == "split"
    assert sweep["spec"]["encoding"]["x"]["field"] == "temperature"
    pr = plots["plots/eval/a.json"][0]["content"]
    assert (pr["encoding"]["x"]["field"], pr["encoding"]["y"]["field"]) == ("recall", "precision")
