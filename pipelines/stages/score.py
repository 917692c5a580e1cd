"""Stage `cnf score`: score predictions made elsewhere, or a built-in method, with the papers' protocols.

    cnf score TASK --data SHARDS --split SPLIT (--pred DIR | --method NAME) [--scale S] [--out FILE]
              [--track PAPER] [--name NAME]

``TASK`` is ``sr`` (PSNR/SSIM on the Y channel, ``scale`` pixels shaved; Winkler et al. 2019, Table 2) or
``vessel`` (max F-score, DRIU protocol, inside the FOV; Winkler et al. 2019, Table 3). Built-in methods need
no training, so their table rows are computed here rather than cited: ``bicubic`` (SR: MATLAB-bicubic upsampling
of ``input.png``) and ``second_observer`` (vessel: ``target2.png``, the "Human" row). ``--pred DIR`` scores
image files named after the sample keys: ``01_manual2.gif`` or ``01.png`` -> key ``01`` (the longest key that
leads the file name). The last line printed is one JSON object (``sr``: psnr, ssim, n; ``vessel``: precision,
recall, f1, n); ``--out`` also writes it (with the PR curve for vessels) atomically, and ``--track`` logs it to
an MLflow run of that paper's experiment so that table rows built from it carry a run id.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import numpy as np

from flowlib import metrics
from pipelines.io import Progress, write_json

TASKS = ("sr", "vessel")
METHODS = {"sr": ("bicubic",), "vessel": ("second_observer",)}
IMAGE_SUFFIXES = {".png", ".gif", ".tif", ".tiff", ".bmp", ".jpg", ".jpeg", ".ppm", ".npy"}


# --------------------------------------------------------------------------------------------------- helpers


def match_key(stem: str, keys: Iterable[str]) -> str | None:
    """The sample key a prediction file belongs to: the longest key that leads ``stem`` at a word boundary.

    ``01_manual2`` -> ``01``; ``baby_x2_SR`` -> ``baby``; a file named exactly as a key matches that key. A
    key that merely starts with ``stem`` (``01`` for key ``01_test``) matches when no key leads the stem.
    """
    best, best_len = None, -1
    for key in keys:
        if stem == key or (stem.startswith(key) and not stem[len(key)].isalnum()):
            if len(key) > best_len:
                best, best_len = key, len(key)
    if best is not None:
        return best
    trailing = [k for k in keys if k.startswith(stem) and not k[len(stem)].isalnum()]
    return trailing[0] if len(trailing) == 1 else None


def read_image(path: Path) -> np.ndarray:
    """An image file as an array: ``(H, W)`` or ``(H, W, C)``; ``.npy`` as stored."""
    if path.suffix.lower() == ".npy":
        return np.load(path, allow_pickle=False)
    from PIL import Image

    with Image.open(path) as image:
        if image.mode == "P":
            image = image.convert("L")
        return np.asarray(image)


def predictions_by_key(pred_dir: str | os.PathLike, keys: Iterable[str]) -> dict[str, Path]:
    """Map each sample key to its prediction file in ``pred_dir``; errors name unmatched or duplicate files."""
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise FileNotFoundError(f"--pred {pred_dir}: not a folder")
    keys = list(keys)
    found: dict[str, Path] = {}
    for path in sorted(pred_dir.rglob("*")):
        if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        key = match_key(path.stem, keys)
        if key is None:
            continue
        if key in found:
            raise ValueError(f"--pred {pred_dir}: both {found[key].name} and {path.name} match sample key {key!r}")
        found[key] = path
    missing = [k for k in keys if k not in found]
    if missing:
        raise FileNotFoundError(f"--pred {pred_dir}: no prediction file for sample key(s) {missing[:10]}"
                                f"{' ...' if len(missing) > 10 else ''} ({len(found)} of {len(keys)} matched)")
    return found


def to_unit(label_map: np.ndarray) -> np.ndarray:
    """A vessel map in [0, 1]: 0/1 labels stay, 8-bit maps (0..255, e.g. 0/255 GIFs, soft PNGs) are /255."""
    a = np.asarray(label_map, dtype=np.float64)
    if a.ndim == 3:
        a = a[..., 0]
    return a / 255.0 if a.max() > 1.0 else a


def chw(image: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 -> ``(3, H, W)`` float in [0, 1]."""
    a = np.asarray(image, dtype=np.float64)
    if a.ndim != 3 or a.shape[-1] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {a.shape}")
    return a.transpose(2, 0, 1) / 255.0


# --------------------------------------------------------------------------------------------------- scoring


def sr_scores(predictions: Iterable[np.ndarray], targets: Iterable[np.ndarray], scale: int) -> dict:
    """PSNR and SSIM of RGB 8-bit images, on the Y channel (BT.601) with ``scale`` pixels shaved per side.

    The SR-literature protocol (Dong et al. 2015; Wang et al. 2018) that Winkler et al. 2019, Table 2 reports:
    predictions are quantised to 8 bits, converted to Y, the borders cropped, then PSNR/SSIM per image with
    data range 255, averaged over images. ``predictions``/``targets``: ``(3, H, W)`` in [0, 1].
    """
    p_list, s_list = [], []
    for pred, target in zip(predictions, targets):
        pred = np.clip(np.rint(np.asarray(pred, dtype=np.float64) * 255.0), 0, 255) / 255.0
        y_pred = metrics.shave(metrics.rgb_to_y(pred), scale)
        y_true = metrics.shave(metrics.rgb_to_y(target), scale)
        p_list.append(metrics.psnr(y_pred, y_true, data_range=255.0))
        s_list.append(metrics.ssim(y_pred, y_true, data_range=255.0))
    if not p_list:
        raise ValueError("sr_scores: no images")
    return {"psnr": float(np.mean(p_list)), "ssim": float(np.mean(s_list)), "n": len(p_list),
            "per_image": {"psnr": p_list, "ssim": s_list}}


def vessel_scores(soft: list[np.ndarray], targets: list[np.ndarray], masks: list[np.ndarray]) -> dict:
    """Max F-score over thresholds with the DRIU protocol (see :func:`flowlib.metrics.vessel_fscore`)."""
    return metrics.vessel_fscore(soft, targets, masks)


def bicubic_upsample(lr: np.ndarray, scale: int) -> np.ndarray:
    """MATLAB-bicubic ``imresize`` of an ``(H, W, 3)`` uint8 image by ``scale``; returns ``(3, sH, sW)`` in [0, 1]."""
    from pipelines.tasks import imresize

    # uint8 in -> uint8 out, rounded once: MATLAB's imresize on an 8-bit image, the standard bicubic row.
    up = imresize(np.asarray(lr, dtype=np.uint8), scale)
    return up.astype(np.float64).transpose(2, 0, 1) / 255.0


def _sample_scale(sample: Mapping, scale: int | None) -> int:
    meta = sample.get("meta.json") or {}
    if scale is None:
        scale = meta.get("scale")
    if scale is None:
        raise ValueError(f"sample {sample['__key__']!r}: no --scale given and meta.json has no 'scale'")
    return int(scale)


def score(task: str, data: str, split: str, pred: str | None = None, method: str | None = None,
          scale: int | None = None) -> dict:
    """Score ``pred`` files or a built-in ``method`` on ``split`` of the shards at ``data``; returns the result."""
    from pipelines.data import shards

    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    if (pred is None) == (method is None):
        raise ValueError("give exactly one of --pred DIR or --method NAME")
    if method is not None and method not in METHODS[task]:
        raise ValueError(f"unknown method {method!r} for task {task!r}; expected one of {METHODS[task]}")
    samples = list(shards.iter_samples(data, split))
    if not samples:
        raise ValueError(f"{data}: split {split!r} has no samples")
    files = predictions_by_key(pred, [s["__key__"] for s in samples]) if pred else {}
    progress = Progress(f"score {task} {split}", len(samples))
    keys = [s["__key__"] for s in samples]

    if task == "sr":
        preds, targets, scales = [], [], set()
        for s in samples:
            target = chw(s["target.png"])
            k = _sample_scale(s, scale)
            scales.add(k)
            if method == "bicubic":
                p = bicubic_upsample(s["input.png"], k)
            else:
                p = chw(read_image(files[s["__key__"]])[..., :3])
            if p.shape != target.shape:
                raise ValueError(f"sample {s['__key__']!r}: prediction shape {p.shape[::-1]} != target "
                                 f"{target.shape[::-1]} (as W, H, C)")
            preds.append(p)
            targets.append(target)
            progress.step(what=s["__key__"])
        if len(scales) != 1:
            raise ValueError(f"samples have different scales {sorted(scales)}; score them separately")
        k = scales.pop()
        out = sr_scores(preds, targets, k)
        out["scale"] = k
    else:
        soft, targets, masks = [], [], []
        for s in samples:
            if method == "second_observer":
                if "target2.png" not in s:
                    raise ValueError(f"sample {s['__key__']!r} in {data} ({split}) has no target2.png "
                                     "(second observer); only DRIVE test has one")
                p = to_unit(s["target2.png"])
            else:
                p = to_unit(read_image(files[s["__key__"]]))
            t = to_unit(s["target.png"])
            m = s["mask.png"] > 0 if "mask.png" in s else np.ones_like(t, dtype=bool)
            if m.ndim == 3:
                m = m[..., 0]
            if p.shape != t.shape:
                raise ValueError(f"sample {s['__key__']!r}: prediction shape {p.shape} != target {t.shape}")
            soft.append(p)
            targets.append(t > 0.5)
            masks.append(m)
            progress.step(what=s["__key__"])
        out = vessel_scores(soft, targets, masks)
    manifest = shards.read_manifest(data) or {}
    out.update({"task": task, "split": split, "data": str(data), "keys": keys,
                "dataset": manifest.get("dataset", Path(str(data).rstrip("/")).name),
                "method": method or f"pred:{pred}"})
    return out


# ------------------------------------------------------------------------------------------------------- CLI


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", choices=TASKS, help="sr (PSNR/SSIM, Y channel) or vessel (F-score, DRIU protocol)")
    parser.add_argument("--data", required=True, help="shard folder (or s3:// prefix) written by `cnf fetch`")
    parser.add_argument("--split", required=True, help="split to score, e.g. test")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--pred", help="folder of prediction images named after sample keys")
    group.add_argument("--method", help="built-in method: bicubic (sr), second_observer (vessel)")
    parser.add_argument("--scale", type=int, default=None, help="SR scale (default: meta.json of each sample)")
    parser.add_argument("--out", default=None, help="also write the result (with curves) to this JSON file")
    parser.add_argument("--track", default=None, metavar="PAPER",
                        help="log the result to an MLflow run in this paper's experiment (winkler2019 | lu2020)")
    parser.add_argument("--name", default=None, help="run name / label for --track and --out (default: derived)")
    parser.add_argument("--params", default=None, help="params.yaml, for mlflow.experiment_prefix with --track")


SUMMARY_KEYS = {"sr": ("psnr", "ssim", "n", "scale"), "vessel": ("precision", "recall", "f1", "threshold", "n")}


def run(args: argparse.Namespace) -> int:
    result = score(args.task, args.data, args.split, pred=args.pred, method=args.method, scale=args.scale)
    name = args.name or f"score-{args.task}-{Path(str(args.data).rstrip('/')).name}-{args.split}-" \
                        f"{args.method or Path(args.pred).name}"
    result["name"] = name
    if args.track:
        from pipelines import tracking

        prefix = ""
        if args.params:
            from pipelines.params import load_params

            prefix = load_params(args.params).mlflow.experiment_prefix
        run_id = tracking.open_run(tracking.experiment_name(args.track, prefix), name)
        tracking.set_tags(run_id, {"stage": "score", "task": args.task, "method": result["method"],
                                   "split": args.split, "data": str(args.data)})
        tracking.log_metrics(run_id, {k: result[k] for k in SUMMARY_KEYS[args.task] if k in result})
        tracking.finish_run(run_id)
        result["mlflow_run_id"] = run_id
    if args.out:
        write_json(args.out, result)
    summary = {k: result[k] for k in SUMMARY_KEYS[args.task] if k in result}
    summary.update({"method": result["method"], "split": args.split})
    if "mlflow_run_id" in result:
        summary["mlflow_run_id"] = result["mlflow_run_id"]
    print(json.dumps(summary, sort_keys=True))
    return 0
