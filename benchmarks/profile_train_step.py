"""Where a train step spends its time: ``torch.profiler`` over the pipeline's step on one configuration.

    python benchmarks/profile_train_step.py --config drive [--before REV] [--mode eager|cl|compiled] [--steps 5]

The step is the worker's (``pipelines/training/worker.py``): ``zero_grad``, ``nll(y, x).mean()``, backward,
``clip_grad_norm_`` and Adam. ``--before REV`` profiles flowlib as of a git revision (``git archive``, read
only) instead of the working tree; ``--mode cl`` profiles the model after :func:`flowlib.channels_last`, ``--mode mixed`` that model with
:func:`flowlib.mixed_precision` (bfloat16 networks),
``--mode compiled`` :func:`flowlib.compile_model`'s compiled objective.
Prints the ``--top`` operators by self CPU time (the share of the profiled steps each took) and the wall time
per step; configurations: ``benchmarks/flow_configs.py``.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from flow_configs import CONFIGS, GRAD_CLIP, build_ours, load_flowlib_at, make_batch


def make_step(flowlib, cfg: dict, mode: str = "eager"):
    torch.manual_seed(0)
    model = build_ours(flowlib, cfg)
    y, x = make_batch(cfg)
    with torch.no_grad():
        model.nll(y, x)  # ActNorm's data-dependent initialisation, as the worker does before training
    if mode in ("cl", "mixed"):
        flowlib.channels_last(model)
    if mode == "mixed":
        flowlib.mixed_precision(model, torch.bfloat16)
    objective = flowlib.compile_model(model) if mode == "compiled" else model
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        objective(y, x).mean().backward()
        torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
        opt.step()
    return step


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", choices=list(CONFIGS), required=True)
    p.add_argument("--before", metavar="REV", help="profile flowlib as of this git revision")
    p.add_argument("--mode", choices=("eager", "cl", "mixed", "compiled"), default="eager",
                   help="eager NCHW, eager after flowlib.channels_last, or flowlib.compile_model")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.before:
        flowlib = load_flowlib_at(args.before)
    else:
        import flowlib
    if args.mode != "eager" and not hasattr(flowlib, "compile_model"):
        raise SystemExit(f"--mode {args.mode}: {flowlib.__name__} predates channels_last and compile_model")
    step = make_step(flowlib, CONFIGS[args.config], args.mode)
    for _ in range(args.warmup):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        wall = (time.perf_counter() - t0) / args.steps
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    label = f"{args.config} ({flowlib.__name__}, {args.mode})"
    print(f"{label}: {wall * 1e3:.1f} ms per step (profiled), batch {CONFIGS[args.config]['batch']}")
    print(f"{'op':40s} {'self CPU ms/step':>16s} {'share':>6s} {'calls/step':>10s}")
    for e in events[:args.top]:
        print(f"{e.key[:40]:40s} {e.self_cpu_time_total / 1e3 / args.steps:16.2f} "
              f"{e.self_cpu_time_total / total:6.1%} {e.count / args.steps:10.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
