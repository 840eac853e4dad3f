"""The shared command line (tome_lab.cli): aliases, documented fields, exit statuses."""

from __future__ import annotations

import pytest
import yaml

from tome_lab import cli
from tome_lab.config import TrainConfig


def test_aliases_rewrite_to_dotted_flags():
    aliases = {**cli.TOME_ALIASES, **cli.EVAL_ALIASES, "--r-list": "--bench.r"}
    argv = ["-r", "8", "8", "4", "--no-speed", "--device=cuda", "--r", "3", "--r-list",
            "0,8", "--matching", "pruning", "--other", "1"]
    assert cli.expand_aliases(argv, aliases) == [
        "--tome.r", "[8,8,4]", "--eval.speed", "false", "--eval.device", "cuda",
        "--tome.r", "3", "--bench.r", "[0,8]", "--tome.matching", "pruning", "--other", "1"]


def test_section_aliases_are_the_dashed_field_names():
    a = cli.section_aliases("train", TrainConfig)
    assert a["--weight-decay"] == "--train.weight_decay"
    assert a["--no-augment"] == ("--train.augment", "false")
    assert a["--channels-last"] == ("--train.channels_last", "true")
    assert a["--device"] == "--train.device"


COMMANDS = ["tome_lab.evaluate", "tome_lab.train", "tome_lab.bench", "tome_lab.ablate"]


@pytest.mark.parametrize("module", COMMANDS)
def test_help_lists_every_field_with_its_documentation(module, capsys):
    import dataclasses
    import importlib

    from tome_lab import config

    mod = importlib.import_module(module)
    assert mod.main(["--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    top = {"tome_lab.evaluate": config.ExperimentConfig, "tome_lab.ablate":
           config.ExperimentConfig, "tome_lab.train": config.TrainRunConfig,
           "tome_lab.bench": config.BenchRunConfig}[module]
    for section in dataclasses.fields(top):
        cls = section.default_factory().__class__ if section.default_factory is not \
            dataclasses.MISSING else None
        if cls is None or not dataclasses.is_dataclass(cls):
            continue
        for f in dataclasses.fields(cls):
            assert f"--{section.name}.{f.name}" in text, (module, section.name, f.name)
    assert "--config" in text and "--print_config" in text
    assert "tokens merged per block" in text  # ToMeConfig's documentation of r


@pytest.mark.parametrize("module", COMMANDS)
def test_print_config_is_a_config_file_the_command_takes_back(module, tmp_path, capsys):
    import importlib

    mod = importlib.import_module(module)
    assert mod.main(["--print_config", "--tome.prop_attn", "false"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["tome"]["prop_attn"] is False
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(printed))
    assert mod.main(["--config", str(tmp_path / "c.yaml"), "--print_config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == printed


@pytest.mark.parametrize("module", COMMANDS)
def test_a_bad_value_exits_2_on_every_command(module, capsys, tmp_path, monkeypatch):
    import importlib

    monkeypatch.chdir(tmp_path)
    mod = importlib.import_module(module)
    argv = ["--eval.dtype", "fp8"] if module != "tome_lab.train" else ["--train.dtype", "fp8"]
    assert mod.main(argv) == 2
    assert "unknown dtype 'fp8'" in capsys.readouterr().err


def test_run_keeps_a_crash_a_crash():
    def body():
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError):
        cli.run("x", body)
    assert cli.run("x", lambda: (_ for _ in ()).throw(cli.UsageError("bad"))) == 2


# The README and the docs commands are parsed by tests/test_docs.py (every fenced command).
