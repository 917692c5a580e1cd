"""Train-step and sampling throughput (images/s) and peak memory of our flows against `normflows` on CPU.

What is compared (same depth, width, batch, float32, Adam, one process per measurement):
- ``ours``: ``build_flow("cnf", ...)`` as configured for the paper task (RRDB or VGG encoder, conditional
  couplings on ``[z_1, h]``, conditional split priors and prior).
- ``ours-noenc``: the same flow with ``encoder="none"`` (``h = x`` resampled): what the peer can express.
- ``normflows``: ``nf.MultiscaleFlow`` of ``nf.flows.GlowBlock`` (ActNorm, LU 1x1 conv, coupling with a
  Conv3x3-ReLU-Conv1x1-ReLU-Conv3x3 net of the same ``hidden`` width; ``scale=False`` for the additive DRIVE
  flow) with ``nf.flows.Squeeze``/``Merge`` and ``GlowBase`` priors: an *unconditional* flow of the same depth
  and width (normflows has no image-conditional coupling). Its DRIVE coupling net has no InstanceNorm.
The ratio column is ours-noenc / normflows (>1 means we are faster), the like-for-like comparison.

Peak memory is the rise of the process's max RSS (``resource.getrusage``) over the measurement, measured in a
fresh subprocess per model so earlier runs do not mask it; tracemalloc cannot see PyTorch's C++ allocations.

Run: ``python benchmarks/flow_throughput.py [--steps 6] [--json out.json]``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = {
    # Winkler et al. 2019 Table 5 (ImageNet32: L=2, K=8) at reduced width; RRDB reduced from 16 blocks/growth 32.
    "sr": dict(y_shape=(3, 32, 32), x_shape=(3, 16, 16), levels=2, steps=8, hidden=64, batch=8,
               options=dict(encoder="rrdb", encoder_blocks=4, encoder_growth=16, context_channels=32,
                            coupling="affine", subnet="sr")),
    # Winkler et al. 2019 Table 5/7 (DRIVE: L=2, K=2, 32 wide, additive coupling, VGG encoder) on 64x64 patches.
    "drive": dict(y_shape=(1, 64, 64), x_shape=(3, 64, 64), levels=2, steps=2, hidden=32, batch=4,
                  options=dict(encoder="vgg", encoder_width=32, coupling="additive", subnet="drive")),
}
IMPLS = ("ours", "ours-noenc", "normflows")


def _maxrss_mb() -> float:
    # Linux reports KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(impl: str, cfg: dict):
    import torch
    if impl.startswith("ours"):
        from flowlib.flows import build_flow
        opts = dict(cfg["options"])
        if impl == "ours-noenc":
            opts = {k: v for k, v in opts.items() if k in ("coupling", "subnet")} | {"encoder": "none"}
        model = build_flow("cnf", cfg["y_shape"], cfg["x_shape"], cfg["levels"], cfg["steps"], cfg["hidden"], **opts)
        return model, (lambda y, x: -model.log_prob(y, x).mean()), (lambda x: model.sample(x))
    import normflows as nf
    c, h, w = cfg["y_shape"]
    L, K = cfg["levels"], cfg["steps"]
    scale = cfg["options"]["coupling"] == "affine"
    q0, merges, flows = [], [], []
    for i in range(L):  # normflows orders levels deepest first
        flows.append([nf.flows.GlowBlock(c * 2 ** (L + 1 - i), cfg["hidden"], split_mode="channel", scale=scale)
                      for _ in range(K)] + [nf.flows.Squeeze()])
        if i > 0:
            merges.append(nf.flows.Merge())
            shape = (c * 2 ** (L - i), h // 2 ** (L - i), w // 2 ** (L - i))
        else:
            shape = (c * 2 ** (L + 1), h // 2 ** L, w // 2 ** L)
        q0.append(nf.distributions.GlowBase(shape))
    model = nf.MultiscaleFlow(q0, flows, merges, class_cond=False)
    return model, (lambda y, x: model.forward_kld(y)), (lambda x: model.sample(x.shape[0])[0])


def measure(impl: str, config: str, steps: int, threads: int) -> dict:
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = CONFIGS[config]
    model, loss_fn, sample_fn = build(impl, cfg)
    b = cfg["batch"]
    y = torch.rand(b, *cfg["y_shape"]) + torch.rand(b, *cfg["y_shape"]) / 256  # dequantized-image-like
    x = torch.rand(b, *cfg["x_shape"])
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    rss0 = _maxrss_mb()

    def train_step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(y, x)
        loss.backward()
        opt.step()
        return loss.item()

    train_step()  # warm-up (ActNorm data-dependent init, allocator)
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        train_step()
        times.append(time.perf_counter() - t0)
    model.eval()
    with torch.no_grad():
        sample_fn(x)
        stimes = []
        for _ in range(max(2, steps // 2)):
            t0 = time.perf_counter()
            sample_fn(x)
            stimes.append(time.perf_counter() - t0)
    return {"impl": impl, "config": config, "batch": b,
            "params": sum(p.numel() for p in model.parameters()),
            "train_img_s": b / statistics.median(times), "sample_img_s": b / statistics.median(stimes),
            "peak_rss_mb": _maxrss_mb() - rss0}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=6, help="timed train steps per model (median reported)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--json", type=Path, help="also write the results here (atomically)")
    p.add_argument("--one", nargs=2, metavar=("IMPL", "CONFIG"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one[0], args.one[1], args.steps, args.threads)))
        return 0

    rows = []
    jobs = [(c, i) for c in args.configs for i in IMPLS]
    t_start = time.monotonic()
    for n, (config, impl) in enumerate(jobs, 1):
        out = subprocess.run([sys.executable, __file__, "--one", impl, config, "--steps", str(args.steps),
                              "--threads", str(args.threads)], capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
        if out.returncode:
            print(out.stderr, file=sys.stderr)
            raise SystemExit(f"benchmark {impl}/{config} failed (exit {out.returncode})")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        elapsed = time.monotonic() - t_start
        print(f"[{n}/{len(jobs)}] {config:6s} {impl:11s} done; {elapsed:.0f}s elapsed, "
              f"ETA {elapsed / n * (len(jobs) - n):.0f}s", file=sys.stderr, flush=True)

    print(f"{'config':7s} {'impl':11s} {'params':>9s} {'train img/s':>12s} {'sample img/s':>13s} {'peak MB':>8s}")
    for r in rows:
        print(f"{r['config']:7s} {r['impl']:11s} {r['params']:9d} {r['train_img_s']:12.2f} "
              f"{r['sample_img_s']:13.2f} {r['peak_rss_mb']:8.1f}")
    print("\nratio ours-noenc / normflows (>1: ours faster or, for memory, larger):")
    for config in args.configs:
        by = {r["impl"]: r for r in rows if r["config"] == config}
        a, b = by["ours-noenc"], by["normflows"]
        print(f"{config:7s} train {a['train_img_s'] / b['train_img_s']:.2f}x  sample "
              f"{a['sample_img_s'] / b['sample_img_s']:.2f}x  peak-mem {a['peak_rss_mb'] / max(b['peak_rss_mb'], 1e-9):.2f}x")
    if args.json:
        tmp = args.json.with_suffix(args.json.suffix + ".tmp")
        tmp.write_text(json.dumps(rows, indent=2))
        tmp.replace(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
