"""The sweep grammar (tome_lab.sweep): products, ranges, lists, zip, aliases, bad input, files."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tome_lab.config import ExperimentConfig
from tome_lab.sweep import config_hash, expand, key_table, parse_word, resolve_key, split_top

ABLATIONS = Path(__file__).resolve().parents[1] / "ablations"


def _vals(points, path):
    out = []
    for p in points:
        obj = p.config
        for part in path.split("."):
            obj = getattr(obj, part)
        out.append(obj)
    return out


def test_single_axis_and_product_order():
    pts = expand(["r=4,8", "prop_attn=true,false"])
    # the first axis varies slowest
    assert [(p.config.tome.r, p.config.tome.prop_attn) for p in pts] == [
        (4, True), (4, False), (8, True), (8, False)]
    assert pts[0].labels == {"r": "4", "prop_attn": "true"}
    assert pts[0].name == "r=4__prop_attn=true"


def test_no_words_is_the_default_point():
    (pt,) = expand([])
    assert pt.config == ExperimentConfig()
    assert pt.name == "default"
    assert pt.dirname == f"default-{pt.key}"


def test_range_forms():
    assert _vals(expand(["r=range(0,17,4)"]), "tome.r") == [0, 4, 8, 12, 16]
    assert _vals(expand(["r=range(3)"]), "tome.r") == [0, 1, 2]
    assert _vals(expand(["r=range(2,4),9"]), "tome.r") == [2, 3, 9]
    for bad in ("r=range(a,b)", "r=range(1,2,0)", "r=range(5,1)", "r=range(1,2,3,4)"):
        with pytest.raises(ValueError, match="range"):
            expand([bad])


def test_bracketed_list_is_one_value():
    pts = expand(["r=[8,8,4,4],[2,2,2,2]"])
    assert _vals(pts, "tome.r") == [(8, 8, 4, 4), (2, 2, 2, 2)]
    assert _vals(pts, "tome.schedule") == ["list", "list"]
    # schedule=[...] is the spelling of an explicit per-layer r
    (pt,) = expand(["schedule=[8,8,4,4]"])
    assert pt.config.tome.r == (8, 8, 4, 4) and pt.config.tome.schedule == "list"
    assert "[" not in pt.dirname and "8,8,4,4" in pt.dirname


def test_zip_pairs_instead_of_crossing():
    pts = expand(["r+schedule=6+decreasing,8+constant", "prop_attn=true,false"])
    assert len(pts) == 4
    assert [(p.config.tome.r, p.config.tome.schedule) for p in pts[::2]] == [
        (6, "decreasing"), (8, "constant")]
    with pytest.raises(ValueError, match="one value per key"):
        expand(["r+schedule=6,8"])
    with pytest.raises(ValueError, match="twice"):
        parse_word("r+tome.r=1+2")


def test_short_keys_aliases_and_dotted_paths_agree():
    a = expand(["r=4", "limit=10", "batch_size=5", "seed=3", "model=vit_digits"])
    b = expand(["tome.r=4", "data.limit=10", "data.batch_size=5", "seed=3",
                "model.name=vit_digits"])
    assert a[0].config == b[0].config and a[0].key == b[0].key
    assert resolve_key("data_path") == resolve_key("path") == "data.path"
    assert resolve_key("data") == "data.name" and resolve_key("model") == "model.name"
    assert resolve_key("device") == "eval.device"
    assert resolve_key("gflops") == "tome.options.gflops"  # a schedule plug-in's option
    # every field of the configs is a key, by dotted path
    table = key_table()
    for path in ("model.checkpoint", "data.split", "eval.speed_batches", "tome.trace_source"):
        assert table[path] == path


def test_plugin_option_reaches_options():
    (pt,) = expand(["schedule=flops", "gflops=0.5"])
    assert dict(pt.config.tome.options) == {"gflops": 0.5}


def test_values_typed_by_field():
    (pt,) = expand(["limit=none", "checkpoint=007.pt", "data_path=/x/y", "speed=false",
                    "threads=2"])
    assert pt.config.data.limit is None
    assert pt.config.model.checkpoint == "007.pt"  # text fields keep the word as typed
    assert pt.config.data.path == "/x/y"
    assert pt.config.eval.speed is False and pt.config.eval.threads == 2


def test_later_word_replaces_axis_of_same_key():
    pts = expand(["r=1,2,3", "prop_attn=true,false", "tome.r=5"])
    assert _vals(pts, "tome.r") == [5, 5]
    with pytest.raises(ValueError, match="part of the zip axis"):
        expand(["r+schedule=6+decreasing", "r=3"])


def test_duplicates_dropped_by_config_hash():
    pts = expand(["r=4,4,8"])
    assert _vals(pts, "tome.r") == [4, 8]
    assert len({p.key for p in expand(["r=range(5)"])}) == 5


def test_base_configuration_is_modified():
    base = ExperimentConfig()
    from tome_lab.sweep import config_to_dict

    d = config_to_dict(base)
    d["data"]["limit"] = 7
    (pt,) = expand(["r=2"], d)
    assert pt.config.data.limit == 7 and pt.config.tome.r == 2
    assert config_hash(pt.config) == pt.key


@pytest.mark.parametrize("word, match", [
    ("matchin=bipartite", r"unknown key 'matchin'\. Did you mean 'matching'"),
    ("tome.rr=3", r"Did you mean 'tome\.r'"),
    ("matching=bipartit", r"Did you mean 'bipartite'"),
    ("distance=cosin", r"Did you mean 'cosine'"),
    ("dtype=fp33", r"Valid: fp32, bf16, fp16"),
    ("r=-1", r"r must be >= 0"),
    ("r=abc", r"r must be an int"),
    ("batch_size=0", r"batch_size must be an int >= 1"),
    ("gflops=1.0", r"option 'gflops' is not taken"),
    ("r", r"key=value"),
    ("r=", r"empty value"),
    ("r=[1,2", r"unbalanced"),
])
def test_bad_keys_and_values_fail_with_help(word, match):
    with pytest.raises(ValueError, match=match):
        expand([word])


def test_all_bad_points_reported_before_anything_runs():
    with pytest.raises(ValueError) as info:
        expand(["r=-1,-2,4", "prop_attn=true,false"])
    msg = str(info.value)
    assert "-1" in msg and "-2" in msg and "more point" in msg


def test_split_top_respects_brackets_and_quotes():
    assert split_top("a,[1,2],'x,y',range(1,3)", ",") == ["a", "[1,2]", "'x,y'", "range(1,3)"]


def _ablation_files():
    return sorted(ABLATIONS.glob("*.yaml"))


def test_ablations_folder_has_the_papers_sweeps():
    names = {p.stem for p in _ablation_files()}
    assert {"matching", "feature", "distance", "combine", "prop_attn", "partition",
            "schedule"} <= names


@pytest.mark.parametrize("path", _ablation_files(), ids=lambda p: p.name)
def test_every_ablation_expands_and_validates(path, capsys):
    from tome_lab.ablate import main

    first = path.read_text().splitlines()[0]
    assert first.startswith("# python -m tome_lab.ablate --config ablations/" + path.name)
    spec = yaml.safe_load(path.read_text())
    assert spec["sweep"], "a sweep file names its axes under sweep:"
    assert main(["--config", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "point(s)" in out
