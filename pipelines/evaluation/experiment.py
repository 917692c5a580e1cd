"""An experiment's evaluation: which splits it is scored on, where their shards are, which run it reports to.

``evaluate_experiment`` scores a trained model on the eval split of ``data.eval_dataset`` (else
``data.dataset``) and on ``eval.extra_splits`` (the SR benchmarks of Winkler et al. 2019, Table 2), each with
the task's protocol (``pipelines/tasks/``).
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
    """The ``mlflow_run_id`` recorded by `cnf train` in ``metrics/train/<exp>.json`` (None when absent)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get("mlflow_run_id")
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None


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


def evaluate_experiment(exp, model, data_dir: str | Path, *, seed: int = 0, n_samples: int | None = None,
                        temperature: float | None = None, splits: Mapping[str, Mapping[str, Any]] | None = None) -> dict:
    """Evaluate ``model`` for experiment ``exp`` (``ExperimentParams``) on ``splits`` (default ``eval_splits``).

    ``splits`` maps a result name to ``{dataset, split[, size, batch_size, bpd_crops]}``; ``n_samples`` and
    ``temperature`` default to the experiment's ``eval`` section. Returns ``{name: summary}``, each summary
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
        loader = make_loader(dest, split, exp.task, batch_size=spec.get("batch_size", exp.eval.batch_size),
                             train=False, rank=0, world_size=1, num_workers=0, seed=seed, **kwargs)
        summary = evaluate_split(model, loader, task, n_samples=n_samples, temperature=temperature,
                                 label=f"{exp.name}/{name}", total=loader.num_samples,
                                 max_batches=exp.eval.max_batches, bpd_crops=spec.get("bpd_crops"), seed=seed)
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
