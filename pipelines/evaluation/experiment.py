"""An experiment's evaluation: which splits it is scored on, where their shards are, which run it reports to.

``evaluate_experiment`` scores a trained model on the eval split of ``data.eval_dataset`` (else
``data.dataset``) and on ``eval.extra_splits`` (the SR benchmarks of Winkler et al. 2019, Table 2), each with
the task's protocol (``pipelines/tasks/``). ``eval_outputs`` splits the results into the metrics file's numbers
and the info file's rest; ``load_experiment_model`` refuses a checkpoint that is not the experiment's.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch

from pipelines.evaluation.split import CropProtocol, evaluate_split, finite_scalars
from pipelines.tasks import get_task


def dataset_folder(data_dir: str | Path, dataset: str, trained_on: str) -> str:
    """Shards of ``dataset``: ``<data_dir>/<dataset>``, where ``data_dir`` holds one folder per dataset.

    ``data_dir`` may also be the training dataset's own folder (the form `cnf train --data` takes, it holds a
    manifest.json): then the training dataset is that folder and the others are its siblings.
    """
    data_dir = Path(data_dir)
    if (data_dir / "manifest.json").is_file():
        return str(data_dir) if dataset == trained_on else str(data_dir.parent / dataset)
    return str(data_dir / dataset)


def train_run_id(path: str | Path) -> str | None:
    """The ``mlflow_run_id`` recorded by `cnf train` in its info file (``info/train/<exp>.json``; None when
    the file or the id is absent)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get("mlflow_run_id")
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None


TRAINING_COST = ("steps", "wall_s", "fit_s", "samples_per_s", "machine")  # of info/train/<exp>.json


def training_cost(path: str | Path) -> dict | None:
    """What training ``path``'s run cost, as `cnf train` recorded it (``TRAINING_COST``; None without the file)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    return {k: info[k] for k in TRAINING_COST if info.get(k) is not None} or None


def eval_dataset(exp) -> str:
    """The dataset an experiment's eval split is read from: ``data.eval_dataset``, else ``data.dataset``."""
    return exp.data.eval_dataset or exp.data.dataset


#: Keys of an ``eval.extra_splits`` entry (``bpd_crops``: Winkler et al. 2019, Table 2's crop protocol).
EXTRA_SPLIT_KEYS = ("dataset", "split", "size", "batch_size", "bpd_crops")


def eval_splits(exp) -> dict[str, dict[str, Any]]:
    """``{result name: {dataset, split[, size, batch_size, bpd_crops]}}``: the eval split, then
    ``eval.extra_splits``; ``bpd_crops`` is parsed into a :class:`CropProtocol`."""
    splits = {exp.data.eval_split: {"dataset": eval_dataset(exp), "split": exp.data.eval_split}}
    for name, extra in (exp.eval.extra_splits or {}).items():
        where = f"experiments.{exp.name}.eval.extra_splits.{name}"
        if not isinstance(extra, Mapping) or "dataset" not in extra or set(extra) - set(EXTRA_SPLIT_KEYS):
            raise ValueError(f"{where}: expected {{dataset: <name>, split: <split>[, size: N, batch_size: N, "
                             f"bpd_crops: {{count: N, size: S}}]}}, got {extra!r}")
        # Benchmarks (Set5, Set14, BSD100) are scored at their native sizes, which differ per image: one
        # image per batch and no resize, unless the extra split says otherwise.
        splits[name] = {"split": "test", "size": None, "batch_size": 1, **extra}
        if "bpd_crops" in extra:
            splits[name]["bpd_crops"] = CropProtocol.parse(extra["bpd_crops"], f"{where}.bpd_crops")
    return splits


def held_out_options(spec: Mapping[str, Any]) -> dict[str, Any]:
    """``make_loader`` options that read only the last ``spec["holdout"]`` samples of the split (the ones a
    training run held out, ``sweep.split: holdout``); none for a split read whole."""
    return {"holdout": int(spec["holdout"]), "held_out": True} if spec.get("holdout") else {}


def evaluate_experiment(exp, model, data_dir: str | Path, *, seed: int = 0, n_samples: int | None = None,
                        temperature: float | None = None, splits: Mapping[str, Mapping[str, Any]] | None = None) -> dict:
    """Evaluate ``model`` for experiment ``exp`` (``ExperimentParams``) on ``splits`` (default ``eval_splits``).

    ``splits`` maps a result name to ``{dataset, split[, size, batch_size, bpd_crops, max_images, holdout]}``
    (``max_images``: the split's first images only, rounded up to whole batches; a sweep's cap; ``holdout``: N,
    the split's last N samples only, those a training run held out); ``n_samples``
    and ``temperature`` default to the experiment's ``eval`` section. Returns ``{name: summary}``, each summary
    with its ``dataset`` and ``split``.
    """
    from pipelines.data.loader import loader_options, make_loader

    # The scorer sees the task with the same options the loader applies (e.g. data.options.scale).
    task = get_task(exp.task).with_options(**(exp.data.options or {}))
    n_samples = n_samples or exp.eval.n_samples
    temperature = exp.eval.temperature if temperature is None else temperature
    results = {}
    for name, spec in (eval_splits(exp) if splits is None else splits).items():
        dataset, split = spec["dataset"], spec.get("split", "test")
        dest = dataset_folder(data_dir, dataset, exp.data.dataset)
        torch.manual_seed(seed)  # the same samples on every run: evaluation is deterministic
        kwargs = loader_options(exp.data, train=False)
        if "size" in spec:
            kwargs.pop("size", None)
            if spec["size"]:
                kwargs["size"] = spec["size"]
        batch_size = spec.get("batch_size", exp.eval.batch_size)
        kwargs.update(held_out_options(spec))
        loader = make_loader(dest, split, exp.task, batch_size=batch_size,
                             train=False, rank=0, world_size=1, num_workers=0, seed=seed, **kwargs)
        max_batches, total = exp.eval.max_batches, loader.num_samples
        if spec.get("max_images"):
            capped = -(-int(spec["max_images"]) // batch_size)
            max_batches = capped if max_batches is None else min(max_batches, capped)
            total = min(total, capped * batch_size)
        summary = evaluate_split(model, loader, task, n_samples=n_samples, temperature=temperature,
                                 label=f"{exp.name}/{name}", total=total,
                                 max_batches=max_batches, bpd_crops=spec.get("bpd_crops"), seed=seed)
        summary.update({"dataset": dataset, "split": split})
        results[name] = summary
    return results


def scalar_metrics(results: Mapping[str, Mapping[str, Any]], prefix: str = "eval") -> dict[str, float]:
    """``{"<prefix>.<split>.<metric>": value}`` for every finite number of every split's summary (for MLflow)."""
    return {f"{prefix}.{name}.{key}": float(value)
            for name, summary in results.items() for key, value in finite_scalars(summary).items()}


def eval_figures(exp_name: str, results: Mapping[str, Mapping[str, Any]], folder: str | Path) -> list[Path]:
    """PR curve and PR-sample scatter of the splits whose summary has them (Winkler et al. 2019, Figure 5)."""
    from pipelines.reporting import figures

    paths = []
    for name, s in results.items():
        if "curve" in s:
            paths.append(figures.pr_curves({exp_name: s["curve"]}, Path(folder) / f"{exp_name}_{name}_pr_curve.png",
                                           title=f"{exp_name} ({name}): precision-recall"))
        if s.get("samples_pr", {}).get("precision"):
            paths.append(figures.pr_scatter({exp_name: s["samples_pr"]}, Path(folder) / f"{exp_name}_{name}_pr_samples.png",
                                            title=f"{exp_name} ({name}): samples in PR space"))
    return paths


# ------------------------------------------------------------------------------------ outputs: metrics, info, plots


def eval_outputs(exp, results: Mapping[str, Mapping[str, Any]], **info: Any) -> tuple[dict, dict]:
    """``(metrics, info)`` of an evaluation: ``metrics`` = ``{split: {metric: number}}`` (the task's summary
    metrics, nothing else); ``info`` = the keyword arguments (labels, run id, temperature, ...) plus
    ``splits: {split: the rest of its summary}``."""
    from pipelines.evaluation.outputs import summary_info, summary_metrics, without_none

    task = get_task(exp.task).with_options(**(exp.data.options or {}))
    metrics = {name: summary_metrics(task, s) for name, s in results.items()}
    return ({k: v for k, v in metrics.items() if v},
            {**without_none(info), "splits": {name: summary_info(task, s) for name, s in results.items()}})


# ------------------------------------------------------------------------------------- which checkpoint is this


def checkpoint_mismatch(exp, ckpt: Mapping[str, Any], source: str) -> str | None:
    """Why checkpoint ``ckpt`` (``flowlib.checkpoint.load_checkpoint``'s dict, read from ``source``) is not a
    model of experiment ``exp``, or None when it is: the experiment `cnf train` recorded in it (``experiment``)
    must be ``exp.name``, and its ``config`` must be the family and options the experiment builds (each option
    both name; a checkpoint from elsewhere may carry no experiment name, then only the config is compared)."""
    from flowlib.models import upgrade_config

    trained = ckpt.get("experiment")
    if trained is not None and trained != exp.name:
        return (f"{source} is a checkpoint of experiment {trained!r}, not of {exp.name!r} (evaluate it as "
                f"{trained!r}, or pass the model of {exp.name!r})")
    config = upgrade_config(ckpt.get("config") or {})
    if config.get("family") != exp.model.family:
        return (f"{source} holds a {config.get('family')!r} model, but experiments.{exp.name}.model.family is "
                f"{exp.model.family!r}")
    built = exp.model.build_options()
    if "param_budget" in built:  # the budget picked `hidden` when it was built: compare what it fixed
        built = {k: v for k, v in built.items() if k not in ("param_budget", "hidden")}
    for key, want in built.items():
        if key in config and config[key] != want:
            return (f"{source} was built with model.{key}={config[key]!r}, but experiments.{exp.name}.model.{key} is "
                    f"{want!r}: it is not a model of {exp.name!r} as params.yaml describes it (retrain it)")
    return None


def load_experiment_model(exp, source: str | Path, *, any_checkpoint: bool = False):
    """The model of checkpoint ``source`` (``flowlib.load_model``), refused with a ``ValueError`` naming both
    when it is not a model of ``exp`` (``checkpoint_mismatch``); ``any_checkpoint`` loads it with a warning."""
    import sys

    from flowlib.checkpoint import load_checkpoint, load_model

    problem = checkpoint_mismatch(exp, load_checkpoint(source), str(source))
    if problem and not any_checkpoint:
        raise ValueError(f"{problem}; --any-checkpoint uses it anyway")
    if problem:
        print(f"warning: {problem}", file=sys.stderr)
    return exp.scaling.configure(load_model(source))  # evaluated as it was trained (layout, precision)
