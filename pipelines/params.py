"""params.yaml -> frozen, typed dataclasses; every error names the key path and what was expected.

Layout (see docs/architecture.md)::

    profile: demo | paper
    mlflow: {experiment_prefix: ""}
    datasets: {<name>: {source: demo | <path or URL>, ...options}}
    defaults: {data: ..., model: ..., train: ..., scaling: ..., eval: ..., sweep: ...}   # merged into each experiment
    experiments: {<name>: {paper, table, task, data, model, train, scaling, eval, sweep}}

``defaults`` is deep-merged under every experiment (the experiment wins), so params.yaml only states what differs.
``--set key=value`` overrides are applied before validation; values are parsed as YAML (``1e-3`` counts as a
float). A key may be absolute (``experiments.drive_cnf.train.lr``) or, when an experiment is chosen, relative to
it (``train.lr``). Overrides may not invent keys: the key must be a schema field or already present.
"""
from __future__ import annotations

import copy
import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Optional, Union

import yaml

POSITIVE = {"check": "positive"}
NON_NEGATIVE = {"check": "non-negative"}


class ParamsError(ValueError):
    """A params.yaml value is missing, unknown or of the wrong type; the message names the key path."""


# ---------------------------------------------------------------------------------------------------------- schema


@dataclass(frozen=True)
class DatasetParams:
    """One dataset to fetch: ``source: demo`` (embedded demo set) or a path/URL to the real release."""

    source: str
    options: dict = field(default_factory=dict)  # any other key, passed to `cnf fetch` as is

    _passthrough = "options"


@dataclass(frozen=True)
class MlflowParams:
    experiment_prefix: str = ""


@dataclass(frozen=True)
class DataParams:
    """Which shards feed training/evaluation and how the loader cuts them."""

    dataset: str
    train_split: str = "train"
    eval_split: str = "test"
    eval_dataset: Optional[str] = None  # evaluate on another dataset (c-Glow denoising: BSDS500 -> CBSD68)
    patch: Optional[int] = field(default=None, metadata=POSITIVE)  # random crop of y (and x) in training
    size: Optional[int] = field(default=None, metadata=POSITIVE)  # resize y to size x size (c-Glow 32/64/128)
    pad_multiple: int = field(default=1, metadata=POSITIVE)  # pad H, W to a multiple (2**levels for a flow)
    num_workers: int = field(default=0, metadata=NON_NEGATIVE)  # loader processes per Ray worker
    options: dict = field(default_factory=dict)  # task options passed to make_loader (noise sigma, hole size...)


@dataclass(frozen=True)
class ModelParams:
    """Arguments of ``flowlib.build_model``; known keys are typed, any other key is passed through as an option."""

    family: Literal["cnf", "cglow", "factorized"]
    levels: Optional[int] = field(default=None, metadata=POSITIVE)
    steps: Optional[int] = field(default=None, metadata=POSITIVE)
    hidden: Optional[int] = field(default=None, metadata=POSITIVE)
    encoder: Optional[str] = None
    dequantization: Optional[Literal["uniform", "variational", "binary"]] = None
    beta: Optional[float] = field(default=None, metadata=POSITIVE)
    num_classes: Optional[int] = field(default=None, metadata=POSITIVE)
    options: dict = field(default_factory=dict)

    _passthrough = "options"

    def build_options(self) -> dict:
        """Keyword options for ``build_model(family, target, y_shape, x_shape, **options)`` (unset keys omitted)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name not in ("family", "options") and getattr(self, f.name) is not None}
        out.update(self.options)
        return out


@dataclass(frozen=True)
class TrainParams:
    steps: int = field(default=200, metadata=POSITIVE)
    batch_size: int = field(default=2, metadata=POSITIVE)  # global batch, split evenly over the Ray workers
    lr: float = field(default=1e-3, metadata=POSITIVE)
    betas: tuple = (0.9, 0.999)
    grad_clip: Optional[float] = field(default=1.0, metadata=POSITIVE)  # max global grad norm; null = off
    warmup_steps: int = field(default=0, metadata=NON_NEGATIVE)  # linear lr warm-up (Glow-style)
    checkpoint_every: int = field(default=50, metadata=POSITIVE)
    log_every: int = field(default=10, metadata=POSITIVE)
    seed: int = 0
    max_nonfinite: int = field(default=20, metadata=POSITIVE)  # consecutive skipped steps before giving up
    fail_at_step: Optional[int] = field(default=None, metadata=POSITIVE)  # TEST ONLY: rank 1 dies once here


@dataclass(frozen=True)
class ScalingParams:
    num_workers: int = field(default=1, metadata=POSITIVE)
    use_gpu: bool = False
    mixed_precision: bool = False  # AMP (bf16 autocast) on GPU only; ignored on CPU
    cpus_per_worker: float = field(default=1.0, metadata=POSITIVE)
    gpus_per_worker: Optional[float] = field(default=None, metadata=POSITIVE)
    max_failures: int = field(default=2, metadata={"check": "min-1"})  # FailureConfig; -1 = retry forever


@dataclass(frozen=True)
class EvalParams:
    n_samples: int = field(default=8, metadata=POSITIVE)
    temperature: float = field(default=1.0, metadata=NON_NEGATIVE)
    batch_size: int = field(default=4, metadata=POSITIVE)
    max_batches: Optional[int] = field(default=None, metadata=POSITIVE)
    extra_splits: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SweepParams:
    temperatures: tuple = (0.0, 0.5, 0.8, 1.0)
    n_samples: Optional[int] = field(default=None, metadata=POSITIVE)
    split: Optional[str] = None


@dataclass(frozen=True)
class ExperimentParams:
    name: str
    paper: Literal["winkler2019", "lu2020"]
    task: str
    data: DataParams
    model: ModelParams
    table: tuple = ()  # table id(s) this experiment fills; a single string is accepted
    description: str = ""
    train: TrainParams = field(default_factory=TrainParams)
    scaling: ScalingParams = field(default_factory=ScalingParams)
    eval: EvalParams = field(default_factory=EvalParams)
    sweep: SweepParams = field(default_factory=SweepParams)

    def to_dict(self) -> dict:
        """Plain nested dict (JSON/YAML-safe), e.g. to hand to Ray workers or log as an artifact."""
        out = _plain(dataclasses.asdict(self))
        out["model"].update(out["model"].pop("options"))  # pass-through options sit beside the typed keys
        return out

    def flatten(self) -> dict:
        """``{"train.lr": 0.001, "model.levels": 2, ...}`` for MLflow params."""
        return flatten(self.to_dict())


@dataclass(frozen=True)
class Params:
    profile: Literal["demo", "paper"]
    experiments: dict
    datasets: dict = field(default_factory=dict)
    mlflow: MlflowParams = field(default_factory=MlflowParams)
    sections: dict = field(default_factory=dict)  # other stages' top-level sections (sweeps, scores, ...), raw
    source: str = ""  # the file these came from, for messages

    def experiment(self, name: str) -> ExperimentParams:
        try:
            return self.experiments[name]
        except KeyError:
            raise ParamsError(f"{self.source or 'params'}: no experiment {name!r}; "
                              f"available: {', '.join(sorted(self.experiments))}") from None


# ---------------------------------------------------------------------------------------------------- conversion

# Top-level sections owned by other stages (validated there); kept raw in `Params.sections`.
OTHER_SECTIONS = ("sweeps", "scores", "benchmarks", "tables", "figures")

_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_SECTIONS = {"data": DataParams, "model": ModelParams, "train": TrainParams, "scaling": ScalingParams,
             "eval": EvalParams, "sweep": SweepParams}


def _plain(obj):
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _describe(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_describe(a) for a in args) + " or null"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return {int: "an integer", float: "a float", bool: "a boolean (true/false)", str: "a string",
            dict: "a mapping", tuple: "a list"}.get(tp, getattr(tp, "__name__", str(tp)))


def _convert(tp, value, path: str, check: str | None = None):
    origin = typing.get_origin(tp)
    if origin is Union:
        if value is None:
            return None
        inner = [a for a in typing.get_args(tp) if a is not type(None)][0]
        return _convert(inner, value, path, check)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ParamsError(f"{path}: expected {_describe(tp)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path)
    adjective = {"positive": "a positive ", "non-negative": "a non-negative ", "min-1": "an "}.get(check, "")
    if tp is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"{path}: expected a boolean (true/false), got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if not (isinstance(value, float) and value.is_integer()):
                raise ParamsError(f"{path}: expected {adjective or 'an '}integer"
                                  f"{' >= -1' if check == 'min-1' else ''}, got {value!r}")
            value = int(value)
    elif tp is float:
        if isinstance(value, str) and _NUMBER.match(value.strip()):
            value = float(value)  # YAML 1.1 reads "1e-3" (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamsError(f"{path}: expected {adjective or 'a '}float, got {value!r}")
        value = float(value)
    elif tp is str:
        if not isinstance(value, str):
            raise ParamsError(f"{path}: expected a string, got {value!r}")
        return value
    elif tp is dict:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise ParamsError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    elif tp is tuple:
        if isinstance(value, str):
            return (value,)
        if not isinstance(value, (list, tuple)):
            raise ParamsError(f"{path}: expected a list, got {value!r}")
        return tuple(value)
    if check == "positive" and not value > 0:
        raise ParamsError(f"{path}: expected a positive {'integer' if tp is int else 'float'}, got {value!r}")
    if check == "non-negative" and not value >= 0:
        raise ParamsError(f"{path}: expected a non-negative {'integer' if tp is int else 'float'}, got {value!r}")
    if check == "min-1" and value < -1:
        raise ParamsError(f"{path}: expected an integer >= -1, got {value!r}")
    return value


def _build(cls, raw, path: str):
    if not isinstance(raw, Mapping):
        raise ParamsError(f"{path}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    passthrough = getattr(cls, "_passthrough", None)
    values, extra = {}, {}
    for key, value in raw.items():
        if key in fields and key != passthrough:
            f = fields[key]
            values[key] = _convert(hints[key], value, f"{path}.{key}", f.metadata.get("check"))
        elif key == passthrough:  # an explicit `options:` mapping merges with the loose keys
            extra.update(_convert(dict, value, f"{path}.{key}"))
        elif passthrough is not None:
            extra[key] = value
        else:
            allowed = ", ".join(k for k in fields)
            raise ParamsError(f"{path}.{key}: unknown key; allowed keys: {allowed}")
    if passthrough is not None:
        values[passthrough] = extra
    missing = [k for k, f in fields.items() if k not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ParamsError(f"{path}: missing required key(s): {', '.join(missing)}")
    return cls(**values)


def _deep_merge(base: Mapping, over: Mapping) -> dict:
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else copy.deepcopy(v)
    return out


def _parse_value(text: str):
    value = yaml.safe_load(text) if text.strip() else ""
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        value = float(value) if any(c in value for c in ".eE") else int(value)
    return value


def _schema_fields(path: list[str]) -> list[str]:
    """Field names of the schema section at ``path`` (below ``experiments.<name>``), [] when not a section."""
    cls = ExperimentParams
    for part in path:
        cls = _SECTIONS.get(part) if cls is ExperimentParams else None
        if cls is None:
            return []
    return [f.name for f in dataclasses.fields(cls) if f.name not in ("name", "options") or cls is DataParams]


def _schema_has(path: list[str]) -> bool:
    """Whether ``path`` (below ``experiments.<name>``) is a field of the schema."""
    cls = ExperimentParams
    for part in path:
        if not dataclasses.is_dataclass(cls):
            return False
        names = {f.name for f in dataclasses.fields(cls)}
        if part not in names:
            return False
        cls = _SECTIONS.get(part) if cls is ExperimentParams else None
    return True


def apply_overrides(raw: dict, overrides, experiment: str | None = None) -> dict:
    """Apply ``key=value`` overrides to the raw (defaults-merged) mapping; unknown keys are rejected."""
    raw = copy.deepcopy(raw)
    for item in overrides or ():
        if "=" not in item:
            raise ParamsError(f"--set {item!r}: expected key=value")
        key, text = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ParamsError(f"--set {item!r}: empty key")
        if parts[0] not in {"profile", "mlflow", "datasets", "experiments"}:
            if experiment is None:
                raise ParamsError(f"--set {key}: a relative key needs an experiment; "
                                  "write it as experiments.<name>.{key}")
            parts = ["experiments", experiment, *parts]
        node = raw
        for i, part in enumerate(parts[:-1]):
            if not isinstance(node, dict) or part not in node:
                if isinstance(node, dict) and parts[0] == "experiments" and i >= 2 and _schema_has(parts[2: i + 1]):
                    node[part] = {}
                else:
                    raise ParamsError(f"--set {key}: unknown key {'.'.join(parts[: i + 1])!r}"
                                      + (f"; allowed: {', '.join(map(str, node))}" if isinstance(node, dict) else ""))
            node = node[part]
        last = parts[-1]
        known = (last in node) if isinstance(node, dict) else False
        if not known and not (parts[0] == "experiments" and len(parts) > 2 and _schema_has(parts[2:])) \
                and not (parts[0] == "mlflow" and last in {f.name for f in dataclasses.fields(MlflowParams)}):
            names = list(map(str, node)) if isinstance(node, dict) else []
            if parts[0] == "experiments" and len(parts) > 2:
                names += [n for n in _schema_fields(parts[2:-1]) if n not in names]
            allowed = ", ".join(names) or "(not a mapping)"
            raise ParamsError(f"--set {key}: unknown key; allowed here: {allowed}")
        node[last] = _parse_value(text)
    return raw


def merge_defaults(raw: Mapping) -> dict:
    """Deep-merge the top-level ``defaults`` section into each experiment and drop it."""
    raw = dict(raw)
    defaults = raw.pop("defaults", None) or {}
    if not isinstance(defaults, Mapping):
        raise ParamsError(f"defaults: expected a mapping, got {defaults!r}")
    exps = raw.get("experiments")
    if isinstance(exps, Mapping):
        raw["experiments"] = {name: _deep_merge(defaults, body) if isinstance(body, Mapping) else body
                              for name, body in exps.items()}
    return raw


def parse_params(raw: Mapping, overrides=(), experiment: str | None = None, source: str = "params.yaml") -> Params:
    """Validate a loaded params mapping (``defaults`` merged, then ``overrides``) into :class:`Params`."""
    if not isinstance(raw, Mapping):
        raise ParamsError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    raw = apply_overrides(merge_defaults(raw), overrides, experiment)
    allowed = {"profile", "mlflow", "datasets", "experiments"}
    for key in raw:
        if key not in allowed and key not in OTHER_SECTIONS:
            raise ParamsError(f"{key}: unknown top-level key; allowed keys: "
                              f"{', '.join(['defaults', *sorted(allowed), *OTHER_SECTIONS])}")
    if "profile" not in raw:
        raise ParamsError(f"{source}: missing required key: profile (demo | paper)")
    profile = _convert(Literal["demo", "paper"], raw["profile"], "profile")
    mlflow = _build(MlflowParams, raw.get("mlflow") or {}, "mlflow")
    datasets_raw = _convert(dict, raw.get("datasets") or {}, "datasets")
    datasets = {name: _build(DatasetParams, body, f"datasets.{name}") for name, body in datasets_raw.items()}
    exps_raw = raw.get("experiments")
    if not isinstance(exps_raw, Mapping) or not exps_raw:
        raise ParamsError(f"experiments: expected a non-empty mapping of experiment name -> settings")
    experiments = {}
    for name, body in exps_raw.items():
        path = f"experiments.{name}"
        if not isinstance(body, Mapping):
            raise ParamsError(f"{path}: expected a mapping, got {body!r}")
        if "name" in body:
            raise ParamsError(f"{path}.name: unknown key (the name is the mapping key)")
        exp = _build(ExperimentParams, {"name": name, **body}, path)
        if exp.data.dataset not in datasets:
            raise ParamsError(f"{path}.data.dataset: {exp.data.dataset!r} is not in datasets "
                              f"({', '.join(sorted(datasets)) or 'none declared'})")
        if exp.data.eval_dataset is not None and exp.data.eval_dataset not in datasets:
            raise ParamsError(f"{path}.data.eval_dataset: {exp.data.eval_dataset!r} is not in datasets "
                              f"({', '.join(sorted(datasets))})")
        if exp.train.batch_size % exp.scaling.num_workers:
            raise ParamsError(f"{path}.train.batch_size: {exp.train.batch_size} is not divisible by "
                              f"scaling.num_workers={exp.scaling.num_workers} (the global batch is split evenly)")
        experiments[name] = exp
    if experiment is not None and experiment not in experiments:
        raise ParamsError(f"{source}: no experiment {experiment!r}; available: {', '.join(sorted(experiments))}")
    sections = {k: copy.deepcopy(raw[k]) for k in OTHER_SECTIONS if k in raw}
    return Params(profile=profile, experiments=experiments, datasets=datasets, mlflow=mlflow, sections=sections,
                  source=source)


def load_params(path: str | Path = "params.yaml", overrides=(), experiment: str | None = None) -> Params:
    """Read and validate ``path`` with ``--set`` overrides applied (relative keys refer to ``experiment``)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ParamsError(f"{path}: params file not found") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    try:
        return parse_params(raw, overrides, experiment, source=str(path))
    except ParamsError as exc:
        raise ParamsError(f"{path}: {exc}") from None


def flatten(mapping: Mapping, prefix: str = "") -> dict:
    """Nested mapping -> ``{"a.b.c": value}`` (lists kept as values), for MLflow params."""
    out = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out
