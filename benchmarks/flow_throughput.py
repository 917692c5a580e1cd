"""Train-step and sampling throughput (images/s) and peak memory of our flows against `normflows` on CPU.

What is compared (same depth, width, batch, float32, Adam; timings interleaved round-robin in one process):
- ``ours``: ``build_flow("cnf", ...)`` as configured for the paper task (RRDB or VGG encoder, conditional
  couplings on ``[z_1, h]``, conditional split priors and prior).
- ``ours-noenc``: the same flow with ``encoder="none"`` (``h = x`` resampled): what the peer can express.
- ``normflows``: ``nf.MultiscaleFlow`` of ``nf.flows.GlowBlock`` (ActNorm, LU 1x1 conv, coupling;
  ``scale=False`` for the additive DRIVE flow) with ``nf.flows.Squeeze``/``Merge``
  and ``GlowBase`` priors: an *unconditional* flow of the same depth and width (normflows has no
  image-conditional coupling). Its coupling net is ours (``make_subnet``: the SR net, or the DRIVE net with its
  InstanceNorm), so both sides run the same networks; what remains different is conditioning: ours feeds
  ``h`` (here ``x``) into every coupling and has conditional split priors, normflows' ``GlowBase`` is a fixed
  learned Gaussian per level.
The ratio column is ours-noenc / normflows (>1 means we are faster), the like-for-like comparison.
``GFLOP/img`` counts one train step (forward and backward) with ``torch.utils.flop_counter``: the conditioning
work ours does and the peer cannot express shows there, and the last column sets speed against work done.

Peak memory is the rise of peak RSS (``VmHWM``, reset via ``/proc/self/clear_refs`` after imports; falls back to
``resource.getrusage`` max RSS) over building the model, 3 train steps and one sampling pass, in a fresh
subprocess per model; tracemalloc cannot see PyTorch's C++ allocations.

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


def _reset_peak() -> None:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0), so import-time spikes do not hide the run's peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return _peak_mb()


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
        flows.append([_normflows_step(nf, c * 2 ** (L + 1 - i), cfg, scale) for _ in range(K)]
                     + [nf.flows.Squeeze()])
        if i > 0:
            merges.append(nf.flows.Merge())
            shape = (c * 2 ** (L - i), h // 2 ** (L - i), w // 2 ** (L - i))
        else:
            shape = (c * 2 ** (L + 1), h // 2 ** L, w // 2 ** L)
        q0.append(nf.distributions.GlowBase(shape))
    model = nf.MultiscaleFlow(q0, flows, merges, class_cond=False)
    return model, (lambda y, x: model.forward_kld(y)), (lambda x: model.sample(x.shape[0])[0])


def _normflows_step(nf, channels: int, cfg: dict, scale: bool):
    """A normflows ``GlowBlock`` (ActNorm, LU 1x1 conv, affine/additive coupling) whose coupling net is ours.

    ``GlowBlock`` hard-wires a Conv3x3-ReLU-Conv1x1-ReLU-Conv3x3 net; giving it the net ours uses
    (``make_subnet``: the SR net, or the DRIVE net Conv3x3-InstanceNorm-ReLU-Conv3x3) keeps the coupling
    networks identical, so the comparison measures the flow machinery.
    """
    from flowlib.subnets import make_subnet
    block = nf.flows.GlowBlock(channels, cfg["hidden"], split_mode="channel", scale=scale)
    couplings = [m for m in block.modules() if isinstance(m, nf.flows.AffineCoupling)]
    assert len(couplings) == 1, "normflows GlowBlock layout changed"
    couplings[0].param_map = make_subnet(cfg["options"]["subnet"], (channels + 1) // 2,
                                         (2 if scale else 1) * (channels // 2), cfg["hidden"])
    return block


def _setup(impl: str, config: str):
    import torch
    torch.manual_seed(0)
    cfg = CONFIGS[config]
    model, loss_fn, sample_fn = build(impl, cfg)
    b = cfg["batch"]
    y = torch.rand(b, *cfg["y_shape"]) + torch.rand(b, *cfg["y_shape"]) / 256  # dequantized-image-like
    x = torch.rand(b, *cfg["x_shape"])
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def train_step():
        opt.zero_grad(set_to_none=True)
        loss_fn(y, x).backward()
        opt.step()

    def sample():
        with torch.no_grad():
            sample_fn(x)

    train_step()  # warm-up (ActNorm data-dependent init, allocator)
    sample()
    return model, train_step, sample, b


def measure_memory(impl: str, config: str, steps: int, threads: int) -> dict:
    """In a fresh process: max-RSS rise over building, ``steps`` train steps and sampling."""
    import torch
    torch.set_num_threads(threads)
    import normflows  # noqa: F401  (imports of both sides before the baseline)
    import flowlib.flows  # noqa: F401
    _reset_peak()
    rss0 = _rss_mb()
    model, train_step, sample, b = _setup(impl, config)
    for _ in range(steps):
        train_step()
    sample()
    return {"params": sum(p.numel() for p in model.parameters()), "peak_rss_mb": _peak_mb() - rss0}


def measure_speed(config: str, steps: int, threads: int) -> dict:
    """Every implementation in one process, timed round-robin, so load from other processes hits all alike."""
    import torch
    torch.set_num_threads(threads)
    from torch.utils.flop_counter import FlopCounterMode
    runs = {impl: _setup(impl, config) for impl in IMPLS}
    flops = {}
    for impl, (_, train_step, _, b) in runs.items():
        with FlopCounterMode(display=False) as counter:
            train_step()
        flops[impl] = counter.get_total_flops() / b
    times = {impl: {"train": [], "sample": []} for impl in IMPLS}
    for i in range(steps):
        for impl, (_, train_step, sample, b) in runs.items():
            for kind, fn in (("train", train_step), ("sample", sample)):
                t0 = time.perf_counter()
                fn()
                times[impl][kind].append(time.perf_counter() - t0)
        print(f"  {config}: round {i + 1}/{steps}", file=sys.stderr, flush=True)
    return {impl: {"batch": runs[impl][3], "train_gflop_per_img": flops[impl] / 1e9,
                   "train_img_s": runs[impl][3] / statistics.median(times[impl]["train"]),
                   "sample_img_s": runs[impl][3] / statistics.median(times[impl]["sample"])} for impl in IMPLS}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=6, help="timed train steps per model (median reported)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--json", type=Path, help="also write the results here (atomically)")
    p.add_argument("--one", nargs=2, metavar=("IMPL", "CONFIG"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(measure_memory(args.one[0], args.one[1], 3, args.threads)))
        return 0

    rows = []
    t_start = time.monotonic()
    for config in args.configs:
        speed = measure_speed(config, args.steps, args.threads)
        for impl in IMPLS:
            out = subprocess.run([sys.executable, __file__, "--one", impl, config, "--threads", str(args.threads)],
                                 capture_output=True, text=True,
                                 env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                     [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])})
            if out.returncode:
                print(out.stderr, file=sys.stderr)
                raise SystemExit(f"memory benchmark {impl}/{config} failed (exit {out.returncode})")
            rows.append({"config": config, "impl": impl, **speed[impl], **json.loads(out.stdout.splitlines()[-1])})
        done = args.configs.index(config) + 1
        elapsed = time.monotonic() - t_start
        print(f"[{done}/{len(args.configs)}] {config} done; {elapsed:.0f}s elapsed, "
              f"ETA {elapsed / done * (len(args.configs) - done):.0f}s", file=sys.stderr, flush=True)

    print(f"{'config':7s} {'impl':11s} {'params':>9s} {'GFLOP/img':>10s} {'train img/s':>12s} {'sample img/s':>13s} "
          f"{'peak MB':>8s}")
    for r in rows:
        print(f"{r['config']:7s} {r['impl']:11s} {r['params']:9d} {r['train_gflop_per_img']:10.3f} "
              f"{r['train_img_s']:12.2f} {r['sample_img_s']:13.2f} {r['peak_rss_mb']:8.1f}")
    print("\nratio ours-noenc / normflows (>1: ours faster or, for memory, larger):")
    for config in args.configs:
        by = {r["impl"]: r for r in rows if r["config"] == config}
        a, b = by["ours-noenc"], by["normflows"]
        work = a["train_gflop_per_img"] / b["train_gflop_per_img"]
        print(f"{config:7s} train {a['train_img_s'] / b['train_img_s']:.2f}x  sample "
              f"{a['sample_img_s'] / b['sample_img_s']:.2f}x  peak-mem {a['peak_rss_mb'] / max(b['peak_rss_mb'], 1e-9):.2f}x"
              f"  (ours does {work:.2f}x the FLOPs per train step: {work * a['train_img_s'] / b['train_img_s']:.2f}x "
              "the FLOP/s)")
    if args.json:
        tmp = args.json.with_suffix(args.json.suffix + ".tmp")
        tmp.write_text(json.dumps(rows, indent=2))
        tmp.replace(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
