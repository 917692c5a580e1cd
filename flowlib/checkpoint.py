"""Checkpoints that rebuild their model: ``{"format": "flowlib/1", "config", "state_dict", **extra}``.

``save_checkpoint`` writes atomically (temporary name in the same folder, then ``os.replace``), so a reader
never sees half a file even if training is killed mid-write. ``load_model`` rebuilds the model from its
``config`` with :func:`flowlib.models.build_model` and loads the weights; the source may be a file, a folder
holding ``model.pt``, an MLflow run (``runs:/<run_id>`` or a bare run id), whose artifact
``checkpoint/model.pt`` is downloaded, or a registered model version (``models:/<name>/<version>``, as the
pipeline logs it: a pyfunc model whose ``artifacts/`` hold the checkpoint). mlflow is imported only in those
branches: flowlib depends on torch and numpy alone.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any, Union

import torch
from torch import nn

__all__ = ["save_checkpoint", "load_checkpoint", "load_model", "FORMAT", "CHECKPOINT_FILE", "MLFLOW_ARTIFACT"]

FORMAT = "flowlib/1"
CHECKPOINT_FILE = "model.pt"
MLFLOW_ARTIFACT = "checkpoint/model.pt"
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def save_checkpoint(path: Union[str, os.PathLike], model: nn.Module, **extra: Any) -> Path:
    """Write ``model``'s config and weights (plus ``extra`` entries, e.g. ``step``) to ``path`` atomically."""
    config = getattr(model, "config", None)
    if not isinstance(config, dict) or not config:
        raise ValueError(f"save_checkpoint: {type(model).__name__} has no `config` dict to rebuild it from; "
                         "build models with flowlib.build_model")
    reserved = {"format", "config", "state_dict"} & set(extra)
    if reserved:
        raise ValueError(f"save_checkpoint: extra keys {sorted(reserved)} are reserved")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, "config": config, "state_dict": state, **extra}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _resolve_local(source: Path) -> Path:
    if source.is_dir():
        candidate = source / CHECKPOINT_FILE
        if not candidate.is_file():
            raise FileNotFoundError(f"load_model: folder {source} has no {CHECKPOINT_FILE}")
        return candidate
    return source


def _download_mlflow(run_id: str) -> Path:
    import mlflow  # lazily: only this branch needs it

    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=MLFLOW_ARTIFACT,
                                                dst_path=tempfile.mkdtemp(prefix="flowlib-ckpt-"))
    return Path(local)


def _download_registered(uri: str) -> Path:
    """The checkpoint inside the MLflow model ``uri`` (``models:/<name>/<version>``): the one file of its
    ``artifacts/`` folder (a pyfunc model's artifacts; a folder there is read as a checkpoint folder)."""
    import mlflow  # lazily: only this branch needs it

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri,
                                                     dst_path=tempfile.mkdtemp(prefix="flowlib-model-")))
    found = sorted((local / "artifacts").iterdir()) if (local / "artifacts").is_dir() else []
    if len(found) != 1:
        raise FileNotFoundError(f"load_model: MLflow model {uri} holds {[p.name for p in found]} in artifacts/ "
                                "(expected the one flowlib checkpoint the pipeline logs there)")
    return _resolve_local(found[0])


def load_checkpoint(source: Union[str, os.PathLike], map_location: Any = "cpu") -> dict:
    """The checkpoint dictionary from a file, a folder with ``model.pt``, ``runs:/<run_id>``, a run id or
    ``models:/<name>/<version>``."""
    text = str(source)
    if text.startswith("models:/"):
        path = _download_registered(text)
    elif text.startswith("runs:/"):
        run_id = text[len("runs:/"):].strip("/").split("/")[0]
        path = _download_mlflow(run_id)
    elif not Path(text).exists() and _RUN_ID.match(text):
        path = _download_mlflow(text)
    else:
        path = _resolve_local(Path(text))
        if not path.is_file():
            raise FileNotFoundError(f"load_model: no checkpoint at {path} (expected a file, a folder with "
                                    f"{CHECKPOINT_FILE}, 'runs:/<run_id>' or an MLflow run id)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # RuntimeError, EOFError, UnpicklingError...: a damaged or foreign file
        raise ValueError(f"load_model: {path} is not a readable {FORMAT} checkpoint ({type(exc).__name__}: {exc}); "
                         f"expected a torch file written by save_checkpoint ({path.stat().st_size} bytes: "
                         "truncated or overwritten?)") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"load_model: {path} is not a {FORMAT} checkpoint (format: {found!r})")
    for key in ("config", "state_dict"):
        if key not in ckpt:
            raise ValueError(f"load_model: {path} lacks the key {key!r}")
    return ckpt


def load_model(source: Union[str, os.PathLike], map_location: Any = "cpu") -> nn.Module:
    """Rebuild the model from the checkpoint's ``config`` (``build_model``) and load its weights (strict)."""
    from .models import build_model, upgrade_config

    ckpt = load_checkpoint(source, map_location)
    try:
        model = build_model(**upgrade_config(ckpt["config"]))  # option names renamed since it was saved
        model.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"load_model: {source}: cannot rebuild the model it holds (expected a config that "
                         f"build_model accepts and weights that fit it; {type(exc).__name__}: {exc})") from exc
    return model.to(map_location) if isinstance(map_location, (str, torch.device)) else model
