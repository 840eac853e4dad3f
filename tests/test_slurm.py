"""The Slurm launcher on a real cluster (``launch/slurm-local.sh`` starts a one-node one).

Outside CI these tests skip when ``sbatch`` is missing; ``.ci/run`` starts the cluster and sets
``TOME_LAB_REQUIRE_SLURM=1``, which turns that skip into a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import launch_fns
import pytest

from tome_lab import launch
from tome_lab.launch import LaunchConfig

FN = launch_fns.FN

if shutil.which("sbatch") is None:
    if os.environ.get("TOME_LAB_REQUIRE_SLURM") == "1":
        raise RuntimeError("TOME_LAB_REQUIRE_SLURM=1 but sbatch is missing: start the test "
                           "cluster with launch/slurm-local.sh")
    pytest.skip("no Slurm here (sbatch missing); start one with launch/slurm-local.sh as root",
                allow_module_level=True)

pytestmark = pytest.mark.full


@pytest.fixture
def control(tmp_path, monkeypatch):
    """Where point_fn counts its calls; sbatch passes this environment to the jobs."""
    folder = tmp_path / "control"
    folder.mkdir()
    monkeypatch.setenv("TOME_TEST_CONTROL", str(folder))
    tests = os.path.dirname(launch_fns.__file__)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [tests, *filter(None, [os.environ.get("PYTHONPATH")])]))
    return folder


def _scancel(claim):
    assert claim["launcher"] == "slurm"
    subprocess.run(["scancel", claim["job_id"]], check=True)


def test_slurm_sweep_is_one_array_and_failures_stay_isolated(tmp_path, control):
    cfg = LaunchConfig(launcher="slurm", parallel=4, time_min=5, wait=False, poll_s=0.5)
    launch_fns.failure_scenario(tmp_path, cfg, _scancel)
    claims = [launch.read_claim(d) for d in sorted((tmp_path / "sweep").glob("x=*"))]
    first = {c["job_id"].split("_")[0] for c in claims[:3]}
    assert len(first) == 1, claims  # the first launch: one job array


def test_slurm_time_limit_requeues_and_finishes(tmp_path, control):
    # a 2 min limit, SIGUSR2 30 s before it; Slurm may send it up to a minute early, so it
    # comes 30 to 90 s in (after the job's handler is installed): the hanging first attempt
    # requeues, the second finishes
    cfg = LaunchConfig(launcher="slurm", time_min=2, signal_delay_s=30, poll_s=0.5)
    launch_fns.timeout_scenario(tmp_path, cfg)


def test_slurm_status_command_after_no_wait(tmp_path, control, capsys):
    folder = tmp_path / "s"
    launch.run(launch_fns.points("ok", "ok"), folder, FN,
               LaunchConfig(launcher="slurm", wait=False), progress=False)
    err = capsys.readouterr().err
    assert "as Slurm job array" in err and f"python -m tome_lab.launch status {folder}" in err
    assert launch.main(["status", str(folder), "--wait"]) == 0
    out = capsys.readouterr().out
    assert "done  x=0  top-1 0.00" in out and "done  x=1  top-1 1.00" in out
    assert "2 done, 0 failed, 0 running, 0 queued" in out


def test_search_workers_as_a_slurm_array_share_one_journal(tmp_path, control):
    import test_search
    from optuna.trial import TrialState

    from tome_lab.search import budget_used, create_study, run_workers

    scfg = test_search._scfg(tmp_path, trials=8, fn=test_search.SLOW, sampler="random",
                             baselines=False, workers=2)
    create_study(test_search.EXP, scfg)
    ran = run_workers(test_search.EXP, scfg, LaunchConfig(launcher="slurm", time_min=5))
    study = test_search._study(scfg)
    assert ran == 8 == len(study.get_trials(states=(TrialState.COMPLETE,)))
    assert budget_used(study) == 8 == len(study.trials)
    df = test_search._records(scfg)
    assert len(df) == 8 and set(df.status) == {"ok"}
    # two array tasks, two processes, each with its own Slurm task id
    jobs = sorted((tmp_path / ".launch").rglob("*_submitted.pkl"))
    assert len({p.parent.name for p in jobs}) == 2 and df["env.pid"].nunique() == 2
