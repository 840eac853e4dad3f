"""Trivial points and a point function for the launcher tests (imported by the jobs too).

The jobs find this module through ``PYTHONPATH`` (set by the tests, inherited by submitit's
local processes and by sbatch). Every call of :func:`point_fn` appends a line to files in the
folder ``$TOME_TEST_CONTROL`` so that the tests can count how often each point started and
finished, whichever process ran it.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FN = "launch_fns:point_fn"


@dataclass(frozen=True)
class Model:
    checkpoint: str | None = None
    name: str | None = None
    pretrained: bool = False


@dataclass(frozen=True)
class Data:
    name: str | None = None


@dataclass(frozen=True)
class Cfg:
    """``mode``: ``ok``; ``raise``; ``hang`` (the first call sleeps 10 minutes, later calls
    finish: a job to cancel or to time out); ``slow`` (half a second); ``cyclic`` (returns
    metrics JSON cannot write)."""

    x: int
    mode: str = "ok"
    model: Model = Model()
    data: Data = Data()


@dataclass(frozen=True)
class TPoint:
    config: Cfg
    key: str

    @property
    def name(self) -> str:
        return f"x={self.config.x}"

    @property
    def dirname(self) -> str:
        return f"x={self.config.x}-{self.key}"


def points(*modes: str, checkpoint: str | None = None, model: str | None = None,
           data: str | None = None) -> list[TPoint]:
    """One point per mode, x = 0, 1, 2, ...; ``model`` names a pretrained model."""
    out = []
    for x, mode in enumerate(modes):
        cfg = Cfg(x, mode, Model(checkpoint, model, model is not None), Data(data))
        out.append(TPoint(cfg, hashlib.sha1(repr(cfg).encode()).hexdigest()[:12]))
    return out


def _log(kind: str, x: int) -> int:
    path = Path(os.environ["TOME_TEST_CONTROL"]) / f"{kind}-{x}"
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    return len(path.read_text().split())


def count(control: Path, kind: str, x: int) -> int:
    """How many times point x logged ``kind`` (``started`` or ``finished``)."""
    path = control / f"{kind}-{x}"
    return len(path.read_text().split()) if path.exists() else 0


def pids(control: Path, kind: str, x: int) -> list[int]:
    path = control / f"{kind}-{x}"
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def point_fn(cfg: Cfg) -> dict[str, Any]:
    """Returns ``{"top1": x * x, "pid": ...}``, or fails as ``cfg.mode`` asks."""
    started = _log("started", cfg.x)
    if cfg.mode == "raise":
        raise RuntimeError(f"point {cfg.x} fails on purpose")
    if cfg.mode == "hang" and started == 1:
        time.sleep(600)
    if cfg.mode == "slow":
        time.sleep(0.5)
    out: dict[str, Any] = {"top1": float(cfg.x * cfg.x), "pid": os.getpid()}
    if cfg.mode == "cyclic":
        out["self"] = out
    _log("finished", cfg.x)
    return out


def other_fn(cfg: Cfg) -> dict[str, Any]:
    """A different point function with the same results (its identity differs)."""
    return point_fn(cfg)


# --------------------------------------------------------------------------- shared scenarios
# Run by tests/test_launch.py with the local launcher and by tests/test_slurm.py on Slurm.

def wait_for(predicate: Any, timeout: float = 120.0, what: str = "") -> None:
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"waited {timeout:.0f} s for {what}")
        time.sleep(0.2)


def failure_scenario(tmp_path: Path, cfg: Any, kill: Any) -> None:
    """ok, ok, a raising point and a job killed mid-run, submitted without waiting; then
    status; then a re-launch that completes the killed point with every point run once.

    Args:
        tmp_path: a fresh folder (``$TOME_TEST_CONTROL`` must be ``tmp_path / "control"``).
        cfg: a LaunchConfig with ``wait=False``.
        kill: called with the killed point's claim; ends its job (scancel, SIGKILL).
    """
    import dataclasses

    from tome_lab import launch

    control = tmp_path / "control"
    pts = points("ok", "ok", "raise", "hang")
    inline = launch.run(pts[:2], tmp_path / "inline", FN, launch.LaunchConfig(), progress=False)
    for f in control.glob("*"):  # count only the launcher's runs below
        f.unlink()
    folder = tmp_path / "sweep"
    launch.run(pts, folder, FN, cfg, progress=False)
    wait_for(lambda: count(control, "started", 3) == 1, what="the hanging point to start")
    hang_dir = launch.point_dir(folder, pts[3])
    kill(launch.read_claim(hang_dir))
    records, code = launch.status(folder, do_wait=True, poll_s=0.5)
    assert code == 1
    assert [r["state"] for r in records] == ["done", "done", "failed", "failed"]
    # the same results as inline, computed in other processes
    for rec, ref in zip(records[:2], inline, strict=True):
        assert rec["metrics"]["top1"] == ref["metrics"]["top1"]
        assert rec["metrics"]["pid"] != os.getpid()
    assert records[2]["error"]["type"] == "RuntimeError"
    died = records[3]["error"]
    assert died["type"] == "JobDied"
    log = died["message"].split("log: ")[1]
    assert Path(log).is_file(), log
    # re-launch: only the killed point runs; every point has finished or failed exactly once
    again = launch.run(pts, folder, FN, dataclasses.replace(cfg, wait=True), progress=False)
    assert [r["state"] for r in again] == ["done", "done", "failed", "done"]
    assert [r["ran"] for r in again] == [False, False, False, True]
    assert again[3]["metrics"]["top1"] == 9.0
    assert [count(control, "finished", x) for x in range(4)] == [1, 1, 0, 1]
    assert [count(control, "started", x) for x in range(4)] == [1, 1, 1, 2]


def timeout_scenario(tmp_path: Path, cfg: Any) -> None:
    """A point past its time limit gets SIGUSR2, requeues itself and finishes (attempt 2)."""
    from tome_lab import launch

    control = tmp_path / "control"
    pts = points("hang")
    records = launch.run(pts, tmp_path / "sweep", FN, cfg, progress=False)
    assert records[0]["status"] == "ok", records[0].get("error")
    assert records[0]["metrics"]["top1"] == 0.0
    assert records[0]["job"]["attempt"] == 2
    assert count(control, "started", 0) == 2 and count(control, "finished", 0) == 1


def experiment_fn(cfg: Any) -> dict[str, Any]:
    """A point function over ExperimentConfig for the ablate command-line tests: top-1 = r."""
    _log("started", cfg.tome.r)
    return {"top1": float(cfg.tome.r), "gflops": 1.0, "device": "cpu", "dtype": "fp32"}
