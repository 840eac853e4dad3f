"""The ablation runner (tome_lab.ablate): store, resume, failure isolation, command line."""

from __future__ import annotations

import json
import textwrap

import pandas as pd
import pytest
import yaml

from tome_lab import results
from tome_lab.ablate import main, run_sweep
from tome_lab.sweep import expand


class Fake:
    """A stand-in point function: counts calls per r and fails for the r values it is told."""

    def __init__(self, fail: tuple[int, ...] = ()) -> None:
        self.calls: list[int] = []
        self.fail = fail

    def __call__(self, cfg):
        self.calls.append(cfg.tome.r)
        if cfg.tome.r in self.fail:
            raise RuntimeError(f"r={cfg.tome.r} exploded")
        return {"top1": 100.0 - cfg.tome.r, "gflops": 1.0 / (1 + cfg.tome.r),
                "img_per_s": 10.0, "speedup": 1.0 + cfg.tome.r / 10, "tokens": [3, 2],
                "device": "cpu", "dtype": "fp32"}


def test_sweep_writes_one_folder_per_point(tmp_path):
    points = expand(["r=0,2,4"])
    fake = Fake()
    records = run_sweep(points, tmp_path, fake, progress=False)
    assert fake.calls == [0, 2, 4]
    assert [r["status"] for r in records] == ["ok"] * 3 and all(r["ran"] for r in records)
    dirs = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
    assert dirs == sorted(p.dirname for p in points)  # and .launch/, the launcher's books
    for p in points:
        d = tmp_path / p.dirname
        assert sorted(f.name for f in d.iterdir()) == ["config.yaml", "result.json"]
        rec = json.loads((d / "result.json").read_text())
        assert rec["key"] == p.key and rec["metrics"]["top1"] == 100.0 - p.config.tome.r
        assert rec["config"]["tome"]["r"] == p.config.tome.r
        assert rec["env"]["device"] == "cpu" and "torch" in rec["env"] and rec["env"]["date"]
        # config.yaml is the resolved configuration: it feeds back in as --config
        assert yaml.safe_load((d / "config.yaml").read_text()) == rec["config"]


def test_rerun_skips_finished_points(tmp_path):
    run_sweep(expand(["r=0,2"]), tmp_path, Fake(), progress=False)
    before = {p: p.read_text() for p in tmp_path.glob("*/result.json")}
    fake = Fake()
    records = run_sweep(expand(["r=0,2,4"]), tmp_path, fake, progress=False)
    assert fake.calls == [4]  # only the new point ran
    assert [r["ran"] for r in records] == [False, False, True]
    assert all(p.read_text() == text for p, text in before.items())


def test_failing_point_is_isolated_and_retried(tmp_path):
    fake = Fake(fail=(2,))
    records = run_sweep(expand(["r=0,2,4"]), tmp_path, fake, progress=False)
    assert fake.calls == [0, 2, 4]  # the sweep went on after the failure
    assert [r["status"] for r in records] == ["ok", "failed", "ok"]
    err = records[1]["error"]
    assert err["type"] == "RuntimeError" and "exploded" in err["message"]
    assert "Traceback" in err["traceback"] and "exploded" in err["traceback"]
    df = results.load(tmp_path)
    assert sorted(df["status"]) == ["failed", "ok", "ok"]
    # a re-run reuses the failure; rerun="failed" (--rerun failed) retries the failed point only
    fixed = Fake()
    records = run_sweep(expand(["r=0,2,4"]), tmp_path, fixed, progress=False)
    assert fixed.calls == [] and [r["status"] for r in records] == ["ok", "failed", "ok"]
    records = run_sweep(expand(["r=0,2,4"]), tmp_path, fixed, progress=False, rerun="failed")
    assert fixed.calls == [2] and [r["status"] for r in records] == ["ok"] * 3


def test_non_mapping_result_is_a_failure(tmp_path):
    (rec,) = run_sweep(expand(["r=1"]), tmp_path, lambda cfg: 3.0, progress=False)
    assert rec["status"] == "failed" and "mapping" in rec["error"]["message"]


# --------------------------------------------------------------------------- command line

@pytest.fixture
def fake_module(tmp_path, monkeypatch):
    """An importable module ``fakepoints`` whose ``point`` fails for r=3 (for --fn)."""
    (tmp_path / "fakepoints.py").write_text(textwrap.dedent("""
        def point(cfg):
            if cfg.tome.r == 3:
                raise ValueError("no good r")
            return {"top1": 50.0 + cfg.tome.r, "gflops": 0.5, "img_per_s": 100.0,
                    "speedup": 1.5, "device": "cpu", "dtype": "fp32"}
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return "fakepoints:point"


def test_cli_runs_writes_csv_and_table(fake_module, tmp_path, capsys):
    assert main(["r=1,2", "--fn", fake_module, "--progress", "false"]) == 0
    out = capsys.readouterr().out
    folder = tmp_path / "runs" / "r"  # default: runs/<swept keys> in the working directory
    csv = pd.read_csv(folder / "results.csv")
    assert list(csv["tome.r"]) == [1, 2] and list(csv["top1"]) == [51.0, 52.0]
    for header in ("top-1", "GFLOPs", "img/s", "speed-up"):
        assert header in out
    assert "51.00" in out and "1.50x" in out
    # the same command again reuses both points
    assert main(["r=1,2", "--fn", fake_module, "--progress", "false"]) == 0
    assert "0 ran, 2 reused" in capsys.readouterr().out


def test_cli_failure_exits_1_with_summary(fake_module, tmp_path, capsys):
    assert main(["r=2,3,4", "--fn", fake_module, "--out", "o", "--progress", "false"]) == 1
    captured = capsys.readouterr()
    assert "1 failed" in captured.out
    assert "r=3: ValueError: no good r" in captured.err
    assert len(results.load(tmp_path / "o", status="ok")) == 2


@pytest.mark.parametrize("argv, message", [
    (["matchin=bipartite"], "Did you mean 'matching'"),
    (["matching=bipartit"], "Did you mean 'bipartite'"),
    (["r=1,-1"], "r must be >= 0"),
    (["r=1", "--fn", "no_such_module:f"], "cannot load point function"),
])
def test_cli_bad_words_exit_2_before_running(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_cli_bad_flag_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["--tome.rr", "3"]) == 2
    assert "tome.rr" in capsys.readouterr().err


def test_cli_dry_run_lists_points_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["matching=bipartite", "r=range(0,3)", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "3 point(s)" in out and "matching=bipartite__r=2" in out
    assert not (tmp_path / "runs").exists()


def test_cli_config_file_flags_and_word_override(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text("sweep:\n- r=1,2,3\n- prop_attn=true,false\n"
                                     "data:\n  limit: 9\n")
    assert main(["--config", "s.yaml", "r=7", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "2 point(s) in runs/s" in out and "r=7" in out and "r=1" not in out
    assert main(["--config", "s.yaml", "--print_config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["limit"] == 9 and printed["sweep"] == ["r=1,2,3", "prop_attn=true,false"]


def test_cli_help_documents_fields_and_grammar(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for text in ("range(", "ZIP", "--tome.prop_attn", "--data.limit", "--eval.speed_batches",
                 "--model.checkpoint", "--dry-run", "tokens merged per block"):
        assert text in out
