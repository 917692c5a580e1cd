"""Sample grids logged with a finished training run: x, y and a sample ``y ~ p(y|x)`` per temperature.

Each task draws its own ``y`` (``Task.display``) and every input the same way (``display_input``), so these
grids look like the sweep's and the report's figures.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np


def _uint8(image: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` float in [0, 1] -> uint8."""
    return (np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8)


def sample_grids(model, batch: Mapping, task, temperatures: Sequence[float], out_dir: Path,
                 n: int = 4) -> list[Path]:
    """One PNG per temperature, ``out_dir/samples_T<t>.png``: rows are x (resized to y), y, and a sample at
    that temperature, for the first ``n`` images of ``batch``; ``task`` draws ``y`` (``Task.display``)."""
    import torch
    from PIL import Image

    from pipelines.tasks.base import display_input

    x, y = batch["x"], batch["y"]
    n = min(n, x.shape[0])
    x, y = x[:n], y[:n]
    h, w = y.shape[-2:]
    xs = [np.asarray(Image.fromarray(_uint8(display_input(x[i]))).resize((w, h), Image.NEAREST)) for i in range(n)]
    ys = [_uint8(task.display(y[i])) for i in range(n)]
    paths = []
    for t in temperatures:
        torch.manual_seed(0)
        with torch.no_grad():
            s = model.sample(x, temperature=float(t))
        ss = [_uint8(task.display(s[i])) for i in range(n)]
        grid = np.concatenate([np.concatenate(row, axis=1) for row in (xs, ys, ss)], axis=0)
        path = Path(out_dir) / f"samples_T{float(t):.2f}.png"
        Image.fromarray(grid).resize((grid.shape[1] * 4, grid.shape[0] * 4), Image.NEAREST).save(path)
        paths.append(path)
    return paths


def checkpoint_grids(model_path: Path, exp, task, data_dir: str, out_dir: Path,
                     manifest: Mapping | None = None) -> list[Path]:
    """``sample_grids`` of the checkpoint ``model_path`` on the first images of ``exp``'s training split, at the
    sweep's temperatures (``exp.sweep.temperatures``)."""
    from flowlib.checkpoint import load_model
    from pipelines.data.loader import loader_options, make_loader

    model = exp.scaling.configure(load_model(str(model_path)).eval())
    loader = make_loader(data_dir, exp.data.train_split, exp.task, batch_size=4, train=False, seed=0,
                         manifest=manifest, **loader_options(exp.data, train=False))
    batch = next(iter(loader))
    # A model trained on patches has a fixed y/x shape: show the top-left crop of the evaluation images.
    config = getattr(model, "config", {}) or {}
    for key, shape_key in (("y", "y_shape"), ("x", "x_shape")):
        if config.get(shape_key):
            h, w = config[shape_key][-2:]
            batch[key] = batch[key][..., :h, :w]
    return sample_grids(model, batch, task, exp.sweep.temperatures, out_dir)
