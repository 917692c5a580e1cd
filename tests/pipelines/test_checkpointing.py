"""Checkpoints of a fit outside Ray: write/read/restore round trip, and what each rank reports."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from flowlib.checkpoint import load_model
from flowlib.models import build_model
from pipelines.training.checkpointing import (BEST_FILE, MODEL_FILE, STATE_FILE, CheckpointError, Checkpointer,
                                              TrainState, read_state, set_rng_state)


def tiny():
    torch.manual_seed(0)
    model = build_model("cnf", "binary", (1, 8, 8), (3, 8, 8), levels=1, steps=1, hidden=4, encoder="vgg",
                        encoder_options={"width": 2})
    y, x = (torch.rand(2, 1, 8, 8) > 0.5).float(), torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        model.nll(y, x)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.nll(y, x).mean().backward()
    opt.step()
    return model, opt


def test_write_read_restore_round_trip(tmp_path):
    model, opt = tiny()
    random.seed(3)
    np.random.seed(3)
    state = TrainState(step=12, epoch=2, nonfinite_total=1, nonfinite_run=1, latest={"train_nll": 1.5, "train_bpd": 0.2,
                                                                     "samples_per_s": 9.0})
    Checkpointer(model, opt, experiment="e", world_size=2).write(tmp_path, state)
    assert {p.name for p in tmp_path.iterdir()} == {MODEL_FILE, STATE_FILE}
    draws = (random.random(), np.random.rand(), torch.rand(1))

    read = read_state(tmp_path)
    assert (read.step, read.epoch, read.nonfinite_total, read.nonfinite_run, read.latest) == (12, 2, 1, 1,
                                                                                              state.latest)
    other = build_model(**model.config)
    other_opt = torch.optim.Adam(other.parameters(), lr=1e-2)
    Checkpointer(other, other_opt, experiment="e").restore(read)
    for a, b in zip(model.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)
    assert other_opt.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
    set_rng_state(read.rng)  # the RNG state of the moment it was written
    assert (random.random(), np.random.rand(), torch.rand(1)) == draws
    # model.pt is a flowlib checkpoint on its own
    loaded = load_model(tmp_path / MODEL_FILE)
    assert torch.equal(next(iter(loaded.state_dict().values())), next(iter(model.state_dict().values())))


def test_restore_needs_the_weights(tmp_path):
    model, opt = tiny()
    with pytest.raises(ValueError, match="step 3 holds no weights"):
        Checkpointer(model, opt, experiment="e").restore(TrainState(step=3))


@pytest.mark.parametrize("rank", [0, 1])
@pytest.mark.parametrize("final", [False, True])
def test_every_rank_reports_rank_0_attaches_the_checkpoint_and_waits_for_the_commit(rank, final, capsys):
    model, opt = tiny()
    calls = []

    def report(metrics, folder):
        files = sorted(p.name for p in Path(folder).iterdir()) if folder else None
        calls.append(("report", metrics["step"], files))

    checkpointer = Checkpointer(model, opt, experiment="e", rank=rank, world_size=2, report=report,
                                commit=lambda: calls.append(("commit",)))
    checkpointer.report({"step": 4}, TrainState(step=4), final=final)
    files = [MODEL_FILE, STATE_FILE] if rank == 0 else None
    assert calls == [("report", 4, files)] + ([] if final else [("commit",)])
    assert ("checkpoint at step 4 committed" in capsys.readouterr().out) == (rank == 0 and not final)


def test_a_damaged_train_state_names_the_file_and_what_was_expected(tmp_path):
    model, opt = tiny()
    with pytest.raises(CheckpointError, match=f"{tmp_path / STATE_FILE}: no train state"):
        read_state(tmp_path)
    Checkpointer(model, opt, experiment="e").write(tmp_path, TrainState(step=3))
    path = tmp_path / STATE_FILE
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a copy cut short
    with pytest.raises(CheckpointError, match=rf"{path}: not a readable train state .*truncated"):
        read_state(tmp_path)
    path.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=rf"{path}: not a readable train state"):
        read_state(tmp_path)
    torch.save({"step": 3}, path)
    with pytest.raises(CheckpointError, match=rf"{path}: not a train state: lacks model, optimizer, epoch"):
        read_state(tmp_path)
    other, other_opt = build_model("cnf", "binary", (1, 8, 8), (3, 8, 8), levels=1, steps=1, hidden=6,
                                   encoder="vgg", encoder_options={"width": 2}), None
    other_opt = torch.optim.Adam(other.parameters())
    Checkpointer(model, opt, experiment="e").write(tmp_path, TrainState(step=3))
    with pytest.raises(CheckpointError, match="e: the checkpoint of step 3 does not fit the model"):
        Checkpointer(other, other_opt, experiment="e").restore(read_state(tmp_path))


def test_the_best_checkpoint_of_model_selection_travels_with_every_checkpoint(tmp_path):
    model, opt = tiny()
    best_weights = {k: v.clone() + 1.0 if v.is_floating_point() else v.clone() for k, v in model.state_dict().items()}
    state = TrainState(step=30, epoch=3, best={"step": 20, "bpd": 0.5}, best_model=best_weights)
    Checkpointer(model, opt, experiment="e").write(tmp_path, state)
    assert {p.name for p in tmp_path.iterdir()} == {MODEL_FILE, STATE_FILE, BEST_FILE}
    read = read_state(tmp_path)
    assert read.best == {"step": 20, "bpd": 0.5}
    for key, value in best_weights.items():
        assert torch.equal(read.best_model[key], value), key
    best = torch.load(tmp_path / BEST_FILE, weights_only=False)
    assert (best["step"], best["select_bpd"], best["experiment"]) == (20, 0.5, "e")
    assert torch.equal(next(iter(load_model(tmp_path / BEST_FILE).state_dict().values())),
                       next(iter(best_weights.values())))
    (tmp_path / BEST_FILE).write_bytes(b"truncated")
    with pytest.raises(CheckpointError, match=f"{BEST_FILE}: the train state records a best checkpoint"):
        read_state(tmp_path)
