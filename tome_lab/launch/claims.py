"""Claims and states: which points a launch runs, which a live job holds, and how each stands.

Each point folder a launcher submits holds ``claim.json``, written by the submitter, naming the
job (launcher, job id, host, pid, log file) so that a later launch or status can ask whether it
still lives (squeue for Slurm, the process for ``local``). :func:`plan` decides once, on the
submitting machine, what each point does; :func:`status` reads a launched folder later.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tome_lab import results
from tome_lab.launch.config import RERUN
from tome_lab.launch.execution import PointFn, PointLike, fn_name, identity

CLAIM = "claim.json"
LOCK = ".launch.lock"  # held while a launch plans and claims its points
MANIFEST = "manifest.json"
LAUNCH_DIR = ".launch"

# squeue states of a job that is still queued or running (it may yet write its result).
SLURM_QUEUED = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD",
                "SUSPENDED", "STOPPED"}
SLURM_RUNNING = {"RUNNING", "CONFIGURING", "COMPLETING", "RESIZING", "SIGNALING",
                 "STAGE_OUT"}


# --------------------------------------------------------------------------- claims and plans

def _write_claim(pdir: Path, claim: Mapping[str, Any]) -> None:
    results.write_json_atomic(pdir / CLAIM, {**claim, "host": socket.gethostname(),
                                             "submitted": results.now()})


def read_claim(pdir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``claim.json`` of a point folder, or None."""
    try:
        claim = json.loads((Path(pdir) / CLAIM).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return claim if isinstance(claim, dict) else None


def slurm_states(job_ids: Sequence[str]) -> dict[str, str]:
    """squeue's state of each Slurm job or array task in ``job_ids`` that it still knows.

    Array tasks are keyed ``ARRAYID_TASK``; a job squeue has forgotten is absent.
    """
    arrays = sorted({str(j).split("_")[0] for j in job_ids if j})
    if not arrays or shutil.which("squeue") is None:
        return {}
    states: dict[str, str] = {}
    for chunk in range(0, len(arrays), 100):
        ids = ",".join(arrays[chunk:chunk + 100])
        out = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T", "-j", ids],
                             capture_output=True, text=True, timeout=60)
        if out.returncode != 0 and len(arrays) > 1:  # one forgotten id fails the whole call
            for a in arrays[chunk:chunk + 100]:
                states.update(slurm_states([a]))
            continue
        for line in out.stdout.splitlines():
            jid, _, state = line.strip().partition("|")
            if jid:
                states[jid] = state.split()[0] if state else "UNKNOWN"
    return states


def claim_state(claim: Mapping[str, Any] | None, squeue: Mapping[str, str]) -> str | None:
    """``queued``, ``running`` or ``ended`` for a claim; None without a claim.

    A Slurm claim is read from ``squeue``'s states; a local claim is alive while its process
    (on this host) runs; a claim from another host's local launcher counts as ended; a point
    queued by a local launcher that has died counts as unclaimed (it never started).
    """
    if not claim:
        return None
    if claim.get("launcher") == "slurm":
        state = squeue.get(str(claim.get("job_id")))
        if state in SLURM_QUEUED:
            return "queued"
        if state in SLURM_RUNNING:
            return "running"
        return "ended"
    if claim.get("host") != socket.gethostname() or not results.pid_alive(claim.get("pid")):
        # a point whose launcher died before starting it never ran: it is simply not claimed
        return None if claim.get("state") == "queued" else "ended"
    return "queued" if claim.get("state") == "queued" else "running"


def _newer(claim: Mapping[str, Any], old: Mapping[str, Any] | None) -> bool:
    """Whether ``claim`` was made after the result ``old`` finished (times as times)."""
    if old is None:
        return True
    submitted, finished = (results.parse_time(claim.get("submitted")),
                           results.parse_time(old.get("finished")))
    return submitted is not None and (finished is None or submitted > finished)


def point_dir(folder: Path, point: PointLike) -> Path:
    """The folder of ``point``: an existing one ending in its hash, else a new one."""
    existing = sorted(folder.glob(f"*-{point.key}"))
    return existing[0] if existing else folder / point.dirname


@dataclass
class Plan:
    """What a launch does with each point (same order as the points).

    Attributes:
        dirs: each point's folder.
        action: ``reuse`` (a finished result), ``live`` (claimed by a live job) or ``run``.
        records: the reused records (None for the others).
        notes: messages for the user (results reused from another code revision, ...).
    """

    dirs: list[Path]
    action: list[str]
    records: list[dict[str, Any] | None]
    notes: list[str]


def plan(points: Sequence[PointLike], folder: str | os.PathLike[str], fn_spec: str | PointFn,
         rerun: str | None = None, owner: int | None = None
         ) -> tuple[Plan, list[dict[str, Any]]]:
    """Decides which points run, which are reused and which a live job already holds.

    Args:
        points: the sweep's points.
        folder: the sweep folder.
        fn_spec: the point function, ``module:function``.
        rerun: None (reuse finished results, ok or failed), ``"failed"`` (run failed ones
            again) or ``"all"`` (run every point not held by a live job).
        owner: a process whose claims count as this one's (the launch that started a
            detached driver).

    Returns:
        The plan and each point's identity.

    Raises:
        ValueError: a bad ``rerun``.
    """
    if rerun is not None and rerun not in RERUN:
        raise ValueError(f"rerun must be one of {', '.join(RERUN)} or None, got {rerun!r}")
    folder = Path(folder)
    own = {os.getpid(), owner}
    digests: dict[Path, str | None] = {}
    idents = [identity(p, fn_spec, digests) for p in points]
    dirs = [point_dir(folder, p) for p in points]
    claims = [read_claim(d) for d in dirs]
    squeue = slurm_states([str(c.get("job_id")) for c in claims
                           if c and c.get("launcher") == "slurm"])
    rev = results.code_revision()
    out = Plan(dirs, [], [], [])
    other_rev = 0
    for pdir, ident, claim in zip(dirs, idents, claims, strict=True):
        old = results.read_result(pdir)
        if claim and claim.get("launcher") != "slurm" and claim.get("pid") in own:
            claim = None  # held by this very process (an earlier launch in it) or its owner
        if claim_state(claim, squeue) in ("queued", "running") and _newer(claim, old):
            out.action.append("live")
            out.records.append(None)
            continue
        same = old is not None and results.same_identity(old, ident)
        keep = same and (rerun is None or (rerun == "failed" and old.get("status") == "ok"))
        if keep:
            out.action.append("reuse")
            out.records.append(old)
            env = old.get("env") or {}
            old_rev = env.get("git_rev") and env["git_rev"] + ("+dirty" if env.get("git_dirty")
                                                                else "")
            other_rev += old_rev != rev
        else:
            out.action.append("run")
            out.records.append(None)
    if other_rev:
        out.notes.append(f"reusing {other_rev} result(s) made at another code revision than "
                         f"the current {rev or 'unknown'} (see env.git_rev in each "
                         f"result.json; --rerun all to run them again)")
    if out.action.count("live"):
        out.notes.append(f"{out.action.count('live')} point(s) are queued or running in a "
                         f"live job: not submitted again")
    return out, idents


# --------------------------------------------------------------------------- waiting, status

def states(dirs: Sequence[Path]) -> list[str]:
    """Each point folder's state: ``done``, ``failed``, ``running``, ``queued`` or ``new``.

    ``failed`` covers a failed result and a claim whose job ended without a result.
    """
    claims = [read_claim(d) for d in dirs]
    squeue = slurm_states([str(c.get("job_id")) for c in claims
                           if c and c.get("launcher") == "slurm"])
    out = []
    for d, claim in zip(dirs, claims, strict=True):
        rec = results.read_result(d)
        live = claim_state(claim, squeue)
        if rec is not None:
            out.append("done" if rec.get("status") == "ok" else "failed")
        elif live in ("queued", "running"):
            out.append(live)
        elif live == "ended":
            out.append("failed")
        else:
            out.append("new")
    return out


class _Progress:
    """A tqdm bar over finished points with the done / failed / running / queued counts."""

    def __init__(self, points: Sequence[PointLike], dirs: Sequence[Path], enabled: bool):
        from tqdm.auto import tqdm

        self.dirs = list(dirs)
        self.bar = tqdm(total=len(points), desc="sweep", unit="point", disable=not enabled,
                        file=sys.stderr)
        self.last: list[str] = []

    def update(self) -> list[str]:
        now = states(self.dirs)
        if now != self.last:  # redraw on a change only: a log file gets one line per change
            counts = {s: now.count(s) for s in ("done", "failed", "running", "queued")}
            self.bar.n = counts["done"] + counts["failed"]
            self.bar.set_postfix(counts, refresh=True)
        self.last = now
        return now

    def close(self) -> None:
        self.bar.close()


def wait(points: Sequence[PointLike], dirs: Sequence[Path], poll_s: float = 2.0,
         progress: bool = True) -> list[str]:
    """Waits until no point is queued or running; returns the final states."""
    bar = _Progress(points, dirs, progress)
    try:
        while True:
            now = bar.update()
            if not any(s in ("queued", "running") for s in now):
                return now
            time.sleep(poll_s)
    finally:
        bar.close()


def collect(points: Sequence[PointLike], dirs: Sequence[Path],
            ran: set[int] | None = None) -> list[dict[str, Any]]:
    """The record of each point, in order (see :func:`run` for the added keys)."""
    out = []
    for i, (point, d, state) in enumerate(zip(points, dirs, states(dirs), strict=True)):
        rec = results.read_result(d)
        if rec is None:
            claim = read_claim(d) or {}
            rec = {"status": "failed" if state == "failed" else state, "key": point.key,
                   "name": point.name, "metrics": {}, "job": claim}
            if state == "failed":
                rec["error"] = {"type": "JobDied", "message": (
                    f"{claim.get('launcher')} job {claim.get('job_id')} ended without a result; "
                    f"log: {claim.get('log')}")}
        ran_now = ran is not None and i in ran
        out.append({**rec, "ran": ran_now, "dir": str(d), "state": state})
    return out


def _write_manifest(folder: Path, points: Sequence[PointLike], dirs: Sequence[Path],
                    fn_spec: str | PointFn) -> None:
    results.write_json_atomic(folder / LAUNCH_DIR / MANIFEST, {
        "fn": fn_name(fn_spec), "written": results.now(),
        "points": [{"name": p.name, "key": p.key, "dir": d.name}
                   for p, d in zip(points, dirs, strict=True)]})


def status(folder: str | os.PathLike[str], do_wait: bool = False,
           poll_s: float = 2.0) -> tuple[list[dict[str, Any]], int]:
    """The state and record of every point of the last launch into ``folder``.

    Returns:
        The records (as :func:`collect`) and an exit status: 0 every point done, 1 some
        failed (none queued or running), 3 some still queued or running.

    Raises:
        FileNotFoundError: ``folder`` holds no launch manifest.
    """
    folder = Path(folder)
    try:
        manifest = json.loads((folder / LAUNCH_DIR / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise FileNotFoundError(f"{folder} holds no launch (no {LAUNCH_DIR}/{MANIFEST})") from None
    points = [_ManifestPoint(p["name"], p["key"], p["dir"]) for p in manifest["points"]]
    dirs = [folder / p.dirname for p in points]
    if do_wait:
        wait(points, dirs, poll_s)
    records = collect(points, dirs)
    now = [r["state"] for r in records]
    if any(s in ("queued", "running", "new") for s in now):
        return records, 3
    return records, 1 if "failed" in now else 0


@dataclass(frozen=True)
class _ManifestPoint:
    name: str
    key: str
    dirname: str
    config: Any = None


def format_status(records: Sequence[Mapping[str, Any]]) -> str:
    """One line per point: state, name, top-1 (when there is one), and a failure's reason."""
    lines = []
    for r in records:
        metrics = r.get("metrics") or {}
        top1 = metrics.get("top1")
        extra = f"  top-1 {top1:.2f}" if isinstance(top1, (int, float)) else ""
        err = r.get("error")
        if r["state"] == "failed" and isinstance(err, Mapping):
            extra += f"  {err.get('type')}: {str(err.get('message')).splitlines()[0][:160]}"
        lines.append(f"{r['state']:>8}  {r.get('name')}{extra}")
    counts = {s: sum(r["state"] == s for r in records)
              for s in ("done", "failed", "running", "queued")}
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items()))
    return "\n".join(lines)

