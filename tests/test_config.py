import json
from pathlib import Path

import pytest

from kubedistill.config import build_train_config, method_defaults, parse_key_values, to_dict
from kubedistill.errors import ConfigError
from kubedistill.methods.distillation.args import AdamWArgs, LARSArgs

# The "Default Augmentation Settings" block of LightlyTrain's distillation documentation, verbatim.
SEED_TRANSFORM_DEFAULTS = json.loads((Path(__file__).parent / "seed_transform_defaults.json").read_text())

BASE = {"out": "out/x", "data": "imgs", "model": "torchvision/resnet18"}


def test_describe_transform_args_equal_the_seed_block_exactly():
    defaults = method_defaults("distillation")
    assert defaults["transform_args"] == SEED_TRANSFORM_DEFAULTS
    # Same keys and same value types (0.0 stays a float, 224 an int) once through JSON.
    assert json.dumps(defaults["transform_args"], sort_keys=True) == json.dumps(SEED_TRANSFORM_DEFAULTS, sort_keys=True)


def test_describe_method_and_optimizer_defaults():
    defaults = method_defaults("distillationv1")
    assert defaults["method"] == "distillation"
    assert defaults["method_args"]["temperature"] == 0.07
    assert defaults["method_args"]["teacher"] == "dinov2/vitb14"
    assert defaults["method_args"]["queue_size"] == "auto"
    assert defaults["optim"] == "lars"
    assert defaults["optim_args"]["lr"] == 1.8
    assert defaults["optim_args"]["momentum"] == 0.9
    assert defaults["optim_args"]["weight_decay"] == 1e-6
    assert defaults["optim_args"]["gradient_clip_val"] == 1.0
    assert (defaults["epochs"], defaults["batch_size"]) == (100, 128)


def test_parse_dotted_key_values_with_yaml_values():
    parsed = parse_key_values(
        [
            "out=out/exp",
            "method_args.teacher=dinov2/vits14",
            "method_args.teacher_weights=none",
            "transform_args.image_size=[160,160]",
            "optim_args.lr=0.5",
            "max_steps=null",
        ]
    )
    assert parsed == {
        "out": "out/exp",
        "method_args": {"teacher": "dinov2/vits14", "teacher_weights": "none"},
        "transform_args": {"image_size": [160, 160]},
        "optim_args": {"lr": 0.5},
        "max_steps": None,
    }


def test_malformed_tokens_are_all_reported():
    with pytest.raises(ConfigError) as info:
        parse_key_values(["epochs", "=3", "a..b=1"])
    assert len(info.value.problems) == 3


def test_overrides_apply_on_top_of_defaults():
    config = build_train_config(
        {**BASE, "transform_args": {"image_size": [160, 160], "color_jitter": {"prob": 0.0}}, "optim_args": {"lr": 0.5}}
    )
    assert config.transform_args.image_size == (160, 160)
    assert config.transform_args.color_jitter.prob == 0.0
    assert config.transform_args.color_jitter.brightness == 0.8  # untouched sibling keeps its default
    assert isinstance(config.optim_args, LARSArgs) and config.optim_args.lr == 0.5
    assert config.optim == "lars"


def test_adamw_gets_its_own_defaults_and_rejects_lars_keys():
    config = build_train_config({**BASE, "optim": "adamw"})
    assert isinstance(config.optim_args, AdamWArgs) and config.optim_args.lr == 5e-4
    with pytest.raises(ConfigError, match="optim_args.trust_coefficient"):
        build_train_config({**BASE, "optim": "adamw", "optim_args": {"trust_coefficient": 0.01}})


def test_every_problem_is_reported_at_once_with_valid_choices():
    with pytest.raises(ConfigError) as info:
        build_train_config(
            {
                **BASE,
                "model": "torchvision/resnet19",
                "epochs": "many",
                "batch_size": 0,
                "accelerator": "tpu",
                "bogus": 1,
                "method_args": {"temperature": -1, "queue_sise": 3},
                "optim_args": {"lr": 0},
                "transform_args": {"image_size": [0, 224], "random_flip": {"horizontal_prob": 1.5}},
            }
        )
    text = str(info.value)
    problems = info.value.problems
    assert len(problems) >= 9, text
    assert "unknown key 'bogus'" in text and "valid keys:" in text and "epochs" in text
    assert "epochs: got 'many', expected int" in text
    assert "batch_size: must be >= 1" in text
    assert "accelerator: got 'tpu', expected one of 'auto', 'cpu', 'cuda'" in text
    assert "method_args.temperature" in text
    assert "unknown key 'method_args.queue_sise'" in text and "queue_size" in text
    assert "optim_args.lr" in text
    assert "transform_args.image_size" in text
    assert "transform_args.random_flip.horizontal_prob" in text
    assert "resnet19" in text and "resnet18" in text  # a close match is suggested


def test_unknown_method_lists_valid_methods():
    with pytest.raises(ConfigError, match="valid: distillation, distillationv1"):
        build_train_config({**BASE, "method": "simclr"})


def test_resolved_config_round_trips_through_plain_dicts():
    config = build_train_config({**BASE, "transform_args": {"image_size": [64, 64]}})
    plain = to_dict(config)
    assert plain["transform_args"]["image_size"] == [64, 64]
    rebuilt = build_train_config(plain)
    assert to_dict(rebuilt) == plain


def test_to_key_values_is_the_inverse_of_parse_key_values():
    from kubedistill.config import to_key_values

    values = {
        "out": "gs://bucket/run 1", "epochs": 3, "optim_args": {"lr": 0.001, "betas": [0.9, 0.95]},
        "method_args": {"teacher": "dinov2/vitb14", "teacher_weights": "none", "mixup": False},
        "transform_args": {"image_size": [64, 64], "normalize": {"mean": [0.5, 0.5, 0.5]}},
        "tricky": {"yes": "true", "number": "1e-3", "empty": "", "colon": "a: b", "null": None},
    }  # fmt: skip
    tokens = to_key_values(values)
    assert "optim_args.lr=0.001" in tokens and "transform_args.normalize.mean=[0.5, 0.5, 0.5]" in tokens
    assert parse_key_values(tokens) == values
