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


def _readme_commands():
    """The command lines of the README's Commands section (continuations joined)."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("<!-- section: commands -->")[1].split("<!-- /section: commands -->")[0]
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", section, re.S):
        for cmd in block.replace("\\\n", " ").splitlines():
            cmd = cmd.split(" #")[0].strip()
            if cmd.startswith("python -m tome_lab."):
                lines.append(cmd)
    return lines


def test_readme_has_commands():
    assert len(_readme_commands()) >= 10


@pytest.mark.parametrize("line", _readme_commands())
def test_readme_commands_parse_to_valid_configurations(line, tmp_path):
    """Every command line the README shows parses and validates (nothing is run)."""
    import importlib
    import shlex

    from tome_lab.config import ExperimentConfig, to_dict

    point = tmp_path / "config.yaml"
    point.write_text(yaml.safe_dump(to_dict(ExperimentConfig())))
    argv = shlex.split(line.replace("runs/matching/<point>/config.yaml", str(point)))
    module = argv[2]
    if module == "tome_lab.ablate":
        return
    mod = importlib.import_module(module)
    parser = mod.build_parser()
    cls = {"tome_lab.evaluate": "ExperimentConfig", "tome_lab.train": "TrainRunConfig",
           "tome_lab.bench": "BenchRunConfig"}[module]
    from tome_lab import config

    cfg, _ = cli.parse(parser, getattr(config, cls), argv[3:], mod.ALIASES)
    assert isinstance(cfg, getattr(config, cls))
