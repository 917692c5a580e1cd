"""Stage `cnf evaluate`: a trained experiment on its test split (and extra splits) -> metrics JSON + MLflow.

    cnf evaluate EXPERIMENT [--params params.yaml] [--model models/<exp>.pt] [--data DIR]
                 [--out metrics/eval/<exp>.json] [--train-metrics metrics/train/<exp>.json] [--set k=v ...]

Predictions are the mean of ``eval.n_samples`` samples at ``eval.temperature`` (Lu & Huang 2020, sec. 4.3;
Winkler et al. 2019, sec. 5.2 takes the mean of 100 samples as the soft map). Per task:

- every task: bits/dim from ``model.log_likelihood`` (8-bit targets: discrete over 256 levels; binary /
  categorical flows: the dequantization lower bound; factorized: the exact normalised likelihood), total NLL
  over total dimensions (padding included, as the model sees it).
- ``sr``: PSNR/SSIM on the BT.601 Y channel, ``scale`` pixels shaved, 8-bit rounded, inside the valid region
  (Winkler et al. 2019, Table 2).
- ``vessel``: max F-score over thresholds of the soft mean, DRIU protocol inside the FOV (P/R averaged over
  images, F of the averages); the PR curve; precision/recall of individual samples for the PR scatter
  (Winkler et al. 2019, Table 3, Figure 5).
- ``horses``: foreground IoU per image, averaged over images (c-Glow Table 1, DVN convention).
- ``parts``: super-pixel accuracy (c-Glow Table 2); super-pixels from the batch's ``superpixels`` when the
  shards carry them, else SLIC super-pixels of ``x`` (documented in the output as ``superpixels: slic``).
- ``denoise``: PSNR of the clean-image prediction on [0, 1] over all pixels and channels (c-Glow Table 3; the
  residual form x - n of the paper gives the same image).
- ``depth``: PSNR in metres inside the valid-depth mask with peak ``tasks.DEPTH_MAX_M`` (c-Glow Table 4).
- ``inpaint``: PSNR (8-bit, peak 255) of the hidden central block, the region the model predicts (c-Glow
  Table 5).

Writes ``--out`` atomically with the ``mlflow_run_id`` of the experiment's training run (read from
``metrics/train/<exp>.json``) and logs ``eval.<split>.<metric>`` metrics and plots to that run.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch

from flowlib import metrics

SCATTER_SAMPLES = 5  # individual samples per image for the PR scatter (Winkler et al. 2019, Figure 5 right)

# Which table each (task) metric fills, and its display name; also used by sweep and tables.
SUMMARY_METRICS = {
    "sr": ("bpd", "psnr", "ssim"),
    "vessel": ("bpd", "f1", "precision", "recall"),
    "horses": ("bpd", "iou"),
    "parts": ("bpd", "spa", "pixel_accuracy"),
    "denoise": ("bpd", "psnr"),
    "depth": ("bpd", "psnr"),
    "inpaint": ("bpd", "psnr"),
}


# ---------------------------------------------------------------------------------------------- accumulators


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().double().numpy()


def _valid_box(mask: np.ndarray | None, shape: tuple[int, int]) -> tuple[slice, slice]:
    """Bounding box of the valid region (the loader pads images; scores ignore the padding)."""
    if mask is None or not mask.any():
        return slice(0, shape[0]), slice(0, shape[1])
    rows, cols = np.nonzero(mask)
    return slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1)


class TaskScorer:
    """Collects one split's per-image results batch by batch and summarises them with the task's protocol."""

    def __init__(self, task, scale: int | None = None):
        self.task = task
        self.name = task.name
        self.scale = scale or getattr(task, "scale", None) or 2
        self.ll: list[float] = []
        self.dims: list[int] = []
        self.values: dict[str, list[float]] = {}
        self.soft: list[np.ndarray] = []
        self.targets: list[np.ndarray] = []
        self.masks: list[np.ndarray] = []
        self.sample_p: list[float] = []
        self.sample_r: list[float] = []
        self.seg_preds: list[np.ndarray] = []
        self.seg_targets: list[np.ndarray] = []
        self.sp_preds: list[np.ndarray] = []
        self.sp_targets: list[np.ndarray] = []
        self.sp_maps: list[np.ndarray] = []
        self.superpixel_source = None
        self.keys: list[str] = []

    def _add(self, key: str, value: float) -> None:
        self.values.setdefault(key, []).append(float(value))

    def add_likelihood(self, ll: torch.Tensor, num_dims: int) -> None:
        self.ll.extend(_np(ll).tolist())
        self.dims.extend([int(num_dims)] * ll.shape[0])

    def add_batch(self, batch: Mapping[str, Any], out: Mapping[str, torch.Tensor], samples: list[torch.Tensor]) -> None:
        y, x = batch["y"], batch["x"]
        mask = batch.get("mask")
        if out["mean"].shape[0] != y.shape[0] or out["mean"].shape[-2:] != y.shape[-2:]:
            raise ValueError(f"task {self.name}: the model predicts {tuple(out['mean'].shape)} for targets "
                             f"{tuple(y.shape)} (keys {list(batch.get('key', []))}); a model fixed to its training "
                             "shape cannot score these images (set eval sizes to match, or make the model "
                             "size-agnostic)")
        self.keys.extend(list(batch.get("key", [])))
        for i in range(y.shape[0]):
            yi = _np(y[i])
            mi = _np(mask[i, 0]) > 0.5 if mask is not None else None
            pred = _np(out["prediction"][i])
            mean = _np(out["mean"][i])
            name = self.name
            if name == "sr":
                rows, cols = _valid_box(mi, yi.shape[-2:])
                p, t = pred[:, rows, cols] / 255.0, yi[:, rows, cols] / 255.0
                p = np.clip(np.rint(p * 255.0), 0, 255) / 255.0
                yp, yt = metrics.shave(metrics.rgb_to_y(p), self.scale), metrics.shave(metrics.rgb_to_y(t), self.scale)
                self._add("psnr", metrics.psnr(yp, yt, 255.0))
                if min(yt.shape) >= 11:
                    self._add("ssim", metrics.ssim(yp, yt, 255.0))
            elif name == "vessel":
                m = mi if mi is not None else np.ones(yi.shape[-2:], bool)
                self.soft.append(mean[0])
                self.targets.append(yi[0] > 0.5)
                self.masks.append(m)
                for s in samples:
                    p, r = metrics.precision_recall(_np(s[i, 0]) > 0.5, yi[0] > 0.5, m)
                    self.sample_p.append(float(p[0]))
                    self.sample_r.append(float(r[0]))
            elif name == "horses":
                rows, cols = _valid_box(mi, yi.shape[-2:])
                self.seg_preds.append(pred[0, rows, cols])
                self.seg_targets.append(yi[0, rows, cols])
            elif name == "parts":
                rows, cols = _valid_box(mi, yi.shape[-2:])
                sp = batch.get("superpixels")
                if sp is not None:
                    spi = _np(sp[i]).reshape(yi.shape[-2:])[rows, cols].astype(np.int64)
                    self.superpixel_source = "shards"
                else:
                    spi = slic_superpixels(_np(x[i]), yi.shape[-2:])[rows, cols]
                    self.superpixel_source = "slic"
                self.sp_preds.append(pred[0, rows, cols])
                self.sp_targets.append(yi[0, rows, cols])
                self.sp_maps.append(spi)
                self._add("pixel_accuracy", float(np.mean(np.rint(pred[0, rows, cols]) == np.rint(yi[0, rows, cols]))))
            elif name == "denoise":
                rows, cols = _valid_box(mi, yi.shape[-2:])
                self._add("psnr", metrics.psnr(np.clip(pred[:, rows, cols], 0, 1), yi[:, rows, cols], 1.0))
            elif name == "depth":
                from pipelines.tasks import DEPTH_MAX_M

                m = mi if mi is not None else np.ones(yi.shape[-2:], bool)
                if m.any():
                    self._add("psnr", metrics.psnr(pred[0][m], yi[0][m], DEPTH_MAX_M))
            elif name == "inpaint":
                m = mi if mi is not None else np.ones(yi.shape[-2:], bool)
                p = np.clip(np.rint(pred), 0, 255)
                self._add("psnr", metrics.psnr(p[:, m], yi[:, m], 255.0))
            else:
                raise ValueError(f"no evaluation protocol for task {name!r}")

    def summary(self) -> dict:
        out: dict[str, Any] = {"n": len(self.ll)}
        if self.ll:
            out["bpd"] = metrics.dataset_bits_per_dim(self.ll, self.dims)
            out["nll_nats"] = float(-np.mean(self.ll))
        for key, vals in self.values.items():
            if vals:
                out[key] = float(np.mean(vals))  # a perfect image (PSNR inf) makes the mean inf, as it should
                out[f"{key}_per_image"] = vals
        if self.name == "vessel" and self.soft:
            res = metrics.vessel_fscore(self.soft, self.targets, self.masks)
            out.update({k: res[k] for k in ("f1", "precision", "recall", "threshold")})
            out["curve"] = res["curve"]
            out["per_image"] = res["per_image"]
            out["samples_pr"] = {"precision": self.sample_p, "recall": self.sample_r}
        if self.name == "horses" and self.seg_preds:
            out["iou"] = metrics.iou(self.seg_preds, self.seg_targets, mode="foreground")
            out["iou_classes"] = metrics.iou(self.seg_preds, self.seg_targets, mode="classes")
        if self.name == "parts" and self.sp_preds:
            out["spa"] = metrics.superpixel_accuracy(self.sp_preds, self.sp_targets, self.sp_maps)
            out["superpixels"] = self.superpixel_source
        out["keys"] = self.keys
        return out


def slic_superpixels(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """SLIC super-pixels of an input image ``(C, H, W)`` in [0, 1], about 16 pixels each (LFW fallback)."""
    from skimage.segmentation import slic

    img = np.asarray(x, dtype=np.float64)[:, : shape[0], : shape[1]].transpose(1, 2, 0)
    n = max(4, (shape[0] * shape[1]) // 16)
    return slic(img, n_segments=n, compactness=10.0, start_label=0, channel_axis=-1 if img.shape[-1] > 1 else None)


# ------------------------------------------------------------------------------------------------- evaluation


def task_name(name: str) -> str:
    """The protocol a params.yaml task key uses (``pipelines.tasks`` name; unknown keys pass through)."""
    try:
        from pipelines.tasks import get_task

        return get_task(name).name
    except KeyError:
        return name


def evaluate_split(model, batches: Iterable[Mapping[str, Any]], task, *, n_samples: int, temperature: float,
                   scale: int | None = None, scatter_samples: int = SCATTER_SAMPLES, label: str = "eval",
                   total: int | None = None, max_batches: int | None = None) -> dict:
    """Run ``model`` over ``batches`` of one split and summarise the task's metrics (see the module docstring)."""
    scorer = TaskScorer(task, scale)
    start = time.monotonic()
    done = 0
    model.eval()
    with torch.no_grad():
        for b, batch in enumerate(batches):
            if max_batches is not None and b >= max_batches:
                break
            y, x = batch["y"].float(), batch["x"].float()
            scorer.add_likelihood(model.log_likelihood(y, x), int(model.num_dims(y)))
            out = model.predict(x, n_samples=n_samples, temperature=temperature)
            samples = []
            if task.name == "vessel":
                samples = [model.sample(x, temperature=temperature) for _ in range(min(scatter_samples, n_samples))]
            scorer.add_batch(batch, out, samples)
            done += y.shape[0]
            elapsed = time.monotonic() - start
            rate = done / elapsed if elapsed > 0 else float("inf")
            eta = f", ETA {(total - done) / rate:.0f}s" if total and rate > 0 and total >= done else ""
            print(f"[{label}] batch {b + 1}: {done}{f'/{total}' if total else ''} samples ({rate:.2f}/s{eta})",
                  file=sys.stderr, flush=True)
    if done == 0:
        raise ValueError(f"[{label}] no batches to evaluate")
    return scorer.summary()


def count_samples(dest: str, split: str) -> int | None:
    try:
        from pipelines.data import shards

        manifest = shards.read_manifest(dest)
        return int(manifest["splits"][split]["count"]) if manifest else None
    except Exception:  # noqa: BLE001 - a count is only for the ETA
        return None


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


def evaluate_experiment(exp, model, data_dir: str | Path, *, seed: int = 0, n_samples: int | None = None,
                        temperature: float | None = None, splits: Mapping[str, Mapping[str, Any]] | None = None) -> dict:
    """Evaluate ``model`` for experiment ``exp`` (``ExperimentParams``) on its eval split and extra splits.

    ``splits`` maps a result name to ``{dataset, split[, size, batch_size]}``; default: the eval split of
    ``data.eval_dataset`` (else ``data.dataset``) plus ``eval.extra_splits``. Returns ``{name: summary}``.
    """
    from pipelines.data.loader import loader_options, make_loader
    from pipelines.tasks import get_task

    task = get_task(exp.task)
    n_samples = n_samples or exp.eval.n_samples
    temperature = exp.eval.temperature if temperature is None else temperature
    if splits is None:
        primary = getattr(exp.data, "eval_dataset", None) or exp.data.dataset
        splits = {exp.data.eval_split: {"dataset": primary, "split": exp.data.eval_split}}
        for name, extra in (exp.eval.extra_splits or {}).items():
            if not isinstance(extra, Mapping) or "dataset" not in extra:
                raise ValueError(f"experiments.{exp.name}.eval.extra_splits.{name}: expected "
                                 f"{{dataset: <name>, split: <split>[, size: N, batch_size: N]}}, got {extra!r}")
            # Benchmarks (Set5, Set14, BSD100) are scored at their native sizes, which differ per image: one
            # image per batch and no resize, unless the extra split says otherwise.
            splits[name] = {"split": "test", "size": None, "batch_size": 1, **extra}
    results = {}
    for name, spec in splits.items():
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
                                 scale=getattr(task, "scale", None), label=f"{exp.name}/{name}",
                                 total=getattr(loader, "num_samples", None) or count_samples(dest, split),
                                 max_batches=exp.eval.max_batches)
        summary.update({"dataset": dataset, "split": split})
        results[name] = summary
    return results


def _scalar_metrics(results: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    out = {}
    for name, summary in results.items():
        for key, value in summary.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value)):
                out[f"eval.{name}.{key}"] = float(value)
    return out


def eval_figures(exp_name: str, results: Mapping[str, Mapping[str, Any]], folder: str | Path) -> list[Path]:
    """PR curve and PR-sample scatter for vessel splits (Winkler et al. 2019, Figure 5)."""
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


# ------------------------------------------------------------------------------------------------------- CLI


def add_trained_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments shared by the stages that run a trained experiment (`cnf evaluate`, `cnf sweep`)."""
    parser.add_argument("experiment", help="experiment name in params.yaml")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--model", default=None, help="checkpoint (default models/<exp>.pt) or runs:/<run_id>")
    parser.add_argument("--data", default="data", help="folder holding one shard folder per dataset "
                        "(data/<dataset>), or the training dataset's own folder")
    parser.add_argument("--train-metrics", default=None, help="default metrics/train/<exp>.json (for the run id)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")


def configure(parser: argparse.ArgumentParser) -> None:
    add_trained_model_arguments(parser)
    parser.add_argument("--out", default=None, help="metrics JSON (default metrics/eval/<exp>.json)")
    parser.add_argument("--figures", default=None, help="also write the PR figures here (default: MLflow only)")


def run(args: argparse.Namespace) -> int:
    import tempfile

    from flowlib.checkpoint import load_model
    from pipelines.params import load_params
    from pipelines.io import write_json

    params = load_params(args.params, args.overrides, experiment=args.experiment)
    exp = params.experiment(args.experiment)
    model_path = args.model or f"models/{exp.name}.pt"
    out_path = Path(args.out or f"metrics/eval/{exp.name}.json")
    run_id = train_run_id(args.train_metrics or f"metrics/train/{exp.name}.json")

    torch.manual_seed(args.seed)
    model = load_model(model_path)
    results = evaluate_experiment(exp, model, args.data, seed=args.seed)
    tables = [exp.table] if isinstance(exp.table, str) else list(exp.table or [])
    payload = {
        "experiment": exp.name, "paper": exp.paper, "tables": [t for t in tables if t], "task": exp.task,
        "profile": params.profile, "mlflow_run_id": run_id, "checkpoint": str(model_path),
        "model": exp.model.build_options() | {"family": exp.model.family},
        "data": {"dataset": exp.data.dataset, "size": exp.data.size, "eval_split": exp.data.eval_split,
                 "eval_dataset": getattr(exp.data, "eval_dataset", None) or exp.data.dataset},
        "n_samples": exp.eval.n_samples, "temperature": exp.eval.temperature, "seed": args.seed,
        "primary": exp.data.eval_split, "splits": results,
    }
    if run_id:
        from pipelines import tracking

        # open_run returns a new run when the recorded one is gone (e.g. a fresh mlflow.db): log there.
        run_id = tracking.open_run(tracking.experiment_name(exp.paper, params.mlflow.experiment_prefix), exp.name,
                                   run_id)
        payload["mlflow_run_id"] = run_id
        tracking.log_metrics(run_id, _scalar_metrics(results))
        with tempfile.TemporaryDirectory() as tmp:
            for path in eval_figures(exp.name, results, args.figures or tmp):
                tracking.log_artifact(run_id, path, "figures")
            summary_file = Path(tmp) / "eval.json"
            summary_file.write_text(json.dumps(payload, indent=1, default=str))
            tracking.log_artifact(run_id, summary_file, "eval")
        tracking.finish_run(run_id)
    else:
        print(f"warning: no mlflow_run_id in {args.train_metrics or f'metrics/train/{exp.name}.json'}; "
              "metrics are not tracked", file=sys.stderr)
        if args.figures:
            eval_figures(exp.name, results, args.figures)
    write_json(out_path, payload)
    primary = results[exp.data.eval_split]
    print(json.dumps({"experiment": exp.name, "mlflow_run_id": run_id,
                      **{k: primary[k] for k in ("n", *SUMMARY_METRICS.get(task_name(exp.task), ())) if k in primary}}))
    return 0
