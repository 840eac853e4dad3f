"""The ablation runner end to end with the real evaluator, and a sweep killed part way.

Small settings keep these to seconds: the embedded model on a few dozen images, no timing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from tome_lab import results
from tome_lab.ablate import main

# Real points, kept small: a few dozen images, no throughput timing.
SMALL = ["limit=16", "batch_size=16", "speed=false"]


@pytest.mark.full
def test_real_sweep_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "sweep"
    assert main(["matching=bipartite,none", "r=4", *SMALL, "--out", str(out),
                 "--progress", "false"]) == 0
    table = capsys.readouterr().out
    assert "top-1" in table and "speed-up" in table
    df = results.load(out)
    assert len(df) == 2 and set(df["status"]) == {"ok"}
    df = df.set_index("tome.matching")
    for col in ("top1", "gflops", "n_images", "env.git_rev", "env.torch", "env.date"):
        assert col in df.columns
    assert (df["n_images"] == 16).all()
    assert 0 <= df.loc["bipartite", "top1"] <= 100
    # merging 4 tokens per block must cost less than not merging at all
    assert df.loc["bipartite", "gflops"] < df.loc["none", "gflops"]
    csv = (out / "results.csv").read_text().splitlines()
    assert len(csv) == 3 and "top1" in csv[0]


def _results(folder):
    return {p.parent.name: p.read_text() for p in folder.glob("*/result.json")}


@pytest.mark.full
def test_killed_sweep_reruns_each_point_exactly_once(tmp_path):
    out = tmp_path / "killed"
    n = 4
    # random weights (pretrained=false): this test is about the store, not the accuracy
    cmd = [sys.executable, "-m", "tome_lab.ablate", f"r=range(0,{n})", *SMALL, "pretrained=false",
           "--out", str(out), "--progress", "false"]
    first = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600  # generous: a guard against a hang, not a timing
    while not list(out.glob("*/result.json")):
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline, "no point finished in 600 s"
        time.sleep(0.01)
    first.send_signal(signal.SIGKILL)  # a real kill: no handler, no cleanup
    first.wait()
    done = _results(out)
    assert 1 <= len(done) < n, "the kill must land part way through the sweep"
    for text in done.values():  # nothing that finished is corrupt
        assert json.loads(text)["status"] == "ok"
    for cfg in out.glob("*/config.yaml"):
        assert yaml.safe_load(cfg.read_text())["tome"]["r"] in range(n)

    second = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    stdout, stderr = second.communicate(timeout=900)
    assert second.returncode == 0, stderr
    assert f"{n - len(done)} ran, {len(done)} reused, 0 failed" in stdout
    after = _results(out)
    # the points and results.csv (hidden entries such as the launcher's .launch/ aside)
    assert len(after) == n and len([p for p in out.iterdir() if not p.name.startswith(".")]) \
        == n + 1
    for name, text in done.items():  # finished before the kill: untouched
        assert after[name] == text
    pids = {name: json.loads(text)["env"]["pid"] for name, text in after.items()}
    assert {pids[k] for k in done} == {first.pid}
    assert {pids[k] for k in after if k not in done} == {second.pid}
    assert sorted(json.loads(t)["config"]["tome"]["r"] for t in after.values()) == list(range(n))
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert len(results.load(out)) == n and os.path.isfile(out / "results.csv")
