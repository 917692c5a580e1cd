"""GPU check and throughput of the paper-profile models (needs torch with CUDA; no Ray/MLflow needed).

Two parts, each printing a table:

1. Correctness on the GPU: every family x target of ``build_model`` runs ``nll`` + backward + ``predict`` on CUDA,
   and a continuous-target flow gives the same ``log_likelihood`` on CPU and GPU (same weights, same input).
2. Throughput of the paper configurations (``params-paper.yaml`` model options, the papers' input sizes and
   batch sizes): train steps/s and images/s in float32 and with bfloat16 networks (``flowlib.mixed_precision``,
   what ``scaling.mixed_precision`` does through ``ScalingParams.configure``), peak GPU memory, the relative gap between the bf16 and float32 loss on the
   same batch, and what the paper's iteration count would take on one GPU.

    python benchmarks/gpu_check.py [--params params-paper.yaml] [--steps 10] [--experiments a,b,...]
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flowlib.models import build_model  # noqa: E402
from flowlib.precision import mixed_precision  # noqa: E402
from pipelines.params import load_params  # noqa: E402
from pipelines.tasks import get_task  # noqa: E402
from pipelines.training.worker import NLLObjective, train_step  # noqa: E402

# The inputs each paper experiment trains on: (y shape, x shape). The shapes come from the data, not params.
SHAPES = {
    "sr_imagenet32_cnf": ((3, 32, 32), (3, 16, 16)),
    "sr_imagenet32_factorized": ((3, 32, 32), (3, 16, 16)),
    "sr_imagenet64_cnf": ((3, 64, 64), (3, 32, 32)),
    "sr_imagenet64_factorized": ((3, 64, 64), (3, 32, 32)),
    "drive_cnf": ((1, 1024, 1024), (3, 1024, 1024)),
    "drive_factored": ((1, 1024, 1024), (3, 1024, 1024)),
    "horses128_cglow": ((3, 128, 128), (3, 128, 128)),  # the mask tiled to 3 channels (c-Glow sec. 5.2)
    "lfw128_cglow": ((1, 128, 128), (3, 128, 128)),
    "denoise_cglow": ((3, 64, 64), (3, 64, 64)),
    "depth_cglow": ((1, 64, 64), (1, 64, 64)),
    "inpaint_cglow": ((3, 32, 32), (3, 64, 64)),  # y = the hidden central block (c-Glow sec. 5.6)
}
PAPER_ITERATIONS = {"sr_imagenet32_cnf": 200_000, "sr_imagenet64_cnf": 200_000}  # Winkler sec. 5.1


def fake_target(target: str, shape, batch: int, device, num_classes: int = 3) -> torch.Tensor:
    if target == "image8":
        return torch.randint(0, 256, (batch, *shape), device=device).float()
    if target == "binary":
        return (torch.rand(batch, *shape, device=device) < 0.15).float()
    if target == "categorical":
        return torch.randint(0, num_classes, (batch, *shape), device=device).float()
    return torch.rand(batch, *shape, device=device)


def correctness(device) -> list[dict]:
    rows = []
    for family in ("cnf", "cglow", "factorized"):
        for target in ("image8", "binary", "categorical", "continuous"):
            torch.manual_seed(0)
            opts = {"num_classes": 3} if target == "categorical" else {}
            if family != "factorized":
                opts.update(levels=2, steps=2)
            model = build_model(family, target, (1, 16, 16), (3, 16, 16), hidden=16, **opts)
            model = model.to(device)
            y = fake_target(target, (1, 16, 16), 4, device)
            x = torch.rand(4, 3, 16, 16, device=device)
            loss = model.nll(y, x).mean()
            loss.backward()
            grads = sum(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in model.parameters())
            with torch.no_grad():
                pred = model.predict(x, n_samples=4)
            rows.append({"family": family, "target": target, "loss": float(loss.detach()),
                         "params_with_finite_grad": f"{grads}/{sum(1 for _ in model.parameters())}",
                         "prediction": tuple(pred["prediction"].shape)})
    # CPU vs GPU on the same weights: a continuous target has no dequantization noise, so the numbers must agree.
    torch.manual_seed(1)
    model = build_model("cnf", "continuous", (3, 16, 16), (3, 8, 8), levels=2, steps=4, hidden=32)
    y, x = torch.rand(4, 3, 16, 16), torch.rand(4, 3, 8, 8)
    with torch.no_grad():
        model.nll(y, x)  # data-dependent ActNorm initialisation, on CPU
        cpu = model.log_likelihood(y, x)
        gpu = model.to(device).log_likelihood(y.to(device), x.to(device)).cpu()
    rel = float(((cpu - gpu).abs() / cpu.abs().clamp_min(1)).max())
    rows.append({"family": "cnf", "target": "continuous", "loss": float(-cpu.mean()),
                 "params_with_finite_grad": "-", "prediction": f"CPU vs GPU log-likelihood max rel. gap {rel:.2e}"})
    return rows


def throughput(name: str, exp, device, steps: int) -> dict:
    y_shape, x_shape = SHAPES[name]
    target = get_task(exp.task).target
    opts = exp.model.build_options()
    batch = exp.train.batch_size
    torch.manual_seed(0)
    model = build_model(exp.model.family, target, y_shape, x_shape, **opts).to(device)
    y = fake_target(target, y_shape, batch, device, opts.get("num_classes", 3))
    x = torch.rand(batch, *x_shape, device=device)
    num_dims = int(model.num_dims(y))
    with torch.no_grad():
        model.nll(y, x)  # ActNorm initialisation, as the worker does before the first step
        torch.manual_seed(5)
        ref = float(model.nll(y, x).mean())
        mixed_precision(model, torch.bfloat16)
        torch.manual_seed(5)
        low = float(model.nll(y, x).float().mean())
        mixed_precision(model, None)
    objective = NLLObjective(model)
    out = {"experiment": name, "batch": batch, "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
           "bf16_loss_rel_gap": abs(low - ref) / max(abs(ref), 1e-9)}
    for label, amp in (("fp32", None), ("bf16", torch.bfloat16)):
        mixed_precision(model, amp)
        optimizer = torch.optim.Adam(model.parameters(), lr=exp.train.lr)
        train_step(objective, optimizer, y, x, num_dims, exp.train.grad_clip)  # warm-up
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        finite = 0
        for _ in range(steps):
            finite += train_step(objective, optimizer, y, x, num_dims, exp.train.grad_clip).finite
        torch.cuda.synchronize()
        dt = (time.perf_counter() - start) / steps
        out[f"{label}_steps_s"] = 1 / dt
        out[f"{label}_img_s"] = batch / dt
        out[f"{label}_peak_GiB"] = torch.cuda.max_memory_allocated() / 2**30
        out[f"{label}_finite"] = f"{finite}/{steps}"
    iters = PAPER_ITERATIONS.get(name)
    out["paper_iters_h_fp32"] = iters / out["fp32_steps_s"] / 3600 if iters else math.nan
    del model, objective, optimizer
    torch.cuda.empty_cache()
    return out


def table(rows: list[dict]) -> str:
    keys = list(rows[0])
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", default=str(ROOT / "params-paper.yaml"))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--experiments", default=",".join(SHAPES))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 1
    device = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name()} | torch {torch.__version__}")
    print("\n## Correctness on the GPU\n")
    print(table(correctness(device)), flush=True)
    params = load_params(args.params)
    rows = []
    for name in args.experiments.split(","):
        try:
            rows.append(throughput(name, params.experiment(name), device, args.steps))
        except torch.cuda.OutOfMemoryError as err:
            rows.append({"experiment": name, "batch": params.experiment(name).train.batch_size,
                         "params_M": math.nan, "bf16_loss_rel_gap": f"out of memory: {str(err)[:60]}"})
            torch.cuda.empty_cache()
        print(f"{name}: done", flush=True)
    print(f"\n## Paper configurations ({args.params}), {args.steps} timed steps each\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
