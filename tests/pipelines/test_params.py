"""params.yaml -> typed dataclasses: errors name the key path, --set overrides are typed and checked."""
from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import pytest
import yaml

from flowlib.models import MODEL_OPTIONS
from pipelines.params import MODEL_PARAMS, CnfModelParams, ParamsError, flatten, load_params, parse_params

ROOT = Path(__file__).resolve().parents[2]

WINKLER = ["sr_imagenet32_cnf", "sr_imagenet32_factorized", "sr_imagenet64_cnf", "sr_imagenet64_factorized",
           "drive_cnf", "drive_cnf_uniform", "drive_factored"]
CGLOW = ["horses32_cglow", "horses64_cglow", "horses128_cglow", "lfw32_cglow", "lfw64_cglow", "lfw128_cglow",
         "denoise_cglow", "depth_cglow", "inpaint_cglow"]


def minimal():
    return {"profile": "demo", "datasets": {"drive": {"source": "demo"}},
            "defaults": {"train": {"steps": 7, "lr": 1e-3}, "scaling": {"num_workers": 2}},
            "experiments": {"drive_cnf": {"paper": "winkler2019", "task": "vessel", "data": {"dataset": "drive"},
                                          "model": {"family": "cnf", "levels": 2,
                                                    "encoder_options": {"growth": 5}},
                                          "train": {"lr": 2e-3}}}}


@pytest.mark.parametrize("path", ["params.yaml", "params-paper.yaml"])
def test_shipped_params_hold_every_experiment_of_both_papers(path):
    if not (ROOT / path).exists():
        pytest.skip(f"{path} absent")
    params = load_params(ROOT / path)
    assert set(WINKLER + CGLOW) <= set(params.experiments)
    assert params.profile == ("demo" if path == "params.yaml" else "paper")
    for name, exp in params.experiments.items():
        assert exp.paper == ("winkler2019" if name in WINKLER else "lu2020"), name
        assert exp.data.dataset in params.datasets


def test_paper_profile_has_table5_settings():
    path = ROOT / "params-paper.yaml"
    if not path.exists():
        pytest.skip("params-paper.yaml absent")
    p = load_params(path)
    sr = p.experiment("sr_imagenet64_cnf")
    assert (sr.train.batch_size, sr.model.levels, sr.model.steps, sr.train.lr, sr.train.steps) == (64, 2, 8, 1e-4, 200_000)
    drive = p.experiment("drive_cnf")
    assert (drive.train.batch_size, drive.model.levels, drive.model.steps, drive.train.lr) == (2, 2, 2, 1e-3)
    assert drive.model.dequantization == "binary" and drive.model.encoder == "vgg"


def test_defaults_merge_and_model_options_build_as_given():
    exp = parse_params(minimal()).experiment("drive_cnf")
    assert exp.train.steps == 7 and exp.train.lr == 2e-3  # default merged, experiment wins
    assert exp.scaling.num_workers == 2
    assert isinstance(exp.model, CnfModelParams) and exp.model.encoder_options.growth == 5
    assert exp.model.build_options() == {"levels": 2, "encoder_options": {"growth": 5}}  # unset keys omitted
    assert exp.to_dict()["model"] == {"family": "cnf", "levels": 2, "encoder_options": {"growth": 5}}
    assert flatten(exp.to_dict())["model.encoder_options.growth"] == 5
    assert exp.flatten()["train.lr"] == 2e-3


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r["experiments"]["drive_cnf"]["train"].update(lr="abc"),
     "experiments.drive_cnf.train.lr: expected a positive float, got 'abc'"),
    (lambda r: r["experiments"]["drive_cnf"]["train"].update(lr=-1.0),
     "experiments.drive_cnf.train.lr: expected a positive float, got -1.0"),
    (lambda r: r["experiments"]["drive_cnf"]["train"].update(stpes=3),
     "experiments.drive_cnf.train.stpes: unknown key; allowed keys: steps, batch_size, lr"),
    (lambda r: r["experiments"]["drive_cnf"]["model"].update(family="glow"),
     "experiments.drive_cnf.model.family: expected one of 'cnf', 'cglow', 'factorized', got 'glow'"),
    (lambda r: r["experiments"]["drive_cnf"]["data"].update(dataset="nope"),
     "experiments.drive_cnf.data.dataset: 'nope' is not in datasets"),
    (lambda r: r["experiments"]["drive_cnf"].pop("task"), "experiments.drive_cnf: missing required key(s): task"),
    (lambda r: r["experiments"]["drive_cnf"].setdefault("scaling", {}).update(use_gpu="yes"),
     "experiments.drive_cnf.scaling.use_gpu: expected a boolean"),
    (lambda r: r["experiments"]["drive_cnf"]["train"].update(steps=2.5),
     "experiments.drive_cnf.train.steps: expected a positive integer, got 2.5"),
    (lambda r: r.update(profile="fast"), "profile: expected one of 'demo', 'cpu', 'paper', got 'fast'"),
    (lambda r: r.update(extras=1), "extras: unknown top-level key; allowed keys: defaults"),
    (lambda r: r["experiments"]["drive_cnf"]["train"].update(batch_size=3),
     "train.batch_size: 3 is not divisible by scaling.num_workers=2"),
    (lambda r: r["experiments"]["drive_cnf"]["train"].update(lr_schedule="step"),
     "experiments.drive_cnf.train.lr_schedule: expected one of 'constant', 'cosine', got 'step'"),
    (lambda r: r["experiments"]["drive_cnf"]["train"].update(lr_schedule="cosine", steps=10, warmup_steps=10),
     "experiments.drive_cnf.train.lr_schedule: 'cosine' decays after the warm-up, so it needs train.steps (10) > "
     "train.warmup_steps (10)"),
])
def test_errors_name_the_key(mutate, message):
    raw = minimal()
    mutate(raw)
    with pytest.raises(ParamsError) as err:
        parse_params(raw)
    assert message in str(err.value)


def test_set_overrides_are_yaml_typed_and_relative_or_absolute():
    exp = parse_params(minimal(), ["train.lr=1e-4", "train.steps=3", "scaling.use_gpu=false",
                                   "experiments.drive_cnf.model.levels=3", "model.encoder_options.growth=9",
                                   "train.grad_clip=null", "sweep.temperatures=[0, 0.5]"], "drive_cnf") \
        .experiment("drive_cnf")
    assert exp.train.lr == 1e-4 and isinstance(exp.train.lr, float)
    assert exp.train.steps == 3 and exp.model.levels == 3 and exp.model.encoder_options.growth == 9
    assert exp.train.grad_clip is None and exp.sweep.temperatures == (0, 0.5)
    # a schema key absent from the file may be set
    assert parse_params(minimal(), ["data.patch=16"], "drive_cnf").experiment("drive_cnf").data.patch == 16


@pytest.mark.parametrize("override, message", [
    ("train.lrr=1", "--set train.lrr: unknown key; allowed here: "),
    ("model.widht=3", "--set model.widht: unknown key"),
    ("experiments.other.train.lr=1", "unknown key 'experiments.other'"),
    ("train.lr=abc", "experiments.drive_cnf.train.lr: expected a positive float, got 'abc'"),
    ("train.lr", "expected key=value"),
    ("train.fail_at_step=5", "--set train.fail_at_step: unknown key"),  # fault injection is not a param
    ("model.cond_hidden=4", "--set model.cond_hidden: unknown key"),  # a c-Glow option, this is a CNF
])
def test_set_rejects_unknown_keys_and_bad_values(override, message):
    with pytest.raises(ParamsError) as err:
        parse_params(minimal(), [override], "drive_cnf")
    assert message in str(err.value)


def test_load_params_names_the_file_and_lists_experiments(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(minimal()))
    with pytest.raises(ParamsError, match=r"p.yaml: .*no experiment 'x'; available: drive_cnf"):
        load_params(path, experiment="x")
    with pytest.raises(ParamsError, match="params file not found"):
        load_params(tmp_path / "missing.yaml")


def test_frozen():
    exp = parse_params(minimal()).experiment("drive_cnf")
    with pytest.raises(Exception):
        exp.train.lr = 1.0


CNF_ALLOWED = "allowed keys: " + ", ".join(["family", *MODEL_OPTIONS["cnf"]])


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r["experiments"]["drive_cnf"]["model"].update(encdoer="vgg"),
     "experiments.drive_cnf.model.encdoer: unknown key for family 'cnf'; " + CNF_ALLOWED),
    (lambda r: r["experiments"]["drive_cnf"]["model"].update(cond_hidden=8),  # c-Glow's, not a CNF option
     "experiments.drive_cnf.model.cond_hidden: unknown key for family 'cnf'; " + CNF_ALLOWED),
    (lambda r: r["experiments"]["drive_cnf"]["model"].update(options={"growth": 5}),  # no pass-through bag
     "experiments.drive_cnf.model.options: unknown key for family 'cnf'"),
    (lambda r: r["experiments"]["drive_cnf"]["model"]["encoder_options"].update(blok=1),
     "experiments.drive_cnf.model.encoder_options.blok: unknown key; allowed keys: blocks, growth, "
     "context_channels, width"),
    (lambda r: r["experiments"]["drive_cnf"]["model"].update(encoder="unet"),
     "experiments.drive_cnf.model.encoder: expected one of 'rrdb', 'vgg', 'none', got 'unet'"),
    (lambda r: r["experiments"]["drive_cnf"]["model"].update(levels=0),
     "experiments.drive_cnf.model.levels: expected a positive integer, got 0"),
    (lambda r: r["experiments"]["drive_cnf"]["model"].update(lu="yes"),
     "experiments.drive_cnf.model.lu: expected a boolean"),
    (lambda r: r["experiments"]["drive_cnf"]["model"].update(family="factorized", levels=2),  # now encoder scales
     "experiments.drive_cnf.model.levels: unknown key for family 'factorized'"),
    (lambda r: r["experiments"]["drive_cnf"]["model"].pop("family"),
     "experiments.drive_cnf.model: missing required key(s): family"),
    # a value merged in from `defaults` is named where it is written
    (lambda r: r["defaults"].update(model={"encdoer": "vgg"}),
     "defaults.model.encdoer: unknown key for family 'cnf'; " + CNF_ALLOWED + " (merged into experiments.drive_cnf)"),
    (lambda r: r["defaults"]["train"].update(steps="many"),
     "defaults.train.steps: expected a positive integer, got 'many' (merged into experiments.drive_cnf)"),
])
def test_model_options_are_typed_per_family(mutate, message):
    raw = minimal()
    mutate(raw)
    with pytest.raises(ParamsError) as err:
        parse_params(raw)
    assert message in str(err.value)


def test_an_experiment_value_is_blamed_on_the_experiment_even_when_defaults_set_the_key():
    raw = minimal()
    raw["defaults"]["model"] = {"encoder": "vgg"}
    raw["experiments"]["drive_cnf"]["model"]["encoder"] = "unet"
    with pytest.raises(ParamsError, match=r"^experiments\.drive_cnf\.model\.encoder: expected one of"):
        parse_params(raw)
    # set by --set, so not the defaults' value even though only defaults write the key
    raw = minimal()
    raw["defaults"]["model"] = {"encoder": "vgg"}
    with pytest.raises(ParamsError, match=r"^experiments\.drive_cnf\.model\.encoder: expected one of"):
        parse_params(raw, ["model.encoder=unet"], "drive_cnf")


def test_every_family_validates_exactly_the_options_build_model_declares():
    for family, cls in MODEL_PARAMS.items():
        fields = [f.name for f in dataclasses.fields(cls)]
        assert fields == ["family", *MODEL_OPTIONS[family]], family
    factorized = parse_params({**minimal(), "experiments": {"drive_cnf": {
        **minimal()["experiments"]["drive_cnf"],
        "model": {"family": "factorized", "encoder": "vgg", "encoder_options": {"scales": 3}, "beta": 0.9}}}})
    assert factorized.experiment("drive_cnf").model.build_options() == {
        "encoder": "vgg", "encoder_options": {"scales": 3}, "beta": 0.9}


def test_typed_experiments_pickle_for_the_ray_workers():
    for path in ("params.yaml", "params-paper.yaml"):
        for exp in load_params(ROOT / path).experiments.values():
            assert pickle.loads(pickle.dumps(exp)) == exp


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "inf"])
def test_non_finite_values_are_refused(value):
    """`.inf` is "positive" and `.nan` compares false: neither may reach training (a diverged fit at once)."""
    with pytest.raises(ParamsError) as err:
        parse_params(minimal(), [f"train.lr={value}"], "drive_cnf")
    assert "experiments.drive_cnf.train.lr: expected a positive" in str(err.value)
    raw = minimal()
    raw["experiments"]["drive_cnf"]["eval"] = {"temperature": yaml.safe_load(value)}
    with pytest.raises(ParamsError, match="experiments.drive_cnf.eval.temperature: expected a non-negative"):
        parse_params(raw)


def test_a_bad_value_in_defaults_train_is_blamed_on_defaults_not_on_the_first_experiment():
    raw = minimal()
    raw["experiments"]["other"] = {**raw["experiments"]["drive_cnf"], "train": {"steps": 3}}
    raw["experiments"] = {"other": raw["experiments"]["other"], **raw["experiments"]}
    del raw["experiments"]["drive_cnf"]["train"]
    raw["defaults"]["train"]["lr"] = -1e-3
    with pytest.raises(ParamsError) as err:
        parse_params(raw, ["train.steps=3"], "drive_cnf")
    assert err.value.key == "defaults.train.lr"
    assert str(err.value).startswith("defaults.train.lr: expected a positive float, got -0.001")


def test_scaling_configures_layout_and_precision_without_touching_the_state_dict():
    import torch

    import flowlib
    from flowlib.layout import is_channels_last
    from flowlib.precision import compute_dtype
    from pipelines.params import ScalingParams

    def model():
        torch.manual_seed(0)
        return flowlib.build_model("cnf", "binary", (1, 8, 8), (3, 8, 8), levels=2, steps=1, hidden=8,
                                   encoder="vgg", coupling="additive", subnet="drive")

    plain = ScalingParams().configure(model())
    assert compute_dtype(plain) is None
    assert not any(is_channels_last(p) for p in plain.parameters())
    fast = ScalingParams(channels_last=True, mixed_precision=True).configure(model())
    assert compute_dtype(fast) == torch.bfloat16
    assert any(is_channels_last(p) for p in fast.parameters())
    assert fast.state_dict().keys() == plain.state_dict().keys()
    for key, value in fast.state_dict().items():
        assert torch.equal(value, plain.state_dict()[key]), key
    exp = parse_params(minimal(), ["scaling.channels_last=true", "scaling.mixed_precision=true"], "drive_cnf") \
        .experiment("drive_cnf")
    assert exp.scaling.channels_last and exp.scaling.mixed_precision


def test_mixed_precision_auto_follows_the_device(monkeypatch):
    """``"auto"``: bfloat16 exactly where flowlib.bfloat16_is_native says the device computes it natively."""
    import torch

    import flowlib
    from flowlib.precision import compute_dtype
    from pipelines.params import ScalingParams

    def model():
        return flowlib.build_model("cnf", "binary", (1, 8, 8), (3, 8, 8), levels=1, steps=1, hidden=8, encoder="vgg",
                           coupling="additive")

    auto = parse_params(minimal(), ["scaling.mixed_precision=auto"], "drive_cnf").experiment("drive_cnf").scaling
    assert auto.mixed_precision == "auto"
    for native in (True, False):
        monkeypatch.setattr(flowlib, "bfloat16_is_native", lambda device, native=native: native)
        assert auto.use_mixed_precision(model()) is native
        assert compute_dtype(auto.configure(model())) == (torch.bfloat16 if native else None)
        forced = ScalingParams(mixed_precision=True)
        if native:
            assert forced.use_mixed_precision(model())
        else:
            with pytest.warns(RuntimeWarning, match="emulated"):
                assert forced.use_mixed_precision(model())
    assert ScalingParams(mixed_precision=False).use_mixed_precision(model()) is False


@pytest.mark.parametrize("value", ["fast", 1, 0, "yes"])
def test_mixed_precision_refuses_anything_but_a_boolean_or_auto(value):
    with pytest.raises(ParamsError, match=r"scaling\.mixed_precision: expected one of False, True, 'auto'"):
        _parse_scaling(value)


def _parse_scaling(value):
    raw = minimal()
    raw["defaults"].setdefault("scaling", {})["mixed_precision"] = value
    return parse_params(raw, [], "drive_cnf")


def test_model_selection_needs_held_out_samples():
    with pytest.raises(ParamsError, match=r"experiments\.drive_cnf\.train\.select: .*data\.holdout"):
        parse_params(minimal(), ["experiments.drive_cnf.train.select=true"])
    exp = parse_params(minimal(), ["experiments.drive_cnf.train.select=true", "experiments.drive_cnf.data.holdout=2"],
                       "drive_cnf").experiment("drive_cnf")
    assert exp.train.select and exp.data.holdout == 2
    with pytest.raises(ParamsError, match="holdout"):
        parse_params(minimal(), ["experiments.drive_cnf.data.holdout=-1"])
