"""CBM3D on the denoising experiment's own evaluation inputs: how hard our protocol is against the paper's.

    pip install bm3d   # not a project dependency (its licence is the authors', for non-commercial use)
    python benchmarks/denoise_reference.py [--params params-cpu.yaml] [--experiment denoise_cglow]
                                           [--data-root data/shards] [--compare info/eval/denoise_cglow.json]

c-Glow's Table 3 (Lu & Huang 2020) sets BM3D (Dabov et al. 2007) at 28.21 dB beside c-Glow's 27.61, at an image
size and noise level that were lost in extraction. This runs the colour BM3D (``bm3d.bm3d_rgb``, sigma = the
task's ``noise_sigma`` / 255) on exactly the noisy inputs ``cnf evaluate`` and ``cnf sweep`` score: the same
loader, resize, seeds and noise (``pipelines.data.loader.make_loader`` with ``train=False``, seed 0), the test
split (``data.eval_dataset``) and the sweep's split (``sweep.split`` of ``data.dataset``), and scores it with the
task's own scorer (``DenoiseScorer``: PSNR of the prediction clipped to [0, 1], mean over images). The shards
must have been fetched (``dvc repro fetch@bsds500 fetch@cbsd68``). Prints a markdown table.

``--compare`` takes the info file of a ``cnf evaluate`` run of the experiment (its per-image PSNR on the test split)
and prints where the model loses to CBM3D: the test images in thirds by the roughness of the clean image (mean
absolute difference between neighbouring pixels, rows and columns), each third's mean PSNR of both.
"""
from __future__ import annotations

import argparse
import json
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


def score_split(exp, data_root: Path, dataset: str, split: str, bm3d_rgb) -> tuple[dict, float]:
    """``(per image {key: (PSNR, roughness of the clean image)}, seconds)`` of CBM3D on one split of ``dataset``
    as the evaluation loads it (PSNR by the task's scorer)."""
    task = get_task(exp.task).with_options(**(exp.data.options or {}))
    sigma = float(task.noise_sigma) / 255.0
    torch.manual_seed(0)
    loader = make_loader(dataset_folder(data_root, dataset, exp.data.dataset), split, exp.task,
                         batch_size=exp.eval.batch_size, train=False, rank=0, world_size=1, num_workers=0, seed=0,
                         **loader_options(exp.data, train=False))
    scorer, start, roughness = task.scorer(), time.perf_counter(), []
    for batch in loader:
        x, y = batch["x"].double().numpy(), batch["y"].numpy()
        est = np.stack([np.asarray(bm3d_rgb(img.transpose(1, 2, 0), sigma)).transpose(2, 0, 1) for img in x])
        est = torch.from_numpy(est.astype(np.float32))
        scorer.add(batch, {"mean": est, "prediction": est})
        roughness += [float(np.abs(np.diff(c, axis=-1)).mean() + np.abs(np.diff(c, axis=-2)).mean()) for c in y]
        print(f"[{dataset}/{split}] {len(roughness)} images, "
              f"{len(roughness) / (time.perf_counter() - start):.1f} images/s", file=sys.stderr, flush=True)
    psnr = scorer.summary()["psnr_per_image"]
    return dict(zip(scorer.keys, zip(psnr, roughness))), time.perf_counter() - start


def compare(per_image: dict, info_path: Path, name: str, split: str) -> None:
    """Mean PSNR of CBM3D and of the model (``info_path``: a ``cnf evaluate`` info file, its ``split`` results)
    per roughness third of the images."""
    test = json.loads(info_path.read_text())["splits"][split]
    model = dict(zip(test["keys"], test["psnr_per_image"]))
    missing = sorted(set(per_image) ^ set(model))
    if missing:
        raise SystemExit(f"denoise_reference: {info_path} and the test split differ in images {missing[:5]}")
    keys = sorted(per_image, key=lambda k: per_image[k][1])
    print(f"\nWhere {name} loses to CBM3D: test images in thirds by the clean image's roughness\n")
    print(f"| third | images | roughness | CBM3D dB | {name} dB | gap dB |\n|---|---|---|---|---|---|")
    for label, part in zip(("smoothest", "middle", "roughest"), np.array_split(np.array(keys), 3)):
        bm, ours = np.mean([per_image[k][0] for k in part]), np.mean([model[k] for k in part])
        rough = np.mean([per_image[k][1] for k in part])
        print(f"| {label} | {len(part)} | {rough:.3f} | {bm:.2f} | {ours:.2f} | {bm - ours:.2f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", default=str(ROOT / "params-cpu.yaml"))
    parser.add_argument("--experiment", default="denoise_cglow")
    parser.add_argument("--data-root", default=str(ROOT / "data" / "shards"))
    parser.add_argument("--compare", type=Path, help="a cnf evaluate info file of the experiment (per-image PSNR)")
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
    per_split = []  # the test split first
    for dataset, split in splits:
        per_image, secs = score_split(exp, Path(args.data_root), dataset, split, bm3d_rgb)
        per_split.append(per_image)
        psnr = float(np.mean([p for p, _ in per_image.values()]))
        print(f"| {dataset} | {split} | {len(per_image)} | {psnr:.2f} | {secs:.0f} |")
    if args.compare:
        compare(per_split[0], args.compare, args.experiment, exp.data.eval_split)
    return 0


if __name__ == "__main__":
    sys.exit(main())
