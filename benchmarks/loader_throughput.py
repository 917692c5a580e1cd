"""Loader throughput: samples/s through decode + task processing + augmentation, on the cores available.

    python benchmarks/loader_throughput.py [--data DIR] [--workers 0 2] [--seconds 5]

Without --data it fetches the demo sets into a temporary folder. If DIR/drive was fetched from the real
DRIVE.zip, the DRIVE rows measure the real 565x584 images. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from pipelines import fetch
from pipelines.loader import make_loader

CASES = [  # (dataset, split, task, loader keywords, batch size)
    ("drive", "train", "vessel", {"patch": 64, "pad_multiple": 4}, 2),
    ("drive", "test", "vessel", {"pad_multiple": 4}, 2),
    ("imagenet32", "train", "sr", {}, 64),
    ("imagenet64", "train", "sr", {"patch": 32}, 64),
    ("horses", "train", "horses", {"size": 64}, 16),
    ("lfw_parts", "train", "parts", {"size": 64}, 16),
    ("bsds500", "train", "denoise", {"patch": 64}, 16),
    ("celeba", "train", "inpaint", {"size": 64}, 16),
]


def measure(dest: str, split: str, task: str, kw: dict, batch: int, workers: int, seconds: float) -> tuple[float, int]:
    n, epoch, start = 0, 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        loader = make_loader(dest, split, task, batch, train=split == "train", num_workers=workers,
                             epoch=epoch, drop_last=False, **kw)
        for b in loader:
            n += len(b["key"])
        epoch += 1
    return n / (time.perf_counter() - start), n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="folder holding <dataset>/manifest.json (default: fresh demo sets)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    tmp = None
    root = args.data
    if root is None:
        tmp = tempfile.TemporaryDirectory(prefix="loader-bench-")
        root = tmp.name
    print(f"cores: {os.cpu_count()}, torch threads: 1, {args.seconds:.0f} s per row\n")
    print("| dataset | split | task | options | batch | workers | samples/s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, split, task, kw, batch in CASES:
        dest = os.path.join(root, name)
        if not os.path.exists(os.path.join(dest, "manifest.json")):
            fetch.fetch(name, "demo", dest)
        for workers in args.workers:
            rate, _ = measure(dest, split, task, kw, batch, workers, args.seconds)
            options = ", ".join(f"{k}={v}" for k, v in kw.items()) or "-"
            print(f"| {name} | {split} | {task} | {options} | {batch} | {workers} | {rate:.0f} |", flush=True)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
