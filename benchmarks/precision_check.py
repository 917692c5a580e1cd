"""Does the fast setting train the same model? float32 NCHW against channels-last + bfloat16 networks, A/B.

    python benchmarks/precision_check.py --params params-cpu.yaml --experiment drive_cnf \\
        --data-root /path/to/data/shards [--steps 300] [--eval-images 5] [--threads 2]

Both arms start from the same initial parameters (same seed, ActNorm initialised on the same first batch in
float32) and see the same batches in the same order (the experiment's own training loader, drawn once); only
``scaling.channels_last`` and ``scaling.mixed_precision`` differ (``ScalingParams.configure``). Prints the
training bits/dim averaged over windows of steps, the seconds per step, and the held-out bits/dim of the first
``--eval-images`` images of the experiment's evaluation split under each arm's own setting (fixed
dequantization noise). "Same results within noise" means the windows' differences are no larger than the
window-to-window wobble of one arm.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import itertools
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", default=str(ROOT / "params-cpu.yaml"))
    p.add_argument("--experiment", default="drive_cnf")
    p.add_argument("--data-root", required=True, help="one shard folder per dataset (data/shards of a repro)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--window", type=int, default=50)
    p.add_argument("--eval-images", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    import torch

    from flowlib.models import build_model
    from pipelines.data.loader import loader_options, make_loader
    from pipelines.params import load_params
    from pipelines.tasks import get_task
    from pipelines.training.driver import model_options
    from pipelines.training.worker import LN2, lr_at, train_loader

    torch.set_num_threads(args.threads)
    exp = load_params(args.params).experiment(args.experiment)
    data_dir = str(Path(args.data_root) / exp.data.dataset)
    stream = train_loader(exp, data_dir)
    batches = [(b["y"], b["x"]) for b in itertools.islice(stream, args.steps)]
    task = get_task(exp.task)
    y0, x0 = batches[0]
    torch.manual_seed(exp.train.seed)
    base = build_model(exp.model.family, task.target, tuple(y0.shape[1:]), tuple(x0.shape[1:]),
                       **model_options(exp, task))
    with torch.no_grad():
        base.nll(y0, x0)
    eval_dir = str(Path(args.data_root) / exp.data.eval_dataset)
    held_out = list(itertools.islice(make_loader(eval_dir, exp.data.eval_split, exp.task, batch_size=1, train=False,
                                                 seed=0, **loader_options(exp.data, train=False)), args.eval_images))

    arms = {"float32 NCHW": dataclasses.replace(exp.scaling, channels_last=False, mixed_precision=False),
            "channels-last + bf16 networks": dataclasses.replace(exp.scaling, channels_last=True,
                                                                  mixed_precision=True)}
    results = {}
    for label, scaling in arms.items():
        model = scaling.configure(copy.deepcopy(base))
        opt = torch.optim.Adam(model.parameters(), lr=exp.train.lr, betas=tuple(exp.train.betas))
        dims = int(model.num_dims(y0))
        bpd, t0 = [], time.perf_counter()
        for step, (y, x) in enumerate(batches):
            for group in opt.param_groups:
                group["lr"] = lr_at(step, exp.train.lr, exp.train.warmup_steps, exp.train.steps, exp.train.lr_schedule)
            opt.zero_grad(set_to_none=True)
            loss = model.nll(y, x).float().mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), exp.train.grad_clip or math.inf)
            opt.step()
            bpd.append(float(loss) / (dims * LN2))
            if (step + 1) % args.window == 0:
                print(f"  {label}: step {step + 1}/{args.steps}, {(time.perf_counter() - t0) / (step + 1):.3f} s/step",
                      file=sys.stderr, flush=True)
        seconds = (time.perf_counter() - t0) / len(batches)
        model.eval()
        ev = []
        with torch.inference_mode():
            for i, b in enumerate(held_out):
                torch.manual_seed(1000 + i)
                ll = model.log_likelihood(b["y"], b["x"])
                ev.append(float(-ll.mean()) / (int(model.num_dims(b["y"])) * LN2))
        results[label] = {"bpd": bpd, "s_per_step": seconds, "eval_bpd": sum(ev) / len(ev)}

    labels = list(arms)
    print(f"# {exp.name} ({args.params}), {args.steps} steps of batch {exp.train.batch_size}, "
          f"{args.threads} threads; held-out: first {len(held_out)} images of {exp.data.eval_dataset}/"
          f"{exp.data.eval_split} (bits/dim over padded pixels, as training counts them)")
    print("| steps | " + " | ".join(f"train bpd, {l}" for l in labels) + " | difference |")
    print("|---|" + "---|" * (len(labels) + 1))
    for start in range(0, args.steps, args.window):
        means = [sum(results[l]["bpd"][start:start + args.window]) / len(results[l]["bpd"][start:start + args.window])
                 for l in labels]
        print(f"| {start + 1}-{min(start + args.window, args.steps)} | "
              + " | ".join(f"{m:.4f}" for m in means) + f" | {means[1] - means[0]:+.4f} |")
    print("| held-out bpd | " + " | ".join(f"{results[l]['eval_bpd']:.4f}" for l in labels)
          + f" | {results[labels[1]]['eval_bpd'] - results[labels[0]]['eval_bpd']:+.4f} |")
    print("| s/step | " + " | ".join(f"{results[l]['s_per_step']:.3f}" for l in labels)
          + f" | {results[labels[0]]['s_per_step'] / results[labels[1]]['s_per_step']:.2f}x faster |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
