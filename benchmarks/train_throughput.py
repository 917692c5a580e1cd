"""Training throughput and start-up of `cnf train`: samples/s per experiment, and 1 vs 2 Ray workers.

    python benchmarks/train_throughput.py [--experiments A B ...] [--steps 8] [--data-root DIR]
                                          [--scaling-experiment drive_cnf] [--cluster | --no-cluster]
                                          [--layouts] [--params params-cpu.yaml] [--no-local-row]

Each row is one real `cnf train EXP --set train.steps=N --fresh --no-samples` subprocess with a throw-away
Ray storage folder and MLflow database; the figures come from its metrics JSON: ``samples_per_s`` (global
samples per second from the first training step to the last report, measured in the workers) and
``startup_s`` (command start to the first training step). With ``--cluster`` (the default) the script starts
one private Ray head (``ray start --head --block`` in its own process group, on a free port) and points every
run at it through ``RAY_ADDRESS``, so the table measures training rather than Ray's start-up; it then runs
one extra ``--no-cluster`` row to show what a fresh local Ray costs (``--no-local-row`` skips it). Datasets
missing under ``--data-root`` are fetched from the demo source first. ``--layouts`` runs every experiment twice
more, with ``scaling.channels_last=true`` and ``=false``, to choose each experiment's memory layout (the faster
one depends on the shapes: on the 2-core AVX2 EPYC the c-Glow inpainting step is faster in NCHW, denoising in
NHWC).
Prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ray_head import start_head, stop_head  # benchmarks/ray_head.py (the script's folder is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def start_cluster(num_cpus: int, temp_dir: str) -> tuple[subprocess.Popen, str]:
    """A private Ray head on a free port; stop it with ``stop_cluster`` (``ray stop`` would stop everyone's)."""
    return start_head(num_cpus, temp_dir)


stop_cluster = stop_head


def run_one(exp: str, steps: int, data_root: Path, work: Path, address: str | None, sets=(),
            params: Path = ROOT / "params.yaml") -> dict:
    """One `cnf train` subprocess; returns its metrics JSON plus the command's own wall time."""
    tag = "_".join([exp, *[s.replace("=", "").replace(".", "") for s in sets]])
    out = work / tag
    env = os.environ.copy()
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{out / 'mlflow.db'}"
    env.pop("RAY_ADDRESS", None)
    if address:
        env["RAY_ADDRESS"] = address
    cmd = [str(BIN / "cnf"), "train", exp, "--params", str(Path(params).resolve()), "--data-root", str(data_root),
           "--storage", str(out / "runs"), "--model-out", str(out / "model.pt"),
           "--metrics-out", str(out / "metrics.json"), "--info-out", str(out / "train_info.json"), "--fresh",
           "--no-samples",
           "--set", f"train.steps={steps}", "--set", f"train.checkpoint_every={steps}"]
    for s in sets:
        cmd += ["--set", s]
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    metrics = json.loads((out / "train_info.json").read_text()) | json.loads((out / "metrics.json").read_text())
    metrics["command_wall_s"] = wall
    return metrics


def main() -> int:
    sys.path.insert(0, str(ROOT))
    from pipelines.stages import fetch
    from pipelines.params import load_params

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--experiments", nargs="+", help="default: every experiment in params.yaml")
    parser.add_argument("--steps", type=int, default=8, help="training steps per run (default: %(default)s)")
    parser.add_argument("--data-root", help="one shard folder per dataset (default: demo sets in a temp folder)")
    parser.add_argument("--scaling-experiment", default="drive_cnf",
                        help="also run this one with scaling.num_workers=1 and 2 ('' to skip)")
    parser.add_argument("--layouts", action="store_true",
                        help="also run each experiment with scaling.channels_last=true and =false")
    parser.add_argument("--no-cluster", dest="cluster", action="store_false",
                        help="every run starts its own local Ray (measures start-up, not throughput)")
    parser.add_argument("--no-local-row", dest="local_row", action="store_false",
                        help="skip the closing run of the first experiment on a fresh local Ray (the start-up "
                             "comparison; it trains too, so it would compete with anything started meanwhile)")
    args = parser.parse_args()

    params = load_params(args.params)
    names = args.experiments or list(params.experiments)
    tmp = tempfile.TemporaryDirectory(prefix="train-bench-")
    work = Path(tmp.name)
    data_root = Path(args.data_root or work / "data").resolve()  # the runs start in their own folders
    needed = sorted({params.experiment(n).data.dataset for n in names}
                    | ({params.experiment(args.scaling_experiment).data.dataset} if args.scaling_experiment else set()))
    for ds in needed:
        if not (data_root / ds / "manifest.json").exists():
            print(f"fetching demo {ds} -> {data_root / ds}", file=sys.stderr, flush=True)
            fetch.fetch(ds, "demo", str(data_root / ds))

    cluster = address = None
    rows: list[tuple[str, str, dict]] = []
    try:
        if args.cluster:
            ray_tmp = tempfile.mkdtemp(prefix="r", dir="/tmp")  # short: Ray's socket paths have a length limit
            cluster, address = start_cluster(os.cpu_count() or 2, ray_tmp)
            print(f"Ray head at {address}", file=sys.stderr, flush=True)
        jobs = [(n, ()) for n in names]
        if args.layouts:
            jobs = [(n, (f"scaling.channels_last={flag}",)) for n in names for flag in ("true", "false")]
        if args.scaling_experiment:
            jobs += [(args.scaling_experiment, ("scaling.num_workers=1",)),
                     (args.scaling_experiment, ("scaling.num_workers=2",))]
        t_all = time.perf_counter()
        for i, (exp, sets) in enumerate(jobs, 1):
            m = run_one(exp, args.steps, data_root, work, address, sets, args.params)
            rows.append((exp, "cluster" if address else "local", m))
            elapsed = time.perf_counter() - t_all
            print(f"[{i}/{len(jobs)}] {exp} {' '.join(sets)}: {m['samples_per_s']:.1f} samples/s, start-up "
                  f"{m['startup_s']:.1f} s, wall {m['command_wall_s']:.1f} s; ETA "
                  f"{elapsed / i * (len(jobs) - i):.0f} s", file=sys.stderr, flush=True)
        if address and args.local_row:  # one run with a fresh local Ray, for the start-up comparison
            print(f"[local] {names[0]} on a fresh local Ray (start-up comparison; --no-local-row skips it)",
                  file=sys.stderr, flush=True)
            m = run_one(names[0], args.steps, data_root, work / "local", None, params=args.params)
            rows.append((names[0], "local", m))
    finally:
        if cluster is not None:
            stop_cluster(cluster)

    print(f"\ncores: {os.cpu_count()}, steps per run: {args.steps}, profile: {params.profile}\n")
    print("| experiment | overrides | ray | workers | batch | samples/s | start-up s (cmd -> 1st step) | "
          "command wall s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for (exp, ray_kind, m), sets in zip(rows, [s for _, s in jobs] + [()]):
        batch = params.experiment(exp).train.batch_size
        print(f"| {exp} | {' '.join(sets) or '-'} | {ray_kind} | {m['num_workers']} | {batch} | "
              f"{m['samples_per_s']:.1f} | {m['startup_s']:.1f} | {m['command_wall_s']:.1f} |")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
