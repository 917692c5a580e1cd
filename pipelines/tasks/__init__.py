"""Paper tasks by name: ``TASKS`` and ``get_task(name)``; the contract is ``pipelines.tasks.base.Task``.

One module per task owns how a shard sample becomes ``Sample(y, x, mask, extras)``, its paper's scoring
protocol and how ``y`` is drawn (docs/architecture.md, "Adding a task"):
  - ``sr``      Winkler et al. 2019: x = bicubic LR image, y = HR image8 (PSNR/SSIM on Y).
  - ``vessel``  Winkler et al. 2019: x = fundus RGB, y = binary vessel map, mask = FOV (DRIVE; F-score).
  - ``horses``  Lu & Huang 2020: x = RGB, y = binary figure/ground tiled to 3 channels (Weizmann horses; IoU).
  - ``parts``   Lu & Huang 2020: x = RGB, y = categorical {background, face, hair} (LFW; super-pixel accuracy).
  - ``denoise`` Lu & Huang 2020: x = y + Gaussian noise, y = clean image, continuous in [0, 1] (PSNR).
  - ``depth``   Lu & Huang 2020: x = raw Kinect depth / 8 m, y = refined (fused) depth in metres, mask = valid.
  - ``inpaint`` Lu & Huang 2020: x = the image with its central block zeroed, y = that block (image8; PSNR).
"""
from __future__ import annotations

from pipelines.tasks.base import Sample, Scorer, Task, display_input
from pipelines.tasks.denoise import Denoising
from pipelines.tasks.depth import DepthRefinement
from pipelines.tasks.horses import HorseSegmentation
from pipelines.tasks.inpaint import Inpainting
from pipelines.tasks.parts import FaceParts
from pipelines.tasks.sr import SuperResolution
from pipelines.tasks.vessel import VesselSegmentation

TASKS: dict[str, Task] = {task.name: task for task in (
    SuperResolution(),
    VesselSegmentation(),
    HorseSegmentation(),
    FaceParts(),
    Denoising(),
    DepthRefinement(),
    Inpainting(),
)}


def get_task(name: str) -> Task:
    """The registered task ``name``; a ``KeyError`` naming the known tasks otherwise."""
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known: {sorted(TASKS)}") from None


__all__ = ["TASKS", "Sample", "Scorer", "Task", "display_input", "get_task"]
