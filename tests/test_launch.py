"""Launchers (tome_lab.launch) without Slurm: configuration, plan, inline and local runs."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import stat
from pathlib import Path

import launch_fns
import pytest
import torch

from tome_lab import launch, results
from tome_lab.launch import LaunchConfig

ROOT = Path(__file__).resolve().parents[1]
FN = launch_fns.FN


@pytest.fixture
def control(tmp_path, monkeypatch):
    """The folder where point_fn counts its calls; jobs find launch_fns via PYTHONPATH."""
    folder = tmp_path / "control"
    folder.mkdir()
    monkeypatch.setenv("TOME_TEST_CONTROL", str(folder))
    tests = str(Path(launch_fns.__file__).parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [tests, *filter(None, [os.environ.get("PYTHONPATH")])]))
    return folder


# --------------------------------------------------------------------------- configuration

def test_launch_config_rejects_bad_values_by_name():
    with pytest.raises(ValueError, match="did you mean 'slurm'"):
        LaunchConfig(launcher="slrum")
    with pytest.raises(ValueError, match="launch.parallel must be an int >= 1"):
        LaunchConfig(parallel=0)
    with pytest.raises(ValueError, match="launch.time_min must be a number > 0"):
        LaunchConfig(time_min=0)
    with pytest.raises(ValueError, match="launch.sbatch"):
        LaunchConfig(sbatch={"--exclude": "n1"})
    with pytest.raises(ValueError, match="unknown launch option 'partiton'.*'partition'"):
        LaunchConfig.from_dict({"partiton": "gpu"})
    with pytest.raises(ValueError, match="takes inline, local, slurm or a YAML file"):
        LaunchConfig.parse("lokal")
    cfg = LaunchConfig(setup=["module load cuda"])
    assert cfg.setup == ("module load cuda",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.parallel = 3


@pytest.mark.parametrize("name", ["local", "slurm-local", "gpu-cluster"])
def test_launch_files_parse_and_make_valid_sbatch_scripts(name, tmp_path):
    from submitit.slurm.slurm import _make_sbatch_string

    cfg = LaunchConfig.parse(str(ROOT / "launch" / f"{name}.yaml"))
    assert cfg.launcher in ("local", "slurm")
    params = launch.slurm_parameters(cfg, 8, "sweep")
    text = _make_sbatch_string(command="true", folder=tmp_path, map_count=8, **params)
    assert f"#SBATCH --time={max(1, int(-(-cfg.time_min // 1)))}" in text
    assert f"#SBATCH --array=0-7%{min(8, cfg.parallel)}" in text
    if name == "gpu-cluster":
        assert "#SBATCH --gpus-per-task=1" in text
        assert "#SBATCH --partition=gpu" in text
        assert f"#SBATCH --mem={int(cfg.mem_gb * 1024)}MB" in text
        assert all(line in text for line in cfg.setup)


def test_launcher_override_on_top_of_a_file():
    cfg = LaunchConfig.parse(str(ROOT / "launch" / "gpu-cluster.yaml"), partition="a100",
                             parallel=3)
    assert (cfg.launcher, cfg.partition, cfg.parallel) == ("slurm", "a100", 3)


# --------------------------------------------------------------------------- inline and the plan

def test_inline_runs_each_point_once_and_reuses_finished_ones(tmp_path, control):
    pts = launch_fns.points("ok", "raise", "ok")
    recs = launch.run(pts, tmp_path / "s", FN, progress=False)
    assert [r["status"] for r in recs] == ["ok", "failed", "ok"]
    assert [r["metrics"].get("top1") for r in recs] == [0.0, None, 4.0]
    assert recs[1]["error"]["message"] == "point 1 fails on purpose"
    assert recs[0]["identity"] == {"config": pts[0].key, "fn": FN, "checkpoint": None}
    # a re-launch reuses ok and failed results: nothing runs
    again = launch.run(pts, tmp_path / "s", FN, progress=False)
    assert [r["ran"] for r in again] == [False, False, False]
    assert [launch_fns.count(control, "started", x) for x in range(3)] == [1, 1, 1]
    # --rerun failed runs the failed one only; --rerun all runs every point
    launch.run(pts, tmp_path / "s", FN, rerun="failed", progress=False)
    assert [launch_fns.count(control, "started", x) for x in range(3)] == [1, 2, 1]
    launch.run(pts, tmp_path / "s", FN, rerun="all", progress=False)
    assert [launch_fns.count(control, "started", x) for x in range(3)] == [2, 3, 2]
    with pytest.raises(ValueError, match="rerun must be one of failed, all"):
        launch.run(pts, tmp_path / "s", FN, rerun="some", progress=False)


def test_identity_covers_point_function_and_checkpoint_content(tmp_path, control):
    ckpt = tmp_path / "w.bin"
    ckpt.write_bytes(b"weights v1")
    pts = launch_fns.points("ok", checkpoint=str(ckpt))
    first = launch.run(pts, tmp_path / "s", FN, progress=False)[0]
    assert first["identity"]["checkpoint"] == {"path": str(ckpt),
                                               "sha256": results.file_digest(ckpt)}
    import hashlib

    assert first["identity"]["checkpoint"]["sha256"] == hashlib.sha256(b"weights v1").hexdigest()
    assert launch.run(pts, tmp_path / "s", FN, progress=False)[0]["ran"] is False
    # another point function: not the same result
    assert launch.run(pts, tmp_path / "s", "launch_fns:other_fn", progress=False)[0]["ran"]
    # a checkpoint retrained at the same path: not the same result either
    ckpt.write_bytes(b"weights v2")
    rec = launch.run(pts, tmp_path / "s", "launch_fns:other_fn", progress=False)[0]
    assert rec["ran"] and rec["identity"]["checkpoint"]["sha256"] != first["identity"][
        "checkpoint"]["sha256"]
    assert launch_fns.count(control, "started", 0) == 3


# every zoo checkpoint that is a model's own pretrained weights (the *_tome16 files are
# loaded by path, model.checkpoint, which test_identity_covers_... covers)
ZOO_MODELS = sorted(p.stem for p in (ROOT / "tome_lab" / "zoo").glob("vit_*.safetensors")
                    if "_tome" not in p.stem)


def _point_weights_at(name: str, path: Path, monkeypatch) -> None:
    """Makes the zoo model ``name`` load (and be digested) from ``path``."""

    from tome_lab import models

    if name == models.EMBEDDED:
        monkeypatch.setattr(models, "ZOO_CHECKPOINT", path)
    else:
        from timm.models._registry import _model_pretrained_cfgs  # get_pretrained_cfg copies

        cfg = _model_pretrained_cfgs[name]
        monkeypatch.setattr(cfg, "file", str(path))


def test_the_zoo_holds_the_embedded_models():
    assert {"vit_digits", "vit_clutter", "vit_video_digits", "vit_video_dir",
            "vit_audio_digits"} <= set(ZOO_MODELS)


@pytest.mark.parametrize("name", ZOO_MODELS)
def test_every_zoo_models_weights_enter_the_identity(name, tmp_path, control, monkeypatch):
    import timm

    from tome_lab import models

    models._register()
    if not timm.is_model(name):
        pytest.fail(f"zoo model {name} is not registered")
    original = models.weights_file(launch_fns.Model(name=name, pretrained=True))
    assert original is not None and original.is_file(), f"{name}: no committed weights"
    copy = tmp_path / original.name
    copy.write_bytes(original.read_bytes())
    _point_weights_at(name, copy, monkeypatch)
    pts = launch_fns.points("ok", model=name)
    first = launch.run(pts, tmp_path / "s", FN, progress=False)[0]
    assert first["identity"]["checkpoint"] == {"path": str(copy),
                                               "sha256": results.file_digest(original)}
    assert launch.run(pts, tmp_path / "s", FN, progress=False)[0]["ran"] is False
    data = bytearray(copy.read_bytes())  # "retrained": the same file, one weight changed
    data[-1] ^= 1
    copy.write_bytes(bytes(data))
    again = launch.run(pts, tmp_path / "s", FN, progress=False)[0]
    assert again["ran"] is True
    assert launch_fns.count(control, "started", 0) == 2


def test_a_changed_data_generator_is_not_the_same_result(tmp_path, control, monkeypatch):
    from tome_lab.registry import DATASETS

    pts = launch_fns.points("ok", data="clutter")
    first = launch.run(pts, tmp_path / "s", FN, progress=False)[0]
    version = first["identity"]["data"]["version"]
    assert first["identity"]["data"] == {"name": "clutter", "version": version}
    assert launch.run(pts, tmp_path / "s", FN, progress=False)[0]["ran"] is False
    monkeypatch.setattr(DATASETS.get("clutter"), "version", version + "-changed")
    assert launch.run(pts, tmp_path / "s", FN, progress=False)[0]["ran"] is True
    # datasets that are files, not generators, carry no version (identities as before)
    other = launch.run(launch_fns.points("ok", data="mnist5k"), tmp_path / "m", FN,
                       progress=False)[0]
    assert "data" not in other["identity"]


def test_reuse_at_another_code_revision_says_so(tmp_path, control, capsys):
    pts = launch_fns.points("ok")
    rec = launch.run(pts, tmp_path / "s", FN, progress=False)[0]
    path = Path(rec["dir"]) / results.RESULT
    data = json.loads(path.read_text())
    data["env"]["git_rev"] = "0" * 40
    path.write_text(json.dumps(data))
    capsys.readouterr()
    again = launch.run(pts, tmp_path / "s", FN, progress=False)[0]
    assert again["ran"] is False
    assert "reusing 1 result(s) made at another code revision" in capsys.readouterr().err


def test_a_result_that_cannot_be_written_is_that_points_failure(tmp_path, control):
    recs = launch.run(launch_fns.points("cyclic", "ok"), tmp_path / "s", FN, progress=False)
    assert [r["status"] for r in recs] == ["failed", "ok"]
    assert recs[0]["error"]["message"].startswith("writing result.json failed")
    assert recs[0]["metrics"] == {}


def test_bad_point_function_fails_before_anything_runs(tmp_path, control):
    with pytest.raises(ValueError, match="cannot load point function 'launch_fns:nope'"):
        launch.run(launch_fns.points("ok"), tmp_path / "s", "launch_fns:nope", progress=False)
    assert not (tmp_path / "s").exists() or not list((tmp_path / "s").glob("x=*"))


def _state_changer(cfg):
    import random

    import numpy as np

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(1234)
    random.seed(1234)
    np.random.seed(1234)
    return {"top1": torch.rand(()).item() + random.random() + np.random.rand()}


def test_inline_restores_threads_determinism_and_rng(tmp_path, control, monkeypatch):
    import random

    import numpy as np

    monkeypatch.setattr(launch_fns, "state_changer", _state_changer, raising=False)
    torch.set_num_threads(2)
    torch.manual_seed(7)
    random.seed(7)
    np.random.seed(7)
    det = torch.are_deterministic_algorithms_enabled()
    states = torch.get_rng_state(), random.getstate(), np.random.get_state()
    # what the next draws are when nothing touches the generators
    expected = torch.rand(3), random.random(), np.random.rand()
    torch.set_rng_state(states[0])
    random.setstate(states[1])
    np.random.set_state(states[2])
    launch.run(launch_fns.points("ok", "ok"), tmp_path / "s", "launch_fns:state_changer",
               progress=False)
    assert torch.get_num_threads() == 2
    assert torch.are_deterministic_algorithms_enabled() == det
    assert torch.equal(torch.rand(3), expected[0])
    assert random.random() == expected[1] and np.random.rand() == expected[2]


def test_result_files_are_readable_by_others_and_the_folder_is_synced(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        return real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    old = os.umask(0o022)
    try:
        path = results.write_json_atomic(tmp_path / "r" / "result.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert synced == [False, True]  # the file, then its folder after the rename


# --------------------------------------------------------------------------- local launcher

def _sigkill_worker(control):
    def kill(claim):
        assert claim["launcher"] == "local"
        os.kill(launch_fns.pids(control, "started", 3)[0], signal.SIGKILL)
    return kill


@pytest.mark.full
def test_local_failures_are_isolated_reported_and_relaunch_completes(tmp_path, control):
    cfg = LaunchConfig(launcher="local", parallel=2, wait=False, poll_s=0.5)
    launch_fns.failure_scenario(tmp_path, cfg, _sigkill_worker(control))


@pytest.mark.full
def test_local_timeout_requeues_and_finishes(tmp_path, control):
    # a 60 s limit, SIGUSR2 30 s before it (the job's handler is in place by then, even on a
    # loaded machine): the hanging first attempt requeues at ~30 s, the second finishes
    cfg = LaunchConfig(launcher="local", time_min=1, signal_delay_s=30, poll_s=0.5)
    launch_fns.timeout_scenario(tmp_path, cfg)


@pytest.mark.full
def test_local_preempted_job_requeues_and_finishes(tmp_path, control):
    # SIGUSR2 before the time limit is how submitit learns of a pre-emption
    cfg = LaunchConfig(launcher="local", wait=False, poll_s=0.5)
    folder = tmp_path / "s"
    pts = launch_fns.points("hang")
    launch.run(pts, folder, FN, cfg, progress=False)
    assert launch.status(folder)[1] == 3  # queued or running
    launch_fns.wait_for(lambda: launch_fns.count(control, "started", 0) == 1, what="the start")
    os.kill(launch_fns.pids(control, "started", 0)[0], signal.SIGUSR2)
    records, code = launch.status(folder, do_wait=True, poll_s=0.5)
    assert code == 0 and records[0]["metrics"]["top1"] == 0.0
    assert records[0]["job"]["attempt"] == 2
    assert launch_fns.count(control, "finished", 0) == 1


@pytest.mark.full
def test_relaunch_does_not_resubmit_points_held_by_a_live_job(tmp_path, control):
    folder = tmp_path / "s"
    pts = launch_fns.points("ok", "ok")
    launch.run(pts, folder, FN, LaunchConfig(launcher="local", wait=False), progress=False)
    # at once again, waiting: both points are queued or running in the first launch's jobs
    plan, _ = launch.plan(pts, folder, FN)
    assert plan.action == ["live", "live"]
    records = launch.run(pts, folder, FN, LaunchConfig(launcher="local", poll_s=0.5),
                         progress=False)
    assert [r["state"] for r in records] == ["done", "done"]
    assert [r["ran"] for r in records] == [False, False]
    assert [launch_fns.count(control, "started", x) for x in range(2)] == [1, 1]


def test_status_command_without_a_launch_exits_2(tmp_path, capsys):
    assert launch.main(["status", str(tmp_path)]) == 2
    assert "holds no launch" in capsys.readouterr().err


def test_status_command_prints_states_and_writes_the_table(tmp_path, control, capsys):
    launch.run(launch_fns.points("ok", "raise"), tmp_path / "s", FN, progress=False)
    assert launch.main(["status", str(tmp_path / "s")]) == 1
    out = capsys.readouterr().out
    assert "done  x=0  top-1 0.00" in out
    assert "failed  x=1  RuntimeError: point 1 fails on purpose" in out
    assert "1 done, 1 failed, 0 running, 0 queued" in out
    assert (tmp_path / "s" / "results.csv").is_file()


def test_slurm_without_sbatch_says_how_to_get_one(tmp_path, control, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    with pytest.raises(RuntimeError, match="needs Slurm's sbatch.*slurm-local.sh"):
        launch.run(launch_fns.points("ok"), tmp_path / "s", FN, LaunchConfig(launcher="slurm"),
                   progress=False)


# --------------------------------------------------------------------------- ablate's flags

@pytest.mark.full  # the local launcher: job processes
def test_ablate_local_launcher_prints_the_table_and_exits_0(tmp_path, control, capsys):
    from tome_lab.ablate import main

    argv = ["r=1,2", "--fn", "launch_fns:experiment_fn", "--out", str(tmp_path / "s"),
            "--progress", "false", "--launcher", "local", "--launch.poll_s", "0.5"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "2 point(s): 2 ran, 0 reused, 0 failed" in out and "2.00" in out
    recs = [json.loads(p.read_text()) for p in sorted((tmp_path / "s").glob("*/result.json"))]
    assert [r["job"]["launcher"] for r in recs] == ["local", "local"]
    assert all(r["metrics"]["top1"] == r["config"]["tome"]["r"] for r in recs)
    # the zoo checkpoint of the embedded model is part of each point's identity
    zoo = recs[0]["identity"]["checkpoint"]
    assert zoo["path"].endswith("vit_digits.safetensors") and len(zoo["sha256"]) == 64
    assert main(argv + ["--rerun", "all"]) == 0
    assert "2 ran, 0 reused" in capsys.readouterr().out
    assert [launch_fns.count(control, "started", r) for r in (1, 2)] == [2, 2]


@pytest.mark.parametrize(("flags", "message"), [
    (["--launcher", "slrum"], "did you mean 'slurm'"),
    (["--launcher", "nowhere.yaml"], "cannot read launcher file 'nowhere.yaml'"),
    (["--launch.parallel", "0"], "launch.parallel must be an int >= 1"),
    (["--rerun", "some"], "--rerun takes failed or all"),
])
def test_ablate_bad_launch_flags_exit_2(flags, message, tmp_path, capsys):
    from tome_lab.ablate import main

    assert main(["r=1", "--out", str(tmp_path / "s"), *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_ablate_slurm_without_sbatch_exits_2(tmp_path, monkeypatch, capsys):
    from tome_lab.ablate import main

    # the backend that looks for sbatch (shutil is one module: squeue disappears too)
    monkeypatch.setattr(launch.backends.shutil, "which", lambda name: None)
    assert main(["r=1", "--out", str(tmp_path / "s"), "--launcher", "slurm"]) == 2
    assert "--launcher slurm needs Slurm's sbatch" in capsys.readouterr().err


def test_claim_states_of_local_and_slurm_jobs():
    import socket
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()
    host = socket.gethostname()
    live = {"launcher": "local", "host": host, "pid": os.getpid()}
    assert launch.claim_state(None, {}) is None
    assert launch.claim_state({**live, "state": "running"}, {}) == "running"
    assert launch.claim_state({**live, "state": "queued"}, {}) == "queued"
    assert launch.claim_state({**live, "pid": dead.pid, "state": "running"}, {}) == "ended"
    # queued by a launcher that died: it never started, so it is simply unclaimed
    assert launch.claim_state({**live, "pid": dead.pid, "state": "queued"}, {}) is None
    assert launch.claim_state({**live, "host": host + "-other", "state": "running"}, {}) == "ended"
    slurm = {"launcher": "slurm", "job_id": "7_1"}
    assert launch.claim_state(slurm, {"7_1": "PENDING"}) == "queued"
    assert launch.claim_state(slurm, {"7_1": "RUNNING"}) == "running"
    assert launch.claim_state(slurm, {"7_1": "OUT_OF_MEMORY"}) == "ended"
    assert launch.claim_state(slurm, {}) == "ended"  # squeue has forgotten it


_LAUNCH = """
import os, sys, time
from pathlib import Path
import launch_fns
import tome_lab.models  # imported before the gate: planning is then fast in both processes
from tome_lab import launch
pts = launch_fns.points("slow", "slow", "slow", "slow")
gate = Path(sys.argv[2])
(gate / f"ready-{os.getpid()}").touch()
while not (gate / "go").exists():  # both processes start the launch at the same moment
    time.sleep(0.01)
launch.run(pts, sys.argv[1], launch_fns.FN, progress=False)
"""


@pytest.mark.full  # starts two processes (the rule in tests/README.md)
def test_two_launches_of_one_sweep_at_once_run_each_point_once(tmp_path, control):
    import subprocess
    import sys

    gate = tmp_path / "gate"
    gate.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", _LAUNCH, str(tmp_path / "s"), str(gate)])
             for _ in range(2)]
    launch_fns.wait_for(lambda: len(list(gate.glob("ready-*"))) == 2, 120, "both launchers")
    (gate / "go").touch()
    assert [p.wait(120) for p in procs] == [0, 0]
    assert [launch_fns.count(control, "started", x) for x in range(4)] == [1, 1, 1, 1]
    recs = launch.run(launch_fns.points("slow", "slow", "slow", "slow"), tmp_path / "s", FN,
                      progress=False)
    assert [r["status"] for r in recs] == ["ok"] * 4 and not any(r["ran"] for r in recs)


def test_a_claim_is_newer_than_a_result_as_a_time_not_a_string():
    claim = {"submitted": "2026-12-06T10:30:00+02:00"}  # 08:30 UTC
    old = {"finished": "2026-12-06T09:00:00+00:00"}  # later, though smaller as a string
    assert not launch.claims._newer(claim, old)
    assert launch.claims._newer({"submitted": "2026-12-06T11:30:00+02:00"}, old)
    assert launch.claims._newer(claim, None)
