"""Loader throughput against what training consumes: samples/s through decode, task processing and augmentation.

    python benchmarks/loader_throughput.py [--params params.yaml] [--data data/shards] [--experiments ...]
                                           [--workers 0 2] [--seconds 4] [--metrics metrics/train]

One row per experiment and loader-worker count. Each row reads the experiment's training batches through
``pipelines.training.worker.train_loader``, the very loader ``cnf train`` builds (patch, size, padding, augmentation and
task options from the params file), for ``--seconds`` of wall time, epoch after epoch. ``train samples/s`` is
the rate the training run consumed (``samples_per_s`` of ``metrics/train/<experiment>.json``, written by
``cnf train``); ``margin`` is the loader's rate over it. The goal is a margin of at least 5x.

``--data`` is the folder holding one shard folder per dataset (default ``data/shards`` when it has the
experiment's dataset, else the demo sets fetched into a temporary folder). If ``DIR/drive`` was fetched from
the real DRIVE.zip, the DRIVE rows measure the real 565x584 images. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from pipelines.stages import fetch
from pipelines.params import load_params
from pipelines.training.worker import train_loader


def measure(exp, dest: str, workers: int, seconds: float) -> float:
    """Samples/s of the experiment's (endless) training loader over ``seconds``, worker start-up included."""
    exp = dataclasses.replace(exp, data=dataclasses.replace(exp.data, num_workers=workers))
    n, start = 0, time.perf_counter()
    for batch in train_loader(exp, dest):
        n += len(batch["key"])
        if time.perf_counter() - start >= seconds:
            break
    return n / (time.perf_counter() - start)


def consumed(metrics_dir: Path, name: str) -> float | None:
    """The samples/s a finished training run of ``name`` reported, if there is one."""
    path = metrics_dir / f"{name}.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("samples_per_s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", default="data/shards", help="folder holding <dataset>/manifest.json")
    parser.add_argument("--experiments", nargs="+", help="default: every experiment in the params file")
    parser.add_argument("--metrics", default="metrics/train", help="folder of cnf train's <experiment>.json")
    parser.add_argument("--workers", type=int, nargs="+", default=[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    params = load_params(args.params)
    names = args.experiments or sorted(params.experiments)
    tmp = None
    print(f"cores: {os.cpu_count()}, torch threads: 1, {args.seconds:.0f} s per row, params: {args.params}\n")
    print("| experiment | dataset | options | batch | loader workers | loader samples/s | train samples/s | margin |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in names:
        exp = params.experiment(name)
        data = exp.to_dict()["data"]
        dest = os.path.join(args.data, data["dataset"])
        if not os.path.exists(os.path.join(dest, "manifest.json")):
            if tmp is None:
                tmp = tempfile.TemporaryDirectory(prefix="loader-bench-")
            dest = os.path.join(tmp.name, data["dataset"])
            if not os.path.exists(os.path.join(dest, "manifest.json")):
                fetch.fetch(data["dataset"], "demo", dest)
        options = {k: data[k] for k in ("patch", "size", "pad_multiple") if data.get(k)}
        options.update(data.get("options") or {})
        shown = ", ".join(f"{k}={v}" for k, v in options.items()) or "-"
        train_rate = consumed(Path(args.metrics), name)
        for workers in args.workers:
            rate = measure(exp, dest, workers, args.seconds)
            margin = f"{rate / train_rate:.1f}x" if train_rate else "-"
            train_shown = f"{train_rate:.1f}" if train_rate else "-"
            print(f"| {name} | {data['dataset']} | {shown} | {exp.train.batch_size} | {workers} | {rate:.0f} "
                  f"| {train_shown} | {margin} |", flush=True)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
