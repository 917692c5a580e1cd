"""``MODEL_OPTIONS`` is what ``build_model`` accepts: every declared option builds, any other name is refused,
and checkpoints saved under renamed option names still load."""
from __future__ import annotations

import pytest
import torch

from flowlib.checkpoint import load_model, save_checkpoint
from flowlib.models import ENCODER_OPTION_NAMES, FAMILIES, MODEL_OPTIONS, build_model, upgrade_config

BASE = {"cnf": dict(levels=1, steps=1, hidden=4, encoder_options={"blocks": 1, "growth": 2, "context_channels": 2}),
        "cglow": dict(levels=1, steps=1, hidden=4, cond_hidden=2),
        "factorized": dict(hidden=4, encoder_options={"blocks": 1, "growth": 2, "context_channels": 2, "width": 2})}
TARGET_OF = {"num_classes": "categorical", "residual": "continuous", "beta": "binary"}


def example(option):
    """Every value worth trying for ``option``: each choice, else one valid value of its kind."""
    if option.choices:
        return list(option.choices)
    if option.fields is not None:
        return [{key: 2 for key in option.fields}]
    return [{int: 2, float: 0.9, bool: False}[option.kind]]


CASES = [(family, name, value) for family in FAMILIES for name, option in MODEL_OPTIONS[family].items()
         for value in example(option)]


@pytest.mark.parametrize("family, name, value", CASES, ids=[f"{f}-{n}-{v}" for f, n, v in CASES])
def test_every_declared_option_builds(family, name, value):
    target = TARGET_OF.get(name, "binary")
    if name == "num_classes":
        value = 3
    y_shape = (1, 8, 8) if target != "continuous" else (3, 8, 8)
    options = {**BASE[family], name: value}
    if name in ENCODER_OPTION_NAMES.values() and "encoder_options" in options:  # the flat form of one of them
        options["encoder_options"] = {k: v for k, v in options["encoder_options"].items()
                                      if ENCODER_OPTION_NAMES[k] != name}
    if name == "encoder_scales" or (name == "encoder_options" and family == "factorized"):
        options["encoder"] = "vgg"
    model = build_model(family, target, y_shape, (3, 8, 8), **options)
    if name == "param_budget":  # the config records the width the budget chose instead
        assert model.config["hidden"] >= 1 and name not in model.config
    else:
        assert model.config[name] == value
    x = torch.rand(2, 3, 8, 8)
    assert model.sample(x).shape[-2:] == (8, 8)


@pytest.mark.parametrize("family", FAMILIES)
def test_any_other_option_is_refused_listing_the_allowed_ones(family):
    with pytest.raises(ValueError) as err:
        build_model(family, "binary", (1, 8, 8), (3, 8, 8), **BASE[family], encdoer="vgg")
    assert f"option encdoer is not an option of family={family!r}; allowed: {', '.join(MODEL_OPTIONS[family])}" \
        in str(err.value)


def test_an_option_of_another_family_says_whose_it_is():
    with pytest.raises(ValueError, match=r"option cond_hidden is not an option of family='cnf' \(an option of "
                                         r"family 'cglow'\)"):
        build_model("cnf", "binary", (1, 8, 8), (3, 8, 8), cond_hidden=4)


@pytest.mark.parametrize("old", [{"levels": 3}, {"encoder_levels": 3}, {"encoder_options": {"levels": 3}}])
def test_a_factorized_checkpoint_saved_with_levels_loads(tmp_path, old):
    """Factorized models called their VGG outputs ``levels`` (the flows' word for flow levels) before the
    rename to ``encoder_scales`` / ``encoder_options.scales``; their checkpoints rebuild the same network."""
    model = build_model("factorized", "binary", (1, 8, 8), (3, 8, 8), hidden=4, encoder="vgg",
                        encoder_options={"width": 2, "scales": 3})
    path = save_checkpoint(tmp_path / "model.pt", model)
    ckpt = torch.load(path, weights_only=False)
    config = {k: v for k, v in ckpt["config"].items() if k != "encoder_options"}
    ckpt["config"] = {**config, "encoder_options": {"width": 2}, **old}
    if "encoder_options" in old:
        ckpt["config"]["encoder_options"] = {"width": 2, **old["encoder_options"]}
    torch.save(ckpt, path)
    loaded = load_model(path)  # strict: a VGG with the default 2 outputs would not match
    assert set(loaded.state_dict()) == set(model.state_dict())
    assert upgrade_config({"family": "cnf", "levels": 2}) == {"family": "cnf", "levels": 2}  # flows unchanged
