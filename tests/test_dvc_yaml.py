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
            if "experiments.${key}" not in listed and own not in listed:
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
        if "${" in dep or dep.split("/")[0] in ("data", "models", "metrics"):
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
