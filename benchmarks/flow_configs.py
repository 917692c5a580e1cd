"""The model configurations the flow benchmarks share (``flow_throughput.py``, ``profile_train_step.py``).

Each entry is a :func:`flowlib.build_model` call plus a batch: what ``cnf train`` builds for that experiment.

- ``reference``: the issue-15 reference (continuous ``y`` 3x32x32, ``x`` 3x16x16, L=2, K=4, hidden 64,
  batch 16; RRDB trunk at 0 blocks, i.e. ``conv_first`` + ``conv_body``, with 32 context channels).
- ``drive``: ``drive_cnf`` of params-paper.yaml (Winkler et al. 2019, Table 7: L=2, K=2, hidden 32, VGG
  encoder, additive coupling, the DRIVE subnet, binary variational dequantization) at batch 4 on 128x128
  patches.
- ``sr``: ``sr_imagenet64_cnf`` of params-paper.yaml (L=2, K=8, affine coupling, SR subnet, RRDB encoder,
  uniform dequantization of 8-bit ``y``) at a CPU-sized width: hidden 64 (paper 512), RRDB 4 blocks (16),
  growth 16 (32), 32 context channels (128); batch 8, ``y`` 3x64x64, ``x`` 3x32x32.
- ``cpu-sr``: ``sr_cnf`` of params-cpu.yaml (L=2, K=4, hidden 64, RRDB 2 blocks of growth 32 with 64 context
  channels, affine coupling, uniform dequantization) at its batch 8 on 64x64 ``y`` patches. The cpu profile's
  DRIVE experiment (``drive_cnf`` of params-cpu.yaml) is ``drive`` above.
- ``demo-sr``, ``demo-drive``: the demo profile's ``sr_imagenet64_cnf`` and ``drive_cnf`` (params.yaml) at their
  demo batch sizes.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CONFIGS: dict[str, dict] = {
    "reference": dict(target="continuous", y_shape=(3, 32, 32), x_shape=(3, 16, 16), batch=16,
                      model=dict(levels=2, steps=4, hidden=64, encoder="rrdb", coupling="affine", subnet="sr",
                                 encoder_options=dict(blocks=0, context_channels=32))),
    "drive": dict(target="binary", y_shape=(1, 128, 128), x_shape=(3, 128, 128), batch=4,
                  model=dict(levels=2, steps=2, hidden=32, subnet="drive", encoder="vgg", coupling="additive",
                             dequantization="binary")),
    "sr": dict(target="image8", y_shape=(3, 64, 64), x_shape=(3, 32, 32), batch=8,
               model=dict(levels=2, steps=8, hidden=64, encoder="rrdb",
                          encoder_options=dict(blocks=4, growth=16, context_channels=32))),
    "cpu-sr": dict(target="image8", y_shape=(3, 64, 64), x_shape=(3, 32, 32), batch=8,
                   model=dict(levels=2, steps=4, hidden=64, encoder="rrdb",
                              encoder_options=dict(blocks=2, growth=32, context_channels=64))),
    "demo-sr": dict(target="image8", y_shape=(3, 32, 32), x_shape=(3, 16, 16), batch=4,
                    model=dict(levels=2, steps=2, hidden=16, encoder="rrdb", encoder_options=dict(blocks=1, growth=8))),
    "demo-drive": dict(target="binary", y_shape=(1, 32, 32), x_shape=(3, 32, 32), batch=2,
                       model=dict(levels=2, steps=2, hidden=16, encoder="vgg", coupling="additive",
                                  dequantization="binary")),
}
# The pipeline's clipping (train.grad_clip of params-paper.yaml's defaults) is part of every timed step.
GRAD_CLIP = 100.0


def flow_options(cfg: dict) -> dict:
    """``cfg``'s model as flat :func:`flowlib.build_flow` options (what a peer library has to rebuild)."""
    opts = {k: v for k, v in cfg["model"].items() if k not in ("dequantization", "encoder_options")}
    names = {"blocks": "encoder_blocks", "growth": "encoder_growth", "context_channels": "context_channels"}
    opts.update({names[k]: v for k, v in cfg["model"].get("encoder_options", {}).items()})
    return opts


def make_batch(cfg: dict, seed: int = 0):
    """``(y, x)`` in data space for ``cfg``'s target (8-bit integers, 0/1, or dequantized-image-like floats)."""
    import torch
    gen = torch.Generator().manual_seed(seed)
    b = cfg["batch"]
    x = torch.rand(b, *cfg["x_shape"], generator=gen)
    if cfg["target"] == "image8":
        y = torch.randint(0, 256, (b, *cfg["y_shape"]), generator=gen).float()
    elif cfg["target"] == "binary":
        y = (torch.rand(b, *cfg["y_shape"], generator=gen) < 0.15).float()  # DRIVE: ~15% vessel pixels
    else:
        y = torch.rand(b, *cfg["y_shape"], generator=gen) + torch.rand(b, *cfg["y_shape"], generator=gen) / 256
    return y, x


def build_ours(flowlib, cfg: dict):
    """``flowlib.build_model`` for ``cfg`` (``flowlib``: the package, or an older copy of it)."""
    return flowlib.build_model("cnf", cfg["target"], cfg["y_shape"], cfg["x_shape"], **cfg["model"])


def load_flowlib_at(rev: str):
    """flowlib as of git revision ``rev``, imported as the package ``flowlib_<rev>`` (read-only ``git archive``).

    The editable install's import hook always resolves ``flowlib`` to the working tree, so an older copy
    needs its own top-level name; flowlib's imports are relative, so it runs unchanged under it.
    """
    name = "flowlib_" + "".join(ch if ch.isalnum() else "_" for ch in rev)
    if name in sys.modules:
        return sys.modules[name]
    dest = Path(tempfile.mkdtemp(prefix="flowlib-rev-"))
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "flowlib"], capture_output=True, check=False)
    if archive.returncode:
        raise SystemExit(f"--before {rev}: git archive failed: {archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    (dest / "flowlib").rename(dest / name)
    spec = importlib.util.spec_from_file_location(name, dest / name / "__init__.py",
                                                  submodule_search_locations=[str(dest / name)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
