"""The results store (tome_lab.results): atomic writes, environment, load() to a DataFrame."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pandas as pd
import pytest

from tome_lab import results


def _record(key: str, status: str = "ok", **metrics):
    return {
        "schema": results.SCHEMA, "status": status, "key": key, "name": f"r={key}",
        "overrides": {"tome.r": 4},
        "config": {"model": {"name": "m"}, "tome": {"r": [4, 2], "options": {}}, "seed": 0},
        "metrics": metrics, "error": None if status == "ok" else
        {"type": "RuntimeError", "message": "boom", "traceback": "Traceback ..."},
        "env": {"git_rev": None, "torch": "x"}, "started": "s", "finished": "f", "seconds": 1.0,
    }


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "sub" / "result.json"
    results.write_json_atomic(path, {"a": 1})
    results.write_json_atomic(path, {"a": 2, "t": (1, 2)})
    assert json.loads(path.read_text()) == {"a": 2, "t": [1, 2]}
    assert sorted(p.name for p in path.parent.iterdir()) == ["result.json"]


def test_failed_write_keeps_old_file(tmp_path):
    path = tmp_path / "result.json"
    results.write_json_atomic(path, {"a": 1})
    with pytest.raises(TypeError):  # fails half-way through writing the temporary file
        results.write_text_atomic(path, 3)  # type: ignore[arg-type]
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_stale_temps_removed(tmp_path):
    (tmp_path / ".result.json.abc.tmp").write_text("{half")
    (tmp_path / "config.yaml").write_text("a: 1")
    past = time.time() - results.TEMP_STALE_S - 1  # left by a writer killed long ago
    os.utime(tmp_path / ".result.json.abc.tmp", (past, past))
    assert results.remove_stale_temps(tmp_path) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


def test_environment_block():
    env = results.environment("cpu", "fp32")
    for key in ("git_rev", "python", "torch", "timm", "tome_lab", "device", "dtype", "hostname",
                "date"):
        assert key in env
    assert env["device"] == "cpu" and env["dtype"] == "fp32"
    assert env["pid"] == os.getpid()
    assert env["git_rev"] is None or len(env["git_rev"]) == 40


def test_load_one_and_many_sweeps(tmp_path):
    for sweep, keys in (("a", ["k1", "k2"]), ("b", ["k3"])):
        for k in keys:
            results.write_json_atomic(tmp_path / sweep / f"r={k}-{k}" / "result.json",
                                      _record(k, top1=90.0, gflops=0.1))
    results.write_json_atomic(tmp_path / "b" / "x-k4" / "result.json", _record("k4", "failed"))
    (tmp_path / "b" / "unfinished-k5").mkdir()  # a point that never finished: no row
    (tmp_path / "b" / "unfinished-k5" / "config.yaml").write_text("seed: 0\n")

    one = results.load(tmp_path / "a")
    assert isinstance(one, pd.DataFrame) and len(one) == 2
    assert set(one["sweep"]) == {"a"} and list(one["top1"]) == [90.0, 90.0]
    assert one["tome.r"].iloc[0] == (4, 2)  # lists as tuples: hashable, groupable
    assert "env.torch" in one.columns and "model.name" in one.columns

    both = results.load([tmp_path / "a", tmp_path / "b"])
    assert len(both) == 4 and set(both["sweep"]) == {"a", "b"}
    assert results.load(tmp_path).shape == both.shape  # a folder of sweeps
    failed = results.load(tmp_path, status="failed")
    assert list(failed["key"]) == ["k4"] and failed["error"].iloc[0] == "RuntimeError: boom"
    assert len(results.load(tmp_path / "a" / "r=k1-k1")) == 1  # a single point folder


def test_load_missing_and_empty(tmp_path):
    with pytest.raises(FileNotFoundError):
        results.load(tmp_path / "nope")
    assert results.load(tmp_path).empty


def test_corrupt_result_is_not_a_row(tmp_path):
    (tmp_path / "p-1").mkdir()
    (tmp_path / "p-1" / "result.json").write_text("{not json")
    assert results.read_result(tmp_path / "p-1") is None
    assert results.load(tmp_path).empty


def test_write_csv_lists_as_json(tmp_path):
    df = pd.DataFrame([{"r": (8, 4), "top1": 1.5}])
    results.write_csv(df, tmp_path / "results.csv")
    back = pd.read_csv(tmp_path / "results.csv")
    assert json.loads(back["r"].iloc[0]) == [8, 4] and back["top1"].iloc[0] == 1.5


# --------------------------------------------------------------------------- git revision

def _git(repo, *args):
    out = subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c",
                          "user.email=t@example.com", *args], capture_output=True, text=True,
                         check=True)
    return out.stdout.strip()


def test_git_revision_is_one_call_and_sees_every_change(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    src = repo / "pkg"
    src.mkdir(parents=True)
    (src / "a.py").write_text("x = 1\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "one")
    first = _git(repo, "rev-parse", "HEAD")
    calls = []
    real = subprocess.run

    def counted(cmd, *a, **k):  # the calls results makes (this test's own git calls aside)
        calls.extend(["status"] if "--porcelain=v2" in cmd else [])
        return real(cmd, *a, **k)

    monkeypatch.setattr(results.subprocess, "run", counted)
    assert results._git_revision(src) == (first, False) and len(calls) == 1
    (src / "a.py").write_text("x = 2\n")  # same size: a modified file is a local change
    assert results._git_revision(src) == (first, True)
    _git(repo, "commit", "-qam", "two")
    second = _git(repo, "rev-parse", "HEAD")
    assert second != first and results._git_revision(src) == (second, False)
    (src / "b.py").write_text("y = 1\n")  # an untracked file is a local change
    assert results._git_revision(src) == (second, True)
    assert results._git_revision(tmp_path) == (None, None)  # not a work tree: no revision



# --------------------------------------------------------------------------- locks and times

def test_times_compare_as_times_across_utc_offsets():
    a = results.parse_time("2026-12-06T10:00:00+02:00")  # 08:00 UTC
    b = results.parse_time("2026-12-06T09:00:00+00:00")  # 09:00 UTC, earlier as a string
    assert a < b and "2026-12-06T10:00:00+02:00" > "2026-12-06T09:00:00+00:00"
    assert results.parse_time("") is None and results.parse_time("yesterday") is None


def test_a_young_temporary_of_a_dead_writer_on_this_host_goes_at_once(tmp_path, monkeypatch):
    """A sweep killed while writing leaves a fresh temporary; the rerun drops it at once when
    its name says that its writer (this host, that pid) is gone, and keeps a live writer's."""
    import socket
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid, host = int(done.stdout), socket.gethostname()
    dead = tmp_path / f".config.yaml~{dead_pid}@{host}~x1.tmp"
    live = tmp_path / f".result.json~{os.getpid()}@{host}~x2.tmp"
    elsewhere = tmp_path / f".result.json~{dead_pid}@not-{host}~x3.tmp"
    for p in (dead, live, elsewhere):
        p.write_text("half")
    assert results.remove_stale_temps(tmp_path) == 1
    assert not dead.exists() and live.exists() and elsewhere.exists()
    # the writer names itself in its temporary, in the form the cleanup reads
    seen = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append(os.path.basename(src))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    results.write_text_atomic(tmp_path / "a.txt", "x")
    assert seen and seen[0].startswith(f".a.txt~{os.getpid()}@{host}~")
    assert not list(tmp_path.glob(".a.txt*"))  # and leaves none behind


def test_young_temporary_files_belong_to_a_live_writer(tmp_path):
    young, old = tmp_path / ".result.json.a.tmp", tmp_path / ".result.json.b.tmp"
    young.write_text("half")
    old.write_text("left")
    past = time.time() - results.TEMP_STALE_S - 5
    os.utime(old, (past, past))
    assert results.remove_stale_temps(tmp_path) == 1
    assert young.exists() and not old.exists()


_HOLD = """
import sys, time
from tome_lab import results
with results.exclusive(sys.argv[1], timeout=60):
    with open(sys.argv[2], "a") as f:
        f.write("in\\n")
    time.sleep(0.3)
    with open(sys.argv[2], "a") as f:
        f.write("out\\n")
"""


def test_exclusive_lock_serialises_processes(tmp_path):
    import sys

    lock, log = tmp_path / "x.lock", tmp_path / "log"
    procs = [subprocess.Popen([sys.executable, "-c", _HOLD, str(lock), str(log)])
             for _ in range(3)]
    assert [p.wait(60) for p in procs] == [0, 0, 0]
    assert log.read_text().split() == ["in", "out"] * 3  # never two holders at once
    assert not lock.exists()


def test_exclusive_lock_breaks_a_dead_holders_lock_and_names_a_live_one(tmp_path):
    import socket
    import sys

    lock = tmp_path / "x.lock"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout)}))
    with results.exclusive(lock, timeout=1):  # the holder is gone: broken at once
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getppid()}))
    with pytest.raises(TimeoutError, match=f"'pid': {os.getppid()}"):
        with results.exclusive(lock, timeout=0.3):
            pass
    assert lock.exists()  # a live holder's lock is left alone
