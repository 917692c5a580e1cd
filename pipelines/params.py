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

``model`` is typed per family (``MODEL_PARAMS``: the options ``flowlib.models.MODEL_OPTIONS`` declares for
``build_model``), so a misspelt option is refused here, naming ``experiments.<name>.model.<key>`` (or
``defaults.model.<key>`` when the value came from ``defaults``) and the allowed keys, before any stage runs.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Optional, Union

import yaml

from flowlib.models import FAMILIES, MODEL_OPTIONS, Option

POSITIVE = {"check": "positive"}
NON_NEGATIVE = {"check": "non-negative"}


class ParamsError(ValueError):
    """A params.yaml value is missing, unknown or of the wrong type; the message names the key path.

    ``key`` is that path (``experiments.drive_cnf.model.encoder``) and ``problem`` the rest of the message,
    when the error is about one key.
    """

    def __init__(self, message: str, *, key: str | None = None, problem: str | None = None):
        super().__init__(message)
        self.key, self.problem = key, problem


def _fail(path: str, problem: str) -> ParamsError:
    """The error for key ``path``: ``"<path>: <problem>"``."""
    return ParamsError(f"{path}: {problem}", key=path, problem=problem)


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
    # The last N samples of train_split (shard order) are held out of training; train.select picks the exported
    # checkpoint by their bits/dim (early stopping). 0: train on every sample.
    holdout: int = field(default=0, metadata=NON_NEGATIVE)
    # MiB of decoded training samples each loader worker keeps (later epochs skip reading and decoding them:
    # DRIVE's 20 images fit in ~35 MiB); 0: decode every time. The batches are the same either way.
    cache_mb: float = field(default=1024.0, metadata=NON_NEGATIVE)


@dataclass(frozen=True)
class ModelParams:
    """Arguments of ``flowlib.build_model``: one subclass per family (``MODEL_PARAMS``), chosen by ``family``.

    The fields of each family are generated from ``flowlib.models.MODEL_OPTIONS``, the declaration
    ``build_model`` itself checks its options against, so what validates here is what builds there. Every
    option is optional (``None``: flowlib's default); ``encoder_options`` is a nested dataclass.
    """

    family: str

    def build_options(self) -> dict:
        """Keyword options for ``build_model(family, target, y_shape, x_shape, **options)`` (unset keys omitted)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                value = {k: v for k, v in dataclasses.asdict(value).items() if v is not None} or None
            if f.name != "family" and value is not None:
                out[f.name] = value
        return out


def _options_class(name: str, options: Mapping[str, Option], doc: str, *, family: str | None = None,
                   nested: Mapping[str, type] | None = None) -> type:
    """A frozen dataclass with one optional field per option (typed, ``choices`` as a Literal, checks)."""
    fields: list = [("family", Literal[family])] if family else []
    for key, option in options.items():
        if option.fields is not None:
            tp = nested[key]
        elif option.choices:
            tp = Literal[tuple(option.choices)]
        else:
            tp = option.kind
        metadata = {"doc": option.doc, **(POSITIVE if option.positive else {})}
        fields.append((key, Optional[tp], field(default=None, metadata=metadata)))
    # A module-level name and __module__, so instances pickle (Ray hands them to its workers).
    return dataclasses.make_dataclass(name, fields, bases=(ModelParams,) if family else (), frozen=True,
                                      namespace={"__module__": __name__, "__doc__": doc})


def _family_classes(family: str, prefix: str) -> tuple[type, type | None]:
    options = MODEL_OPTIONS[family]
    encoder = options.get("encoder_options")
    enc_cls = None if encoder is None else _options_class(
        f"{prefix}EncoderOptions", encoder.fields, f"``model.encoder_options`` of family {family!r}.")
    model_cls = _options_class(f"{prefix}ModelParams", options,
                               f"``model`` of family {family!r} (``flowlib.models.MODEL_OPTIONS[{family!r}]``).",
                               family=family, nested={"encoder_options": enc_cls} if enc_cls else {})
    return model_cls, enc_cls


CnfModelParams, CnfEncoderOptions = _family_classes("cnf", "Cnf")
CglowModelParams, _ = _family_classes("cglow", "Cglow")
FactorizedModelParams, FactorizedEncoderOptions = _family_classes("factorized", "Factorized")
MODEL_PARAMS: dict[str, type] = {"cnf": CnfModelParams, "cglow": CglowModelParams,
                                 "factorized": FactorizedModelParams}


@dataclass(frozen=True)
class TrainParams:
    steps: int = field(default=200, metadata=POSITIVE)
    batch_size: int = field(default=2, metadata=POSITIVE)  # global batch, split evenly over the Ray workers
    lr: float = field(default=1e-3, metadata=POSITIVE)
    betas: tuple = (0.9, 0.999)
    grad_clip: Optional[float] = field(default=1.0, metadata=POSITIVE)  # max global grad norm; null = off
    warmup_steps: int = field(default=0, metadata=NON_NEGATIVE)  # linear lr warm-up (Glow-style)
    # After the warm-up: "constant" (the papers': Adam at a fixed lr) or "cosine" (half a cosine from lr down to
    # 0 at train.steps, Loshchilov & Hutter 2017: a short schedule ends at a settled model, not a noisy one).
    lr_schedule: Literal["constant", "cosine"] = "constant"
    checkpoint_every: int = field(default=50, metadata=POSITIVE)
    log_every: int = field(default=10, metadata=POSITIVE)
    seed: int = 0
    # Independent runs of the experiment, seeds seed, seed+1, ...: the first is the experiment's model, the
    # others go to models/<exp>.seeds/; `cnf evaluate` reports their mean and <metric>_std (Winkler Table 3:
    # mean +/- std over 5 runs).
    seeds: int = field(default=1, metadata=POSITIVE)
    max_nonfinite: int = field(default=20, metadata=POSITIVE)  # consecutive skipped steps before giving up
    # Model selection (early stopping): at every checkpoint (checkpoint_every) and at the end, the bits/dim of the
    # data.holdout samples; the exported model is the checkpoint where it was lowest (ties: the earliest).
    select: bool = False


@dataclass(frozen=True)
class ScalingParams:
    num_workers: int = field(default=1, metadata=POSITIVE)
    use_gpu: bool = False
    # bfloat16 networks (coupling subnets, encoder, prior nets), float32 bijections: flowlib.mixed_precision.
    # true: always (on a CPU without AVX512-BF16 or AMX bfloat16 is emulated, several times slower: training
    # warns); "auto": where the device computes bfloat16 natively (flowlib.bfloat16_is_native), else float32.
    mixed_precision: Literal[False, True, "auto"] = False
    channels_last: bool = False  # NHWC execution (flowlib.channels_last): faster convolutions on CPU and GPU
    # torch.compile of the training objective (flowlib.compile_model: inductor, falls back to eager with a warning
    # on any compiler failure); the first step compiles (tens of seconds). Training only: evaluation runs eager.
    compile: bool = False
    cpus_per_worker: float = field(default=1.0, metadata=POSITIVE)
    gpus_per_worker: Optional[float] = field(default=None, metadata=POSITIVE)
    max_failures: int = field(default=2, metadata={"check": "min-1"})  # FailureConfig; -1 = retry forever

    def use_mixed_precision(self, model) -> bool:
        """Whether :meth:`configure` runs ``model``'s networks in bfloat16 (``mixed_precision`` resolved for the
        device ``model``'s parameters are on: ``"auto"`` asks :func:`flowlib.bfloat16_is_native`)."""
        import warnings

        import flowlib

        if self.mixed_precision is False:
            return False
        device = next(model.parameters()).device
        native = flowlib.bfloat16_is_native(device)
        if self.mixed_precision == "auto":
            return native
        if device.type == "cpu" and not native:
            warnings.warn("scaling.mixed_precision: this CPU has neither AVX512-BF16 nor AMX, so bfloat16 is "
                          "emulated and slower than float32 (set scaling.mixed_precision to false or \"auto\")",
                          RuntimeWarning)
        return True

    def configure(self, model):
        """``model`` set up to run as these settings say (layout, precision), in place; returns it.

        Training, evaluation and sweeps all run a model through this, so a model is evaluated as it was
        trained (with ``mixed_precision: "auto"``: in the precision the evaluating machine picks). Neither
        setting changes the ``state_dict``: checkpoints load under any settings.
        """
        import flowlib

        if self.channels_last:
            flowlib.channels_last(model)
        if self.use_mixed_precision(model):
            flowlib.mixed_precision(model, "bfloat16")
        return model


@dataclass(frozen=True)
class EvalParams:
    n_samples: int = field(default=8, metadata=POSITIVE)
    temperature: float = field(default=1.0, metadata=NON_NEGATIVE)
    batch_size: int = field(default=4, metadata=POSITIVE)
    max_batches: Optional[int] = field(default=None, metadata=POSITIVE)
    extra_splits: dict = field(default_factory=dict)


#: ``sweep.split`` naming the ``data.holdout`` samples of the training split rather than a split of the shards.
HOLDOUT_SPLIT = "holdout"


@dataclass(frozen=True)
class SweepParams:
    temperatures: tuple = (0.0, 0.5, 0.8, 1.0)
    n_samples: Optional[int] = field(default=None, metadata=POSITIVE)
    # The split a temperature is chosen on (default the eval split). "holdout": the last data.holdout samples of
    # data.train_split, the ones train.select picks the checkpoint on (a training set without a validation split).
    split: Optional[str] = None
    # Score only the sweep split's first N images (shard order, whole batches of eval.batch_size): a temperature
    # is chosen on a large validation split (the CelebA subset's 1,000) at a fraction of its cost.
    max_images: Optional[int] = field(default=None, metadata=POSITIVE)
    # Also score eval.extra_splits (the SR test sets) at every temperature, so each temperature's test scores are
    # on record; false: the sweep split alone (all that choosing a temperature needs).
    extra_splits: bool = True


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
        """Plain nested dict (JSON/YAML-safe), e.g. to log as an artifact; ``model`` holds only the set options."""
        out = _plain(dataclasses.asdict(self))
        out["model"] = _plain({"family": self.model.family, **self.model.build_options()})
        return out

    def flatten(self) -> dict:
        """``{"train.lr": 0.001, "model.levels": 2, ...}`` for MLflow params."""
        return flatten(self.to_dict())

    def seed_run(self, k: int) -> "ExperimentParams":
        """Run ``k`` of ``train.seeds`` (k = 0 is the experiment itself): named ``<exp>-seed<k>``, trained with
        seed ``train.seed + k``; its own Ray run, MLflow run and registered model."""
        if not 0 <= k < self.train.seeds:
            raise ValueError(f"experiments.{self.name}.train.seeds is {self.train.seeds}: no seed run {k}")
        if k == 0:
            return self
        return dataclasses.replace(self, name=f"{self.name}-seed{k}",
                                   train=dataclasses.replace(self.train, seed=self.train.seed + k, seeds=1))


@dataclass(frozen=True)
class Params:
    profile: Literal["demo", "cpu", "paper"]
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
        # `1 == True` in Python: a boolean choice matches booleans only, and a number no boolean
        if not any(value == a and isinstance(value, bool) == isinstance(a, bool) for a in typing.get_args(tp)):
            raise _fail(path, f"expected {_describe(tp)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path)
    adjective = {"positive": "a positive ", "non-negative": "a non-negative ", "min-1": "an "}.get(check, "")
    if tp is bool:
        if not isinstance(value, bool):
            raise _fail(path, f"expected a boolean (true/false), got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if not (isinstance(value, float) and value.is_integer()):
                raise _fail(path, f"expected {adjective or 'an '}integer"
                                  f"{' >= -1' if check == 'min-1' else ''}, got {value!r}")
            value = int(value)
    elif tp is float:
        if isinstance(value, str) and _NUMBER.match(value.strip()):
            value = float(value)  # YAML 1.1 reads "1e-3" (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _fail(path, f"expected {adjective or 'a '}float, got {value!r}")
        value = float(value)
        if not math.isfinite(value):  # `.inf` is "positive", and no setting of ours means infinity or NaN
            raise _fail(path, f"expected {adjective or 'a '}finite float, got {value!r}")
    elif tp is str:
        if not isinstance(value, str):
            raise _fail(path, f"expected a string, got {value!r}")
        return value
    elif tp is dict:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise _fail(path, f"expected a mapping, got {value!r}")
        return dict(value)
    elif tp is tuple:
        if isinstance(value, str):
            return (value,)
        if not isinstance(value, (list, tuple)):
            raise _fail(path, f"expected a list, got {value!r}")
        return tuple(value)
    if check == "positive" and not value > 0:
        raise _fail(path, f"expected a positive {'integer' if tp is int else 'float'}, got {value!r}")
    if check == "non-negative" and not value >= 0:
        raise _fail(path, f"expected a non-negative {'integer' if tp is int else 'float'}, got {value!r}")
    if check == "min-1" and value < -1:
        raise _fail(path, f"expected an integer >= -1, got {value!r}")
    return value


def _build(cls, raw, path: str):
    if not isinstance(raw, Mapping):
        raise _fail(path, f"expected a mapping, got {raw!r}")
    if cls is ModelParams:  # the family decides which options exist
        if "family" not in raw:
            raise _fail(path, "missing required key(s): family")
        cls = MODEL_PARAMS[_convert(Literal[FAMILIES], raw["family"], f"{path}.family")]
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
            family = f" for family {raw['family']!r}" if issubclass(cls, ModelParams) else ""
            raise _fail(f"{path}.{key}", f"unknown key{family}; allowed keys: {allowed}")
    if passthrough is not None:
        values[passthrough] = extra
    missing = [k for k, f in fields.items() if k not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise _fail(path, f"missing required key(s): {', '.join(missing)}")
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


def _sections_at(path: list[str], family: str | None) -> list[type]:
    """The schema dataclasses at ``path`` below ``experiments.<name>`` ([] when ``path`` is not a section).

    ``model`` is the class of ``family`` (every family's when it is not known yet).
    """
    classes: list[type] = [ExperimentParams]
    for part in path:
        found: list[type] = []
        for cls in classes:
            tp = typing.get_type_hints(cls).get(part) if part in {f.name for f in dataclasses.fields(cls)} else None
            if typing.get_origin(tp) is Union:
                tp = next(a for a in typing.get_args(tp) if a is not type(None))
            if tp is ModelParams:
                found += [MODEL_PARAMS[family]] if family in MODEL_PARAMS else list(MODEL_PARAMS.values())
            elif dataclasses.is_dataclass(tp):
                found.append(tp)
        classes = found
    return classes


def _schema_fields(path: list[str], family: str | None = None) -> list[str]:
    """Field names of the schema section at ``path`` (below ``experiments.<name>``), [] when not a section."""
    names: list[str] = []
    for cls in _sections_at(path, family):
        names += [f.name for f in dataclasses.fields(cls)
                  if (f.name not in ("name", "options") or cls is DataParams) and f.name not in names]
    return names


def _schema_has(path: list[str], family: str | None = None) -> bool:
    """Whether ``path`` (below ``experiments.<name>``) is a field of the schema."""
    return bool(path) and path[-1] in _schema_fields(path[:-1], family)


def _family(raw: Mapping, experiment: str) -> str | None:
    body = (raw.get("experiments") or {}).get(experiment)
    model = body.get("model") if isinstance(body, Mapping) else None
    return model.get("family") if isinstance(model, Mapping) else None


def apply_overrides(raw: dict, overrides, experiment: str | None = None) -> dict:
    """Apply ``key=value`` overrides to the raw (defaults-merged) mapping; unknown keys are rejected."""
    return _apply_overrides(raw, overrides, experiment)[0]


def _apply_overrides(raw: dict, overrides, experiment: str | None) -> tuple[dict, set[str]]:
    """``apply_overrides`` and the dotted keys it set."""
    raw = copy.deepcopy(raw)
    done: set[str] = set()
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
        family = _family(raw, parts[1]) if parts[0] == "experiments" and len(parts) > 1 else None
        node = raw
        for i, part in enumerate(parts[:-1]):
            if not isinstance(node, dict) or part not in node:
                if isinstance(node, dict) and parts[0] == "experiments" and i >= 2 \
                        and _schema_has(parts[2: i + 1], family):
                    node[part] = {}
                else:
                    raise ParamsError(f"--set {key}: unknown key {'.'.join(parts[: i + 1])!r}"
                                      + (f"; allowed: {', '.join(map(str, node))}" if isinstance(node, dict) else ""))
            node = node[part]
        last = parts[-1]
        known = (last in node) if isinstance(node, dict) else False
        if not known and not (parts[0] == "experiments" and len(parts) > 2 and _schema_has(parts[2:], family)) \
                and not (parts[0] == "mlflow" and last in {f.name for f in dataclasses.fields(MlflowParams)}):
            names = list(map(str, node)) if isinstance(node, dict) else []
            if parts[0] == "experiments" and len(parts) > 2:
                names += [n for n in _schema_fields(parts[2:-1], family) if n not in names]
            allowed = ", ".join(names) or "(not a mapping)"
            raise ParamsError(f"--set {key}: unknown key; allowed here: {allowed}")
        node[last] = _parse_value(text)
        done.add(".".join(parts))
    return raw, done


def _has(mapping: Any, parts: list[str]) -> bool:
    for part in parts:
        if not isinstance(mapping, Mapping) or part not in mapping:
            return False
        mapping = mapping[part]
    return True


def _blame_defaults(exc: ParamsError, name: str, own: Any, defaults: Mapping, overridden: set[str]) -> ParamsError:
    """``exc`` about ``experiments.<name>.<key>`` renamed to ``defaults.<key>`` when that value came from there."""
    prefix = f"experiments.{name}."
    if not exc.key or not exc.key.startswith(prefix) or exc.key in overridden:
        return exc
    parts = exc.key[len(prefix):].split(".")
    if _has(own, parts) or not _has(defaults, parts):
        return exc
    key = "defaults." + ".".join(parts)
    return ParamsError(f"{key}: {exc.problem} (merged into experiments.{name})", key=key, problem=exc.problem)


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
    defaults = raw.get("defaults") or {}
    own = raw.get("experiments") if isinstance(raw.get("experiments"), Mapping) else {}
    raw, overridden = _apply_overrides(merge_defaults(raw), overrides, experiment)
    allowed = {"profile", "mlflow", "datasets", "experiments"}
    for key in raw:
        if key not in allowed and key not in OTHER_SECTIONS:
            raise ParamsError(f"{key}: unknown top-level key; allowed keys: "
                              f"{', '.join(['defaults', *sorted(allowed), *OTHER_SECTIONS])}")
    if "profile" not in raw:
        raise ParamsError(f"{source}: missing required key: profile (demo | paper)")
    profile = _convert(Literal["demo", "cpu", "paper"], raw["profile"], "profile")
    mlflow = _build(MlflowParams, raw.get("mlflow") or {}, "mlflow")
    datasets_raw = _convert(dict, raw.get("datasets") or {}, "datasets")
    datasets = {name: _build(DatasetParams, body, f"datasets.{name}") for name, body in datasets_raw.items()}
    exps_raw = raw.get("experiments")
    if not isinstance(exps_raw, Mapping) or not exps_raw:
        raise ParamsError("experiments: expected a non-empty mapping of experiment name -> settings")
    experiments = {}
    for name, body in exps_raw.items():
        path = f"experiments.{name}"
        if not isinstance(body, Mapping):
            raise ParamsError(f"{path}: expected a mapping, got {body!r}")
        if "name" in body:
            raise ParamsError(f"{path}.name: unknown key (the name is the mapping key)")
        try:
            exp = _build(ExperimentParams, {"name": name, **body}, path)
        except ParamsError as exc:  # a value merged in from `defaults` is wrong there, not in the experiment
            raise _blame_defaults(exc, name, own.get(name), defaults, overridden) from None
        if exp.data.dataset not in datasets:
            raise ParamsError(f"{path}.data.dataset: {exp.data.dataset!r} is not in datasets "
                              f"({', '.join(sorted(datasets)) or 'none declared'})")
        if exp.data.eval_dataset is not None and exp.data.eval_dataset not in datasets:
            raise ParamsError(f"{path}.data.eval_dataset: {exp.data.eval_dataset!r} is not in datasets "
                              f"({', '.join(sorted(datasets))})")
        if exp.train.select and not exp.data.holdout:
            raise ParamsError(f"{path}.train.select: model selection needs held-out samples; set "
                              f"{path}.data.holdout to how many of {exp.data.train_split!r} to hold out")
        if exp.sweep.split == HOLDOUT_SPLIT and not exp.data.holdout:
            raise ParamsError(f"{path}.sweep.split: {HOLDOUT_SPLIT!r} is the held-out tail of "
                              f"{exp.data.train_split!r}; set {path}.data.holdout to how many samples it holds")
        if exp.train.lr_schedule == "cosine" and exp.train.steps <= exp.train.warmup_steps:
            raise ParamsError(f"{path}.train.lr_schedule: 'cosine' decays after the warm-up, so it needs "
                              f"train.steps ({exp.train.steps}) > train.warmup_steps ({exp.train.warmup_steps})")
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
