"""CBM3D on the denoising experiment's own evaluation inputs: how hard our protocol is against the paper's.

    pip install bm3d   # not a project dependency (its licence is the authors', for non-commercial use)
    python benchmarks/denoise_reference.py [--params params-cpu.yaml] [--experiment denoise_cglow]
                                           [--data-root data/shards]

c-Glow's Table 3 (Lu & Huang 2020) sets BM3D (Dabov et al. 2007) at 28.21 dB beside c-Glow's 27.61, at an image
size and noise level that were lost in extraction. This runs the colour BM3D (``bm3d.bm3d_rgb``, sigma = the
task's ``noise_sigma`` / 255) on exactly the noisy inputs ``cnf evaluate`` and ``cnf sweep`` score: the same
loader, resize, seeds and noise (``pipelines.data.loader.make_loader`` with ``train=False``, seed 0), the test
split (``data.eval_dataset``) and the sweep's split (``sweep.split`` of ``data.dataset``), and scores it with the
task's own scorer (``DenoiseScorer``: PSNR of the prediction clipped to [0, 1], mean over images). The shards
must have been fetched (``dvc repro fetch@bsds500 fetch@cbsd68``). Prints a markdown table.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.data.loader import loader_options, make_loader  # noqa: E402
from pipelines.evaluation.experiment import dataset_folder, eval_dataset  # noqa: E402
from pipelines.params import load_params  # noqa: E402
from pipelines.tasks import get_task  # noqa: E402


def score_split(exp, data_root: Path, dataset: str, split: str, bm3d_rgb) -> tuple[float, int, float]:
    """``(mean PSNR, images, seconds)`` of CBM3D on one split of ``dataset`` as the evaluation loads it."""
    task = get_task(exp.task).with_options(**(exp.data.options or {}))
    sigma = float(task.noise_sigma) / 255.0
    torch.manual_seed(0)
    loader = make_loader(dataset_folder(data_root, dataset, exp.data.dataset), split, exp.task,
                         batch_size=exp.eval.batch_size, train=False, rank=0, world_size=1, num_workers=0, seed=0,
                         **loader_options(exp.data, train=False))
    scorer, start, n = task.scorer(), time.perf_counter(), 0
    for batch in loader:
        x = batch["x"].double().numpy()
        est = np.stack([np.asarray(bm3d_rgb(img.transpose(1, 2, 0), sigma)).transpose(2, 0, 1) for img in x])
        est = torch.from_numpy(est.astype(np.float32))
        scorer.add(batch, {"mean": est, "prediction": est})
        n += x.shape[0]
        print(f"[{dataset}/{split}] {n} images, {n / (time.perf_counter() - start):.1f} images/s",
              file=sys.stderr, flush=True)
    return float(scorer.summary()["psnr"]), n, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", default=str(ROOT / "params-cpu.yaml"))
    parser.add_argument("--experiment", default="denoise_cglow")
    parser.add_argument("--data-root", default=str(ROOT / "data" / "shards"))
    args = parser.parse_args()
    try:
        from bm3d import bm3d_rgb
    except ImportError:
        print("denoise_reference: needs the bm3d package (pip install bm3d); it is not a project dependency",
              file=sys.stderr)
        return 2
    exp = load_params(args.params).experiments[args.experiment]
    if exp.task != "denoise":
        print(f"denoise_reference: experiment {args.experiment!r} has task {exp.task!r}, not 'denoise'",
              file=sys.stderr)
        return 2
    splits = [(eval_dataset(exp), exp.data.eval_split)]
    if exp.sweep.split and exp.sweep.split != "holdout":
        splits.append((exp.data.dataset, exp.sweep.split))
    print(f"CBM3D (bm3d_rgb) on {args.experiment}'s evaluation inputs ({args.params})\n")
    print("| dataset | split | images | PSNR (dB) | seconds |\n|---|---|---|---|---|")
    for dataset, split in splits:
        psnr, n, secs = score_split(exp, Path(args.data_root), dataset, split, bm3d_rgb)
        print(f"| {dataset} | {split} | {n} | {psnr:.2f} | {secs:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
