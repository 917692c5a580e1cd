"""Train-step and sampling throughput of our flows beside normflows and FrEIA, and how close a step is to the CPU.

    python benchmarks/flow_throughput.py [--configs reference drive sr] [--rounds 8] [--threads 2]
                                         [--before REV] [--no-compile] [--json out.json]

Configurations (``benchmarks/flow_configs.py``): ``reference`` (continuous ``y`` 3x32x32, ``x`` 3x16x16, L=2,
K=4, hidden 64, batch 16), ``drive`` (params-paper.yaml's ``drive_cnf`` on 128x128 patches, batch 4), ``sr``
(``sr_imagenet64_cnf`` at CPU width: hidden 64, RRDB 4 blocks of growth 16, 32 context channels, batch 8).

Implementations, every one float32 with Adam and the pipeline's ``clip_grad_norm_``; all of a configuration's
are built in one process and timed round-robin (one train step and one sampling pass each per round), so load
from other processes hits them alike; medians are reported:

- ``ours``: ``flowlib.build_model`` exactly as ``cnf train`` builds the experiment (encoder, conditional
  couplings on ``[z_1, h]``, conditional split priors and prior, dequantizer); eager, NCHW.
- ``ours-cl``: the same model after :func:`flowlib.channels_last` (NHWC end to end), eager.
- ``ours-mixed``: ``ours-cl`` with :func:`flowlib.mixed_precision` (bfloat16 networks: coupling subnets,
  encoder, prior nets, dequantizer nets; the bijections, log-determinants and priors' densities stay float32),
  what the cpu profile trains with (``scaling: {channels_last: true, mixed_precision: true}``). The peers run
  float32 only (neither separates its networks from its bijections), so its ratio to them compares precisions too.
- ``ours-compiled``: the same model (NCHW; inductor picks NHWC for its convolutions itself) through
  :func:`flowlib.compile_model`; sampling runs the eager model.
- ``ours-before``: with ``--before REV``, flowlib as of git revision ``REV`` (``git archive``, read only), same
  model and seed: the speed-up of the working tree over that revision.
- ``normflows`` (1.7): ``nf.MultiscaleFlow`` of ``GlowBlock`` (ActNorm, LU 1x1 conv, coupling; additive for
  DRIVE) with our coupling subnets; normflows has no image-conditional coupling or prior, so it is the
  *unconditional* flow of the same depth and width (its ``GlowBase`` priors are learned Gaussians), on
  uniformly dequantized ``y``: it does less work than ours.
- ``freia`` (0.2): the same conditional architecture built from FrEIA's modules in a ``GraphINN``: our encoder
  outside the graph feeds one ``ConditionNode`` per level (resampled as ours does); per step ``ActNorm``,
  ``Fixed1x1Conv`` (FrEIA has no learned 1x1 convolution: a fixed random rotation, cheaper than ours) and
  ``AffineCouplingOneSided`` with our subnet on ``[u_1, h]`` (FrEIA's atan-clamped ``exp`` scale instead of the
  shifted sigmoid; for DRIVE's additive coupling the clamp is zero); ``IRevNetDownsampling`` as squeeze; each
  conditional split prior as an ``AffineCouplingOneSided`` over ``[z_keep, z_out]`` given ``h`` with our prior
  net (a Gaussian ``p(z_out | z_keep, h)`` written as a flow to N(0, I)), then ``Split``; the final conditional
  prior as ``ConditionalAffineTransform`` given ``h``. Discrete ``y`` is uniformly dequantized (no learned
  dequantizer in FrEIA).

Ratios are given twice: of the medians, and paired (the median over rounds of the two implementations'
batch-normalised times in the same round), which a load spike from another process cannot bias towards one side.
``1st step s`` is the first train step after building (for ``ours-compiled``: torch.compile's compilation).
Columns: ``GFLOP/img`` counts one train step (``torch.utils.flop_counter``: forward and backward, per image);
``GFLOP/s`` is that work per second of train step; ``conv GFLOP/s`` is what this machine reaches on the same
step's convolutions alone: every ``aten.convolution`` of the step replayed as a plain ``torch.nn.Conv2d``
forward+backward (input and weight gradients) at the same shapes, each in its faster layout (NCHW or
channels-last), timed in the same rounds as the steps; ``of conv`` is the ratio, how close a train step comes
to the machine's convolution throughput. Peak memory is the rise of peak RSS
(``VmHWM``, reset through ``/proc/self/clear_refs`` after imports) over building the model, 3 train steps and
one sampling pass, in a fresh subprocess per implementation.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

from flow_configs import CONFIGS, GRAD_CLIP, ROOT, build_ours, flow_options, load_flowlib_at, make_batch

PEERS = ("normflows", "freia")
OURS = {"ours": "eager", "ours-cl": "cl", "ours-mixed": "mixed", "ours-compiled": "compiled"}
DEFAULT_CONFIGS = ("reference", "drive", "sr")


# ------------------------------------------------------------------------------------------------- memory
def _reset_peak() -> None:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0), so import-time spikes do not hide the run's peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _status_mb(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _peak_mb() -> float:
    peak = _status_mb("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB


def _rss_mb() -> float:
    rss = _status_mb("VmRSS")
    return rss if rss is not None else _peak_mb()


# ------------------------------------------------------------------------------------------ implementations
class Impl:
    """One implementation on one configuration: ``train_step()``, ``sample()``, ``params``, ``model``."""

    def __init__(self, model, loss_fn, sample_fn, batch: int):
        import torch
        self.model, self.batch = model, batch
        self.params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.Adam(self.params, lr=1e-4)

        def train_step():
            opt.zero_grad(set_to_none=True)
            loss_fn().backward()
            torch.nn.utils.clip_grad_norm_(self.params, GRAD_CLIP)
            opt.step()

        def sample():
            with torch.inference_mode():
                sample_fn()

        self.train_step, self.sample = train_step, sample
        self.predict = None  # ours: predict(n_samples), the sample-mean prediction
        self.counted_step = train_step  # what FLOP counting and the convolution census run


def _ours(flowlib, cfg: dict, mode: str = "eager") -> Impl:
    import torch
    model = build_ours(flowlib, cfg)
    y, x = make_batch(cfg)
    with torch.no_grad():
        model.nll(y, x)  # ActNorm's data-dependent initialisation, as the worker does before training
    if mode in ("cl", "mixed"):
        flowlib.channels_last(model)
    if mode == "mixed":
        flowlib.mixed_precision(model, torch.bfloat16)
    objective = flowlib.compile_model(model) if mode == "compiled" else model
    impl = Impl(model, lambda: objective(y, x).mean(), lambda: model.sample(x), cfg["batch"])
    impl.predict = lambda n: model.predict(x, n_samples=n)
    if mode == "compiled":  # FLOPs and convolution shapes are counted on the same model run eagerly
        impl.counted_step = Impl(model, lambda: model(y, x).mean(), impl.sample, cfg["batch"]).train_step
    return impl


def _dequantized(cfg: dict, y):
    """Uniform dequantization for the peers: ``v = (y + u) / L`` and the ``D log L`` of the bound."""
    import math
    import torch
    levels = {"image8": 256, "binary": 2}.get(cfg["target"])
    if levels is None:
        return lambda: (y, 0.0)
    d = y[0].numel() * math.log(levels)
    return lambda: ((y + torch.rand_like(y)) / levels - 0.5, d)


def _normflows(cfg: dict) -> Impl:
    import normflows as nf
    from flowlib.subnets import make_subnet
    opts = flow_options(cfg)
    c, h, w = cfg["y_shape"]
    big_l, k = opts["levels"], opts["steps"]
    scale = opts.get("coupling", "affine") == "affine"
    subnet = opts.get("subnet", "sr")

    def step(channels):
        # GlowBlock hard-wires its own coupling net; ours goes in so both sides run the same networks.
        block = nf.flows.GlowBlock(channels, opts["hidden"], split_mode="channel", scale=scale)
        couplings = [m for m in block.modules() if isinstance(m, nf.flows.AffineCoupling)]
        assert len(couplings) == 1, "normflows GlowBlock layout changed"
        couplings[0].param_map = make_subnet(subnet, (channels + 1) // 2, (2 if scale else 1) * (channels // 2),
                                             opts["hidden"])
        return block

    q0, merges, flows = [], [], []
    for i in range(big_l):  # normflows orders levels deepest first
        flows.append([step(c * 2 ** (big_l + 1 - i)) for _ in range(k)] + [nf.flows.Squeeze()])
        if i > 0:
            merges.append(nf.flows.Merge())
            shape = (c * 2 ** (big_l - i), h // 2 ** (big_l - i), w // 2 ** (big_l - i))
        else:
            shape = (c * 2 ** (big_l + 1), h // 2 ** big_l, w // 2 ** big_l)
        q0.append(nf.distributions.GlowBase(shape))
    model = nf.MultiscaleFlow(q0, flows, merges, class_cond=False)
    y, x = make_batch(cfg)
    data = _dequantized(cfg, y)

    def loss():
        v, log_l = data()
        return model.forward_kld(v) + log_l

    import torch
    with torch.no_grad():
        loss()
    return Impl(model, loss, lambda: model.sample(x.shape[0]), cfg["batch"])


class _FreiaCond:
    """The encoder and per-level resampling of ours, feeding FrEIA's condition nodes."""

    def __init__(self, encoder, level_sizes):
        self.encoder, self.level_sizes = encoder, level_sizes

    def __call__(self, x):
        from flowlib.multiscale import resample
        h = x if self.encoder is None else self.encoder(x)
        feats = h if isinstance(h, (list, tuple)) else [h]
        return [resample(feats[min(l, len(feats) - 1)], s) for l, s in enumerate(self.level_sizes)]


def _freia(cfg: dict) -> Impl:
    import torch
    from torch import nn
    import FrEIA.framework as ff
    import FrEIA.modules as fm
    from flowlib.encoders.rrdb import RRDBEncoder
    from flowlib.encoders.vgg import VGGEncoder
    from flowlib.invconv import random_rotation
    from flowlib.priors import _zero_conv
    from flowlib.subnets import make_subnet
    opts = flow_options(cfg)
    c, hy, wy = cfg["y_shape"]
    cx = cfg["x_shape"][0]
    big_l, k, hidden = opts["levels"], opts["steps"], opts["hidden"]
    if opts["encoder"] == "rrdb":
        encoder = RRDBEncoder(cx, opts.get("context_channels", 32), opts.get("encoder_blocks", 2),
                              opts.get("encoder_growth", 16))
    elif opts["encoder"] == "vgg":
        encoder = VGGEncoder(cx, opts.get("encoder_width", 32), big_l)
    else:
        encoder = None
    hc = cx if encoder is None else encoder.out_channels
    sizes = [(hy >> (l + 1), wy >> (l + 1)) for l in range(big_l)]
    additive = opts.get("coupling", "affine") == "additive"
    subnet = opts.get("subnet", "sr")

    def coupling_net(cin, cout):
        return make_subnet(subnet, cin, cout, hidden)

    def prior_net(cin, cout):  # our ConditionalSplitPrior / ConditionalPrior network
        return nn.Sequential(nn.Conv2d(cin, hidden, 3, padding=1), nn.ReLU(), _zero_conv(hidden, cout))

    clamp = dict(clamp_activation=lambda s: s * 0.0) if additive else {}
    conds = [ff.ConditionNode(hc, *s, name=f"h{l}") for l, s in enumerate(sizes)]
    nodes = [ff.InputNode(c, hy, wy, name="y")]
    outs = []
    cur, channels = nodes[0], c

    def add(node):
        nonlocal cur
        nodes.append(node)
        cur = node
        return node

    for l in range(big_l):
        add(ff.Node(cur, fm.IRevNetDownsampling, {}))
        channels *= 4
        for _ in range(k):
            add(ff.Node(cur, fm.ActNorm, {}))
            add(ff.Node(cur, fm.Fixed1x1Conv, {"M": random_rotation(channels)}))
            add(ff.Node(cur, fm.AffineCouplingOneSided, {"subnet_constructor": coupling_net, **clamp},
                        conditions=conds[l]))
        if l < big_l - 1:
            keep = channels - channels // 2
            add(ff.Node(cur, fm.AffineCouplingOneSided, {"subnet_constructor": prior_net, "split_len": keep},
                        conditions=conds[l]))
            split = add(ff.Node(cur, fm.Split, {"section_sizes": [keep, channels - keep]}))
            outs.append(ff.OutputNode(split.out1))
            cur, channels = split.out0, keep
    add(ff.Node(cur, fm.ConditionalAffineTransform, {"subnet_constructor": prior_net}, conditions=conds[-1]))
    outs.append(ff.OutputNode(cur))
    inn = ff.GraphINN(nodes + outs + conds)
    model = nn.ModuleDict({"inn": inn, **({"encoder": encoder} if encoder is not None else {})})
    cond_of = _FreiaCond(encoder, sizes)
    y, x = make_batch(cfg)
    data = _dequantized(cfg, y)

    def loss():
        v, log_l = data()
        z, logdet = inn(v, c=cond_of(x))
        log_p = sum((-0.5 * zi.pow(2) - 0.9189385332046727).flatten(1).sum(1) for zi in z)
        return -(log_p + logdet).mean() + log_l

    def sample():
        h = cond_of(x)
        z = [torch.randn(x.shape[0], *n.input_dims[0]) for n in inn.out_nodes]
        return inn(z, c=h, rev=True, jac=False)

    with torch.no_grad():
        loss()  # FrEIA's ActNorm initialises on its first batch
    return Impl(model, loss, sample, cfg["batch"])


def build(impl: str, config: str, before: str | None = None) -> Impl:
    import torch
    torch.manual_seed(0)
    cfg = CONFIGS[config]
    if impl in OURS:
        import flowlib
        return _ours(flowlib, cfg, OURS[impl])
    if impl == "ours-before":
        return _ours(load_flowlib_at(before), cfg)
    if impl == "normflows":
        return _normflows(cfg)
    if impl == "freia":
        return _freia(cfg)
    raise ValueError(f"unknown implementation {impl!r}")


# ------------------------------------------------------------------------------------------ FLOPs and convs
def _record_convs(fn) -> list[tuple]:
    """The ``aten.convolution`` calls of ``fn()``: ``(input shape, weight shape, stride, padding, dilation,
    groups, has bias)``, one entry per call."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    calls = []

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten.convolution.default and not args[6]:  # not transposed
                calls.append((tuple(args[0].shape), tuple(args[1].shape), tuple(args[3]), tuple(args[4]),
                              tuple(args[5]), int(args[8]), args[2] is not None))
            return func(*args, **(kwargs or {}))

    with Recorder():
        fn()
    return calls


def _conv_flops(call) -> float:
    """FLOPs of one forward, input-gradient and weight-gradient pass (3x the forward's multiply-adds x 2)."""
    (b, cin, h, w), (cout, cin_g, kh, kw), stride, padding, dilation, groups, _ = call
    ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return 3 * 2.0 * b * cout * ho * wo * cin_g * kh * kw


class ConvReplay:
    """The convolutions of one train step, replayed as plain ``torch.nn.Conv2d`` forward+backward passes.

    One ``nn.Conv2d`` per distinct shape, in NCHW or channels-last layout, whichever a calibration finds
    faster there (what the machine can do at that shape); ``replay()`` runs every recorded call once (input
    and weight gradients), so timing it beside the train step, in the same round, gives the machine's
    convolution throughput under the same load. ``flops``: the FLOPs one replay does.
    """

    def __init__(self, calls: list[tuple], calibration_reps: int = 3):
        import collections
        import torch
        self.counts = collections.Counter(calls)
        self.flops = sum(_conv_flops(c) for c in calls)
        self.runs = {}
        for call in self.counts:
            (b, cin, h, w), (cout, _, kh, kw), stride, padding, dilation, groups, bias = call
            best = None
            for layout in (torch.contiguous_format, torch.channels_last):
                conv = torch.nn.Conv2d(cin, cout, (kh, kw), stride, padding, dilation, groups, bias)
                conv = conv.to(memory_format=layout)
                inp = torch.randn(b, cin, h, w).contiguous(memory_format=layout).requires_grad_()
                grad = torch.randn_like(conv(inp))

                def run(conv=conv, inp=inp, grad=grad):
                    conv(inp).backward(grad)
                run()
                t0 = time.perf_counter()
                for _ in range(calibration_reps):
                    run()
                t = time.perf_counter() - t0
                if best is None or t < best[0]:
                    best = (t, run)
            self.runs[call] = best[1]

    def replay(self) -> None:
        for call, n in self.counts.items():
            for _ in range(n):
                self.runs[call]()


def train_flops(impl: Impl) -> float:
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        impl.counted_step()
    return counter.get_total_flops()


# ---------------------------------------------------------------------------------------------- measuring
def measure_memory(impl: str, config: str, steps: int, threads: int, before: str | None) -> dict:
    """In a fresh process: max-RSS rise over building, ``steps`` train steps and sampling."""
    import torch
    torch.set_num_threads(threads)
    import FrEIA.framework  # noqa: F401  (every side's imports before the baseline)
    import normflows  # noqa: F401
    import flowlib  # noqa: F401
    if impl == "ours-before":
        load_flowlib_at(before)
    _reset_peak()
    rss0 = _rss_mb()
    run = build(impl, config, before)
    for _ in range(steps):
        run.train_step()
    run.sample()
    return {"params": sum(p.numel() for p in run.params), "peak_rss_mb": _peak_mb() - rss0}


def measure_speed(config: str, impls: list[str], rounds: int, threads: int, before: str | None,
                  predict_samples: int) -> dict:
    """Every implementation in one process, timed round-robin, so load from other processes hits all alike."""
    import torch
    torch.set_num_threads(threads)
    runs, warmup = {}, {}
    for impl in impls:
        t0 = time.perf_counter()
        runs[impl] = build(impl, config, before)
        t1 = time.perf_counter()
        runs[impl].train_step()  # warm-up (compilation, allocator, oneDNN primitive caches)
        warmup[impl] = time.perf_counter() - t1  # first step: includes torch.compile's compilation
        runs[impl].train_step()
        runs[impl].sample()
        print(f"  {config}/{impl}: built and warmed up in {time.perf_counter() - t0:.0f}s", file=sys.stderr,
              flush=True)
    out, replays = {}, {}
    for impl, run in runs.items():
        replays[impl] = ConvReplay(_record_convs(run.counted_step))
        out[impl] = {"batch": run.batch, "params": sum(p.numel() for p in run.params),
                     "train_gflop_per_img": train_flops(run) / run.batch / 1e9}
    times = {impl: {"train": [], "sample": [], "convs": []} for impl in impls}
    for i in range(rounds):
        for impl, run in runs.items():
            for kind, fn in (("train", run.train_step), ("sample", run.sample), ("convs", replays[impl].replay)):
                t0 = time.perf_counter()
                fn()
                times[impl][kind].append(time.perf_counter() - t0)
        print(f"  {config}: round {i + 1}/{rounds}", file=sys.stderr, flush=True)
    for impl, run in runs.items():
        r = out[impl]
        r["train_img_s"] = run.batch / statistics.median(times[impl]["train"])
        r["sample_img_s"] = run.batch / statistics.median(times[impl]["sample"])
        r["train_gflop_s"] = r["train_gflop_per_img"] * r["train_img_s"]
        r["conv_gflop_s"] = replays[impl].flops / statistics.median(times[impl]["convs"]) / 1e9
        r["of_conv"] = r["train_gflop_s"] / r["conv_gflop_s"]
        r["first_step_s"] = warmup[impl]
        r["times"] = times[impl]  # per round, seconds: the paired ratios of `_fmt_ratios` come from these
    if predict_samples:  # sample-mean prediction: batched over draws (ours) or a loop of draws (ours-before)
        timed = {impl: [] for impl, run in runs.items() if run.predict is not None}
        for _ in range(2):
            for impl in timed:
                t0 = time.perf_counter()
                runs[impl].predict(predict_samples)
                timed[impl].append(time.perf_counter() - t0)
        for impl, ts in timed.items():
            out[impl]["predict_ms_per_img"] = 1e3 * min(ts) / runs[impl].batch
            out[impl]["predict_samples"] = predict_samples
    return out


def _fmt_table(rows: list[dict]) -> str:
    head = (f"{'config':9s} {'impl':13s} {'params':>9s} {'GFLOP/img':>9s} {'train img/s':>11s} "
            f"{'sample img/s':>12s} {'peak MB':>8s} {'GFLOP/s':>8s} {'conv GFLOP/s':>12s} {'of conv':>7s} "
            f"{'predict ms/img':>14s} {'1st step s':>10s}")
    lines = [head]
    for r in rows:
        lines.append(f"{r['config']:9s} {r['impl']:13s} {r['params']:9d} {r['train_gflop_per_img']:9.3f} "
                     f"{r['train_img_s']:11.2f} {r['sample_img_s']:12.2f} {r['peak_rss_mb']:8.1f} "
                     f"{r['train_gflop_s']:8.1f} {r['conv_gflop_s']:12.1f} {r['of_conv']:7.1%} "
                     + (f"{r['predict_ms_per_img']:14.1f}" if "predict_ms_per_img" in r else f"{'-':>14s}")
                     + f" {r.get('first_step_s', float('nan')):10.1f}")
    return "\n".join(lines)


def _paired(a: dict, b: dict, kind: str) -> float:
    """Median over rounds of ``b``'s time / ``a``'s time in the same round (batch-normalised): each round's
    two timings ran back to back, so a load spike from another process inflates both rather than one median."""
    if "times" not in a or "times" not in b:
        return float("nan")
    return statistics.median((tb / b["batch"]) / (ta / a["batch"]) for ta, tb in zip(a["times"][kind], b["times"][kind]))


def _fmt_ratios(rows: list[dict], configs: list[str]) -> str:
    lines = []
    for config in configs:
        by = {r["impl"]: r for r in rows if r["config"] == config}
        peers = [by[p] for p in PEERS if p in by]
        for ours in OURS:
            if ours not in by:
                continue
            a = by[ours]
            if peers:
                train_peer = max(peers, key=lambda r: r["train_img_s"])
                sample_peer = max(peers, key=lambda r: r["sample_img_s"])
                lines.append(f"{config:9s} {ours:13s} train {a['train_img_s'] / train_peer['train_img_s']:.2f}x the "
                             f"faster peer ({train_peer['impl']}), sample "
                             f"{a['sample_img_s'] / sample_peer['sample_img_s']:.2f}x ({sample_peer['impl']}); "
                             f"paired per-round medians: train {_paired(a, train_peer, 'train'):.2f}x, "
                             f"sample {_paired(a, sample_peer, 'sample'):.2f}x")
            if "ours-before" in by:
                b = by["ours-before"]
                line = (f"{config:9s} {ours:13s} train {a['train_img_s'] / b['train_img_s']:.2f}x "
                        f"ours-before, sample {a['sample_img_s'] / b['sample_img_s']:.2f}x")
                if "predict_ms_per_img" in a and "predict_ms_per_img" in b:
                    line += (f", predict ({a['predict_samples']} samples) "
                             f"{b['predict_ms_per_img'] / a['predict_ms_per_img']:.2f}x")
                lines.append(line)
    return "\n".join(lines)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS), choices=list(CONFIGS))
    p.add_argument("--impls", nargs="+", default=None,
                   help="subset of ours ours-cl ours-mixed ours-compiled ours-before normflows freia (default: all "
                        "that apply; ours-mixed only on a CPU with native bfloat16)")
    p.add_argument("--rounds", type=int, default=8, help="timed round-robin rounds (median reported)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--before", metavar="REV", help="also time flowlib as of this git revision (ours-before)")
    p.add_argument("--no-compile", action="store_true", help="leave out ours-compiled")
    p.add_argument("--predict-samples", type=int, default=16,
                   help="draws per sample-mean prediction timed for ours and ours-before (0: skip)")
    p.add_argument("--json", type=Path, help="also write the rows and ratios here (atomically)")
    p.add_argument("--one", nargs=2, metavar=("IMPL", "CONFIG"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)
    if args.one:
        print(json.dumps(measure_memory(args.one[0], args.one[1], 3, args.threads, args.before)))
        return 0
    import flowlib
    # ours-mixed only where bfloat16 is native: emulated (an AVX2 CPU) it is ~10x slower and says nothing
    mixed = ["ours-mixed"] if flowlib.bfloat16_is_native("cpu") else []
    if not args.impls and not mixed:
        print("  ours-mixed left out: this CPU has neither AVX512-BF16 nor AMX", file=sys.stderr)
    impls = args.impls or (["ours", "ours-cl"] + mixed + ([] if args.no_compile else ["ours-compiled"])
                           + (["ours-before"] if args.before else []) + list(PEERS))
    if "ours-before" in impls and not args.before:
        raise SystemExit("--impls ours-before needs --before REV")

    rows = []
    t_start = time.monotonic()
    for n, config in enumerate(args.configs, 1):
        speed = measure_speed(config, impls, args.rounds, args.threads, args.before, args.predict_samples)
        for impl in impls:
            cmd = [sys.executable, __file__, "--one", impl, config, "--threads", str(args.threads)]
            out = subprocess.run(cmd + (["--before", args.before] if args.before else []), capture_output=True,
                                 text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                     [str(ROOT), os.environ.get("PYTHONPATH", "")])})
            if out.returncode:
                print(out.stderr, file=sys.stderr)
                raise SystemExit(f"memory benchmark {impl}/{config} failed (exit {out.returncode})")
            mem = json.loads(out.stdout.splitlines()[-1])
            rows.append({"config": config, "impl": impl, **speed[impl], "peak_rss_mb": mem["peak_rss_mb"]})
        elapsed = time.monotonic() - t_start
        print(f"[{n}/{len(args.configs)}] {config} done; {elapsed:.0f}s elapsed, "
              f"ETA {elapsed / n * (len(args.configs) - n):.0f}s", file=sys.stderr, flush=True)

    import torch
    print(f"# {datetime.datetime.now().isoformat(timespec='minutes')}  {_cpu_name()}, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} threads, {args.rounds} rounds, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(_fmt_table(rows))
    print("\nratios (img/s; >1: ours faster):")
    print(_fmt_ratios(rows, args.configs))
    if args.json:
        tmp = args.json.with_suffix(args.json.suffix + ".tmp")
        tmp.write_text(json.dumps({"threads": args.threads, "rounds": args.rounds, "before": args.before,
                                   "rows": rows}, indent=2))
        tmp.replace(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
