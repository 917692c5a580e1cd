"""Scoring predictions made elsewhere, and built-in methods that need no training, with the papers' protocols.

``score_predictions`` reads a split's shard samples as evaluation does (``Task.prepare``, native size, no
padding), takes one prediction per sample (an image file named after the sample key, or a built-in method),
and feeds it to the task's ``Scorer``: the code that scores a trained model's predictions in `cnf evaluate`,
so a bicubic or "Human" table row and a model's row come from one protocol. Built-in methods:
``bicubic`` (sr: MATLAB-bicubic upsampling of ``input.png``, Winkler et al. 2019, Table 2) and
``second_observer`` (vessel: ``target2.png``, the "Human" row of Table 3).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from pipelines.data.augment import key_rng
from pipelines.io import Progress
from pipelines.tasks import TASKS, Task, get_task

IMAGE_SUFFIXES = {".png", ".gif", ".tif", ".tiff", ".bmp", ".jpg", ".jpeg", ".ppm", ".npy"}


# ------------------------------------------------------------------------------------------ prediction files


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


def file_tasks() -> tuple[str, ...]:
    """Tasks that can score prediction files: those defining ``Task.read_prediction``."""
    return tuple(name for name, task in TASKS.items() if type(task).read_prediction is not Task.read_prediction)


# ---------------------------------------------------------------------------------------- built-in methods


def bicubic(decoded: Mapping[str, Any], task: Task) -> np.ndarray:
    """MATLAB-bicubic ``imresize`` of ``input.png`` by the SR ``scale``: (3, sH, sW) on the 0..255 scale.

    uint8 in -> uint8 out, rounded once: MATLAB's imresize on an 8-bit image, the standard bicubic row.
    """
    from pipelines.data.imaging import imresize

    up = imresize(np.asarray(decoded["input.png"], dtype=np.uint8), task.scale)
    return up.astype(np.float64).transpose(2, 0, 1)


def second_observer(decoded: Mapping[str, Any], task: Task) -> np.ndarray:
    """The second annotation ``target2.png`` as a prediction (DRIVE test: the "Human" row)."""
    if "target2.png" not in decoded:
        raise ValueError("no target2.png (second observer) in the sample; only DRIVE test has one")
    return task.read_prediction(decoded["target2.png"])


@dataclass(frozen=True)
class Method:
    """A prediction method that needs no training: the task it predicts for and ``predict(decoded, task)``."""

    task: str
    predict: Callable[[Mapping[str, Any], Task], np.ndarray]


METHODS: dict[str, Method] = {
    "bicubic": Method("sr", bicubic),
    "second_observer": Method("vessel", second_observer),
}


def methods_for(task: str) -> tuple[str, ...]:
    return tuple(name for name, m in METHODS.items() if m.task == task)


# --------------------------------------------------------------------------------------------------- scoring


def _meta_scale(sample: Mapping) -> int:
    scale = (sample.get("meta.json") or {}).get("scale")
    if scale is None:
        raise ValueError(f"sample {sample['__key__']!r}: no --scale given and meta.json has no 'scale'")
    return int(scale)


def score_predictions(task: str, data: str, split: str, pred: str | None = None, method: str | None = None,
                      scale: int | None = None) -> dict:
    """Score ``pred`` files or a built-in ``method`` on ``split`` of the shards at ``data``.

    Returns the task scorer's summary (per-image values, curves) with ``task, split, data, dataset, method``
    (and ``scale`` for SR: ``scale``, else every sample's ``meta.json`` scale, which must agree).
    """
    from pipelines.data import shards

    if task not in file_tasks():
        raise ValueError(f"unknown task {task!r}; expected one of {file_tasks()}")
    if (pred is None) == (method is None):
        raise ValueError("give exactly one of --pred DIR or --method NAME")
    if method is not None and method not in methods_for(task):
        raise ValueError(f"unknown method {method!r} for task {task!r}; expected one of {methods_for(task)}")
    samples = list(shards.iter_samples(data, split))
    if not samples:
        raise ValueError(f"{data}: split {split!r} has no samples")
    spec = get_task(task)
    if "scale" in spec.options():
        scales = {int(scale)} if scale is not None else {_meta_scale(s) for s in samples}
        if len(scales) != 1:
            raise ValueError(f"samples have different scales {sorted(scales)}; score them separately")
        spec = spec.with_options(scale=scales.pop())
    files = predictions_by_key(pred, [s["__key__"] for s in samples]) if pred else {}
    scorer = spec.scorer()
    progress = Progress(f"score {task} {split}", len(samples))
    for s in samples:
        key = s["__key__"]
        decoded = {k: v for k, v in s.items() if k != "__key__"}
        # The reference exactly as evaluation reads it: native size, no padding, no augmentation.
        ref = spec.prepare(decoded, key=key, train=False, rng=key_rng(key), pad_multiple=1)
        try:
            p = METHODS[method].predict(decoded, spec) if method else spec.read_prediction(read_image(files[key]))
        except ValueError as exc:
            where = f"prediction {files[key]}" if not method else f"method {method!r}"
            raise ValueError(f"{where} (sample {key!r} in {data}, {split}): {exc}") from None
        if p.shape != ref.y.shape:
            raise ValueError(f"sample {key!r}: prediction shape {p.shape} != target {ref.y.shape} (as C, H, W)")
        scorer.add_prediction(key, p, ref.y, ref.mask[0] > 0.5, x=ref.x, extras=ref.extras)
        progress.step(what=key)
    out = scorer.summary()
    if "scale" in spec.options():
        out["scale"] = spec.scale
    manifest = shards.read_manifest(data) or {}
    out.update({"task": task, "split": split, "data": str(data),
                "dataset": manifest.get("dataset", Path(str(data).rstrip("/")).name),
                "method": method or f"pred:{pred}"})
    return out
