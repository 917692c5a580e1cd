"""compile_model: compiled training objective equal to eager; any compiler failure falls back to eager."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch._dynamo.backends.common import aot_autograd

from flowlib import build_model, compile_model
from randomize import randomize


def _model(target="image8"):
    """A tiny SR flow; ``image8`` draws dequantization noise in every call, ``continuous`` draws none (compiled
    kernels draw their random numbers with another generator, so only a noise-free call compares exactly)."""
    torch.manual_seed(0)
    model = build_model("cnf", target, (3, 8, 8), (3, 4, 4), levels=2, steps=1, hidden=8,
                        encoder_options={"blocks": 1, "growth": 4, "context_channels": 4})
    gen = torch.Generator().manual_seed(1)
    y = torch.randint(0, 256, (2, 3, 8, 8), generator=gen).float()
    if target == "continuous":
        y = y / 255
    x = torch.rand(2, 3, 4, 4, generator=gen)
    with torch.no_grad():
        model.nll(y, x)
    return randomize(model, 0.05, seed=2), y, x


def _grads(objective, model, y, x, seed=5):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the uniform dequantization noise
    loss = objective(y, x).mean()
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


def _identity_compiler(gm, example_inputs):
    return gm


def _failing_compiler(gm, example_inputs):
    raise RuntimeError("injected compiler failure")


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("where", ["forward", "backward", "construction"])
def test_compiler_failure_falls_back_to_eager_with_a_warning(where, monkeypatch):
    model, y, x = _model()
    eager_loss, eager_grads = _grads(model, model, y, x)
    if where == "construction":
        def broken_compile(*args, **kwargs):
            raise RuntimeError("torch.compile is not supported here")
        monkeypatch.setattr(torch, "compile", broken_compile)
        backend = "inductor"
    elif where == "forward":
        backend = aot_autograd(fw_compiler=_failing_compiler, bw_compiler=_identity_compiler)
    else:  # the backward graph compiles lazily, at the first backward: the wrapper forces it inside its try
        backend = aot_autograd(fw_compiler=_identity_compiler, bw_compiler=_failing_compiler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        objective = compile_model(model, backend=backend)
        loss, grads = _grads(objective, model, y, x)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert any("compile_model" in m and "eagerly" in m for m in messages), messages
    assert objective.failure is not None
    # The fallback replays the call with the random state the failed attempt started from: same noise.
    torch.testing.assert_close(loss, eager_loss, rtol=0, atol=0)
    for g, e in zip(grads, eager_grads):  # .grad holds one backward's gradient, not the check's as well
        torch.testing.assert_close(g, e, rtol=0, atol=0)
    loss2, _ = _grads(objective, model, y, x)  # stays eager, silently
    torch.testing.assert_close(loss2, eager_loss, rtol=0, atol=0)


def test_working_backend_matches_eager_and_keeps_the_state_dict():
    model, y, x = _model("continuous")
    eager_loss, eager_grads = _grads(model, model, y, x)
    objective = compile_model(model, backend=aot_autograd(fw_compiler=_identity_compiler,
                                                          bw_compiler=_identity_compiler))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        loss, grads = _grads(objective, model, y, x)
    assert objective.failure is None
    torch.testing.assert_close(loss, eager_loss, rtol=1e-6, atol=1e-6)
    for g, e in zip(grads, eager_grads):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)
    assert len(list(objective.parameters())) == len(list(model.parameters()))
    assert [k.removeprefix("eager.") for k in objective.state_dict()] == list(model.state_dict())


def test_errors_of_the_call_itself_propagate_and_keep_compilation():
    model, y, x = _model()
    objective = compile_model(model, backend=aot_autograd(fw_compiler=_identity_compiler,
                                                          bw_compiler=_identity_compiler))
    with pytest.raises(ValueError, match="multiples of 2\\*\\*levels"):
        objective(torch.zeros(2, 3, 6, 6), torch.zeros(2, 3, 3, 3))
    assert objective.failure is None


def test_compile_model_rejects_what_is_not_a_module():
    with pytest.raises(TypeError, match="nn.Module"):
        compile_model(lambda y, x: y)


@pytest.mark.slow
def test_inductor_compiles_the_objective_and_matches_eager():
    model, y, x = _model("continuous")
    eager_loss, eager_grads = _grads(model, model, y, x)
    objective = compile_model(model)
    loss, grads = _grads(objective, model, y, x)
    assert objective.failure is None, f"inductor failed on this machine: {objective.failure!r}"
    torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=1e-4)
    for g, e in zip(grads, eager_grads):
        torch.testing.assert_close(g, e, rtol=1e-3, atol=1e-4)
