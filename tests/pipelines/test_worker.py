"""The worker's pieces outside Ray: the step lowers the loss and skips non-finite steps, DDP over 2 ranks equals 1
rank on the union batch (torch.distributed gloo in 2 processes, no Ray), the meter, the job and the model."""
from __future__ import annotations

import math
import os
import pickle
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from pipelines.training.worker import (FATAL_KEY, NLLObjective, NonFiniteError, StepResult, TrainJob, TrainMeter,
                                       WorkerConfigError, agree_on_error, batches, build_for_batch, fatal_result,
                                       lr_at, raise_if_fatal, train_step)
from tests.conftest import free_port


class TinyConditionalGaussian(nn.Module):
    """A StructuredModel-shaped stand-in: nll(y, x) of y ~ N(mu(x), sigma(x)^2) per pixel."""

    def __init__(self):
        super().__init__()
        self.net = nn.Conv2d(1, 2, 3, padding=1)

    def nll(self, y, x):
        mu, log_sigma = self.net(x).chunk(2, dim=1)
        z = (y - mu) * torch.exp(-log_sigma)
        return (0.5 * z**2 + log_sigma + 0.5 * math.log(2 * math.pi)).flatten(1).sum(1)

    def num_dims(self, y):
        return y[0].numel()


def toy_batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 6, 6, generator=g)
    y = 2.0 * x + 0.5 + 0.05 * torch.randn(n, 1, 6, 6, generator=g)
    return y, x


def real_model(y, x):
    from flowlib.models import build_model

    return build_model("cglow", "continuous", tuple(y.shape[1:]), tuple(x.shape[1:]), levels=1, steps=2, hidden=8)


@pytest.mark.parametrize("kind", ["tiny", "real"])
def test_train_step_lowers_the_loss(kind):
    torch.manual_seed(0)
    y, x = toy_batch(8)
    if kind == "real":
        y, x = y.repeat(1, 3, 2, 2)[:, :, :8, :8], x.repeat(1, 3, 2, 2)[:, :, :8, :8]
        model = real_model(y, x)
        with torch.no_grad():
            model.nll(y, x)  # data-dependent init, as the worker does before DDP
    else:
        model = TinyConditionalGaussian()
    objective = NLLObjective(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    dims = y[0].numel()
    first = train_step(objective, opt, y, x, dims, grad_clip=10.0)
    for _ in range(40):
        last = train_step(objective, opt, y, x, dims, grad_clip=10.0)
    assert first.finite and last.finite
    assert last.loss < first.loss - 0.1 * abs(first.loss), (first, last)
    assert last.bpd == pytest.approx(last.loss / (dims * math.log(2)))


def test_non_finite_loss_skips_the_step_and_leaves_parameters_alone():
    model = TinyConditionalGaussian()
    objective = NLLObjective(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    y, x = toy_batch(4)
    y[0, 0, 0, 0] = float("nan")
    before = [p.detach().clone() for p in model.parameters()]
    result = train_step(objective, opt, y, x, y[0].numel(), grad_clip=1.0)
    assert not result.finite
    for b, p in zip(before, model.parameters()):
        assert torch.equal(b, p)
    assert all(p.grad is None for p in model.parameters())


def test_gradient_clipping_bounds_the_update_norm():
    model = TinyConditionalGaussian()
    objective = NLLObjective(model)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    y, x = toy_batch(4)
    y = y * 100  # huge gradients
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    result = train_step(objective, opt, y, x, y[0].numel(), grad_clip=0.5)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert result.grad_norm > 0.5
    assert (after - before).norm() == pytest.approx(0.5, rel=1e-4)


def test_batches_reads_the_epoch_of_each_batch_and_rejects_an_empty_loader():
    loader = [{"epoch": [3, 3], "i": 0}, {"epoch": [3, 4], "i": 1}, {"epoch": [4, 4], "i": 2}]
    stream = batches(loader)
    assert [(e, b["i"]) for e, b in (next(stream) for _ in range(3))] == [(3, 0), (4, 1), (4, 2)]
    with pytest.raises(RuntimeError, match="no batch"):  # an endless loader never ends; one that does is broken
        next(stream)
    with pytest.raises(RuntimeError, match="no batch"):
        next(batches([]))


def test_warmup_schedule():
    assert lr_at(0, 1e-3, 10) == pytest.approx(1e-4)
    assert lr_at(9, 1e-3, 10) == pytest.approx(1e-3)
    assert lr_at(50, 1e-3, 0) == 1e-3
    assert lr_at(50, 1e-3, 10, 100, "constant") == 1e-3


def test_cosine_schedule_follows_the_warmup_down_to_zero():
    lrs = [lr_at(t, 1e-3, 10, 110, "cosine") for t in range(110)]
    assert lrs[:10] == [lr_at(t, 1e-3, 10) for t in range(10)]  # the same warm-up
    assert lrs[10] == pytest.approx(1e-3)  # the cosine starts where the warm-up ends
    assert lrs[60] == pytest.approx(0.5e-3)  # half way: half the rate
    assert lrs[109] == pytest.approx(0.5e-3 * (1 + math.cos(math.pi * 99 / 100)))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # falls monotonically after the warm-up
    assert lr_at(0, 1e-3, 0, 100, "cosine") == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="steps > warmup_steps"):
        lr_at(5, 1e-3, 10, 10, "cosine")
    with pytest.raises(ValueError, match="'constant' or 'cosine'"):
        lr_at(5, 1e-3, 0, 10, "step")


def _ddp_rank(rank, world_size, port, state, y, x, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        torch.set_num_threads(1)
        model = TinyConditionalGaussian()
        model.load_state_dict(state)
        objective = nn.parallel.DistributedDataParallel(NLLObjective(model))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        half = y.shape[0] // world_size
        sl = slice(rank * half, (rank + 1) * half)
        result = train_step(objective, opt, y[sl], x[sl], y[0].numel(), grad_clip=None)
        out[rank] = {"grad_norm": result.grad_norm,
                     "params": [p.detach().clone() for p in model.parameters()]}
    finally:
        dist.destroy_process_group()


def test_ddp_two_ranks_equal_one_rank_on_the_union_batch():
    torch.manual_seed(1)
    model = TinyConditionalGaussian()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    y, x = toy_batch(8, seed=3)
    # one process, the whole batch
    single = TinyConditionalGaussian()
    single.load_state_dict(state)
    opt = torch.optim.SGD(single.parameters(), lr=0.1)
    ref = train_step(NLLObjective(single), opt, y, x, y[0].numel(), grad_clip=None)
    # two processes, half each
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_ddp_rank, args=(2, free_port(), state, y, x, out), nprocs=2, join=True)
        out = dict(out)
    for rank in (0, 1):
        assert out[rank]["grad_norm"] == pytest.approx(ref.grad_norm, rel=1e-5)
        for p_ddp, p_ref in zip(out[rank]["params"], single.parameters()):
            torch.testing.assert_close(p_ddp, p_ref.detach(), rtol=1e-5, atol=1e-6)


def test_meter_counts_throughput_and_gives_up_after_too_many_non_finite_steps():
    meter = TrainMeter("e", world_size=2, max_nonfinite=3, nonfinite_total=5)
    stored = {"train_nll": 1.0, "train_bpd": 0.1, "samples_per_s": 7.0}
    assert meter.latest(stored) == stored  # nothing trained in this process: what the run ended with
    assert math.isnan(meter.latest()["train_nll"])
    meter.start()
    ok, bad = StepResult(2.0, 0.3, 1.0, True), StepResult(float("nan"), float("nan"), float("nan"), False)
    meter.update(ok, 4, step=1)
    latest = meter.latest(stored)
    assert (latest["train_nll"], latest["train_bpd"]) == (2.0, 0.3) and latest["samples_per_s"] > 0
    assert meter.window_rate() > 0 and meter.window_rate() == 0.0  # a new window starts empty
    meter.update(bad, 4, step=2)
    meter.update(bad, 4, step=3)
    meter.update(ok, 4, step=4)  # a finite step resets the run of skipped ones
    meter.update(bad, 4, step=5)
    meter.update(bad, 4, step=6)
    with pytest.raises(NonFiniteError, match=r"e: training diverged at step 5: 3 consecutive steps .* "
                                             r"\(steps 5-7; last at step 7"):
        meter.update(bad, 4, step=7)
    assert meter.nonfinite_total == 5 + 5 and meter.samples == 7 * 4


def job_for(name="drive_cnf"):
    from pipelines.params import load_params
    from pipelines.tasks import get_task
    from pipelines.training.driver import model_options

    exp = load_params(Path(__file__).resolve().parents[2] / "params.yaml").experiment(name)
    task = get_task(exp.task)
    return TrainJob(experiment=exp, target=task.target, model_options=model_options(exp, task), data_dir="/d",
                    manifest={"dataset": "x", "splits": {}})


def test_the_job_pickles_and_builds_its_model_for_a_batch():
    job = job_for("lfw32_cglow")
    assert pickle.loads(pickle.dumps(job)) == job
    torch.manual_seed(0)
    y, x = torch.randint(0, 3, (2, 1, 16, 16)).float(), torch.rand(2, 3, 16, 16)
    torch.manual_seed(1)
    model = build_for_batch(job, y, x)
    assert model.config["family"] == "cglow" and model.config["num_classes"] == 3  # the task's classes
    assert model.config["y_shape"] == [1, 16, 16] and torch.isfinite(model.nll(y, x)).all()
    # ActNorm's data-dependent initialisation runs on a fresh fit's first batch only (a resumed one loads)
    job = job_for("drive_cnf")
    y = (y > 0).float()
    states = []
    for initialise in (True, False):
        torch.manual_seed(1)
        states.append(build_for_batch(job, y, x, initialise=initialise).state_dict())
    assert not all(torch.equal(a, b) for a, b in zip(states[0].values(), states[1].values()))


def test_a_restored_run_of_non_finite_steps_counts_towards_the_limit():
    """A restart from a checkpoint written mid-divergence must not reset the limit (it would never trip)."""
    bad = StepResult(float("nan"), float("nan"), float("nan"), False)
    meter = TrainMeter("e", max_nonfinite=3, nonfinite_run=2)
    with pytest.raises(NonFiniteError, match="diverged at step 9: 3 consecutive"):
        meter.update(bad, 1, step=11)


class FakeResult:
    def __init__(self, value):
        self.return_value = value


def test_a_fatal_error_is_returned_by_the_workers_and_raised_by_the_driver():
    """Ray retries every raised worker error; a divergence travels as rank 0's return value instead."""
    meter = TrainMeter("e", max_nonfinite=1)
    with pytest.raises(NonFiniteError) as err:
        meter.update(StepResult(float("inf"), float("inf"), 1.0, False), 1, step=21)
    value = fatal_result(err.value, 21)
    assert value[FATAL_KEY].startswith("e: training diverged at step 21") and value["step"] == 21
    with pytest.raises(NonFiniteError, match=r"e: training diverged at step 21: .*\(not retried"):
        raise_if_fatal(FakeResult(pickle.loads(pickle.dumps(value))), "e")
    config = fatal_result(WorkerConfigError("e: rank 0 cannot set up the job (ValueError: levels)"), 0)
    with pytest.raises(WorkerConfigError, match=r"cannot set up the job \(ValueError: levels\)"):
        raise_if_fatal(FakeResult(config), "e")
    ok = FakeResult({"step": 8, "resumed_from_step": 0})
    assert raise_if_fatal(ok, "e") is ok and raise_if_fatal(FakeResult(None), "e").return_value is None


def _agree_rank(rank, world_size, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        out[rank] = agree_on_error("rank 1: bad option" if rank == 1 else None, world_size)
    finally:
        dist.destroy_process_group()


def test_every_rank_agrees_on_one_ranks_setup_error():
    assert agree_on_error(None, 1) is None and agree_on_error("x", 1) == "x"
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_agree_rank, args=(2, free_port(), out), nprocs=2, join=True)
        assert dict(out) == {0: "rank 1: bad option", 1: "rank 1: bad option"}


def test_build_for_batch_initialises_in_float32_then_applies_the_scaling_settings():
    import dataclasses

    from flowlib.layout import is_channels_last
    from flowlib.precision import compute_dtype

    plain = job_for("drive_cnf")
    exp = plain.experiment
    fast = dataclasses.replace(plain, experiment=dataclasses.replace(
        exp, scaling=dataclasses.replace(exp.scaling, channels_last=True, mixed_precision=True)))
    y, x = (torch.rand(2, 1, 16, 16) > 0.8).float(), torch.rand(2, 3, 16, 16)
    models = []
    for job in (plain, fast):
        torch.manual_seed(1)
        models.append(build_for_batch(job, y, x))
    assert compute_dtype(models[0]) is None and compute_dtype(models[1]) == torch.bfloat16
    assert any(is_channels_last(p) for p in models[1].parameters())
    for (key, a), b in zip(models[0].state_dict().items(), models[1].state_dict().values()):
        assert torch.equal(a, b), key  # ActNorm's data-dependent initialisation ran in full precision


def test_selector_scores_with_fixed_noise_keeps_the_lowest_and_leaves_the_training_rng_alone():
    from flowlib.models import build_model
    from pipelines.training.worker import Selector

    torch.manual_seed(0)
    y, x = (torch.rand(6, 1, 8, 8) > 0.7).float(), torch.rand(6, 3, 8, 8)
    model = build_model("cnf", "binary", (1, 8, 8), (3, 8, 8), levels=1, steps=1, hidden=4, encoder="vgg",
                        encoder_options={"width": 2}, dequantization="binary")
    with torch.no_grad():
        model.nll(y, x)
    batches = [{"y": y[:4], "x": x[:4]}, {"y": y[4:], "x": x[4:]}]
    selector = Selector(batches)
    torch.manual_seed(5)
    before = torch.rand(1)
    torch.manual_seed(5)
    first = selector.update(model, 10)
    assert torch.equal(torch.rand(1), before)  # the training RNG stream is untouched
    assert selector.score(model) == first  # the same dequantization noise every time
    torch.manual_seed(0)
    with torch.no_grad():
        ll = torch.cat([model.log_likelihood(b["y"], b["x"]) for b in batches])
    assert first == pytest.approx(float((-ll / (64 * math.log(2))).mean()), rel=1e-6)
    assert selector.best == {"step": 10, "bpd": first}
    assert selector.update(model, 15) == first and selector.best["step"] == 10  # a tie keeps the earlier one
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))
    worse = selector.update(model, 20)
    if worse >= first:
        assert selector.best["step"] == 10
        assert not all(torch.equal(a, b) for a, b in zip(selector.state.values(), model.state_dict().values()))
    else:
        assert selector.best == {"step": 20, "bpd": worse}
