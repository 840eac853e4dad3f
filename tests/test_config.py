"""Configuration sections: validation, plain data round trips, hashing."""

from __future__ import annotations

import pytest
import yaml

from tome_lab.config import (
    BenchConfig,
    DataConfig,
    EvalConfig,
    ExperimentConfig,
    ModelConfig,
    ToMeConfig,
    TrainConfig,
    TrainRunConfig,
    config_hash,
    from_dict,
    to_dict,
)


@pytest.mark.parametrize("cfg", [
    ExperimentConfig(),
    ExperimentConfig(tome=ToMeConfig(r=[4, 4, 2], options={}), data=DataConfig(split="val")),
    ExperimentConfig(tome=ToMeConfig(schedule="flops", options={"gflops": 0.09})),
    TrainRunConfig(train=TrainConfig(device="cuda:1", dtype="fp16", compile=True)),
])
def test_round_trip_through_yaml_gives_the_same_config_and_hash(cfg):
    text = yaml.safe_dump(to_dict(cfg))
    back = from_dict(type(cfg), yaml.safe_load(text))
    assert back == cfg and config_hash(back) == config_hash(cfg)


def test_hash_tells_configs_apart_and_ignores_nothing_that_matters():
    a, b = ExperimentConfig(), ExperimentConfig(tome=ToMeConfig(r=5))
    assert config_hash(a) != config_hash(b) and len(config_hash(a)) == 12
    assert config_hash(ExperimentConfig(seed=1)) != config_hash(a)


def test_missing_fields_take_defaults():
    cfg = from_dict(TrainRunConfig, {"train": {"epochs": 2}})
    assert cfg.train.epochs == 2 and cfg.train.batch_size == TrainConfig().batch_size
    assert cfg.tome.r == 0 and cfg.model.pretrained is False  # training starts from scratch


@pytest.mark.parametrize("data,message", [
    ({"modle": {}}, "unknown ExperimentConfig field(s) ['modle']"),
    ({"tome": {"rr": 3}}, "unknown ToMeConfig field(s) ['rr']; valid: r, matching"),
    ({"data": {"split": "holdout"}}, "unknown split 'holdout'; valid: train, val, test"),
    ({"eval": {"device": "gpu0"}}, "unknown device 'gpu0'"),
    ({"eval": {"compile_backend": "tvm"}}, "valid: inductor"),
    ({"eval": {"compile_mode": "fast"}}, "unknown compile_mode 'fast'; valid: default"),
    ({"eval": {"compile": True, "compile_backend": "eager", "compile_freezing": True}},
     "inductor options"),
    ({"eval": {"compile_mode": "max-autotune"}}, "set eval.compile true"),
    ({"eval": {"compile_freezing": "yes"}}, "compile_freezing"),
    ({"seed": "zero"}, "seed must be an int"),
    ({"tome": 3}, "ToMeConfig takes a mapping"),
])
def test_bad_data_names_the_problem(data, message):
    with pytest.raises(ValueError) as err:
        from_dict(ExperimentConfig, data)
    assert message in str(err.value)


def test_default_split_is_test():
    assert DataConfig().split == "test" and ExperimentConfig().data.split == "test"


def test_bench_section_expands_all_and_resolves_aliases():
    from tome_lab.registry import MATCHING

    assert set(BenchConfig(matching=("all",)).matching) == set(MATCHING.names()) - {"none"}
    with pytest.raises(ValueError, match="Did you mean"):
        BenchConfig(matching=("bipartit",))


@pytest.mark.parametrize("section,kwargs", [
    (EvalConfig, dict(threads=0)), (EvalConfig, dict(speed_warmup=-1)),
    (EvalConfig, dict(compile="yes")), (ModelConfig, dict(name="")),
    (DataConfig, dict(pin_memory="auto")), (TrainConfig, dict(lr=0)),
    (TrainConfig, dict(max_steps=0)), (TrainConfig, dict(label_smoothing=1.0)),
])
def test_each_section_validates_on_construction(section, kwargs):
    with pytest.raises(ValueError):
        section(**kwargs)
