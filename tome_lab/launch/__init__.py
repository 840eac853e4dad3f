"""Launchers: run the points of a sweep in this process, in local subprocesses, or on Slurm.

One code path: every launcher runs :func:`execute`, which evaluates one point with the point
function (``module:function``, imported where it runs) and writes that point's folder and
nothing else. Which points run is decided once, on the submitting machine (:func:`plan`):

- a point whose ``result.json`` has the same identity (resolved configuration, point function,
  checkpoint digest) is reused; ``rerun="failed"`` re-runs the failed ones, ``rerun="all"``
  every one;
- a point claimed by a live job (queued or running) is never submitted twice;
- everything else runs.

``inline`` runs the points here, one after the other, restoring the torch thread count, the
deterministic-algorithms flag and every RNG after each. ``local`` runs each point in a fresh
process through submitit's local executor, ``parallel`` at a time. ``slurm`` submits the sweep
as one job array through submitit; a job that reaches its time limit or is pre-empted gets
SIGUSR2 ``signal_delay_s`` before, requeues itself and starts its point again
(:class:`PointJob` is a submitit ``Checkpointable``). The submitter waits with a progress bar
whose counts (done, failed, running, queued) come from the results folder and the job states;
with ``wait=False`` it returns after submitting, and ``python -m tome_lab.launch status FOLDER``
shows the states and the table later.

Bookkeeping in each point folder (besides ``config.yaml`` and ``result.json`` of
:mod:`tome_lab.results`): ``claim.json``, written by the submitter, names the job (launcher, job
id, host, pid, log file) so that a later launch or status can ask whether it still lives. A job
that ended without writing ``result.json`` (killed, out of memory, cancelled, node failure) is
reported failed with its log and runs again on the next launch.

The package, one module per job, each importing only those above it:

- :mod:`~tome_lab.launch.config`: :class:`LaunchConfig`, from flags or a YAML file.
- :mod:`~tome_lab.launch.execution`: the point function, a point's identity, :func:`execute`
  and :class:`PointJob`.
- :mod:`~tome_lab.launch.claims`: claims, job states, :func:`plan`, :func:`status`.
- :mod:`~tome_lab.launch.backends`: :func:`run` and the inline, local and Slurm backends, with
  the submitit executors the search's workers use too.
- :mod:`~tome_lab.launch.cli`: ``python -m tome_lab.launch status FOLDER``.

Every public name of those modules is importable from ``tome_lab.launch`` itself.
"""

from __future__ import annotations

from tome_lab.launch.backends import (
    local_executor,
    run,
    slurm_executor,
    slurm_parameters,
)
from tome_lab.launch.claims import (
    CLAIM,
    LAUNCH_DIR,
    LOCK,
    MANIFEST,
    SLURM_QUEUED,
    SLURM_RUNNING,
    Plan,
    claim_state,
    collect,
    format_status,
    plan,
    point_dir,
    read_claim,
    slurm_states,
    states,
    status,
    wait,
)
from tome_lab.launch.cli import main
from tome_lab.launch.config import LAUNCHERS, RERUN, LaunchConfig
from tome_lab.launch.execution import (
    PointFn,
    PointJob,
    PointLike,
    checkpoint_of,
    execute,
    fn_name,
    identity,
    preserved_state,
    resolve_fn,
)

__all__ = [
    "CLAIM", "LAUNCHERS", "LAUNCH_DIR", "LOCK", "MANIFEST", "RERUN", "SLURM_QUEUED",
    "SLURM_RUNNING", "LaunchConfig", "Plan", "PointFn", "PointJob", "PointLike",
    "checkpoint_of", "claim_state", "collect", "execute", "fn_name", "format_status",
    "identity", "local_executor", "main", "plan", "point_dir", "preserved_state", "read_claim",
    "resolve_fn", "run", "slurm_executor", "slurm_parameters", "slurm_states", "states",
    "status", "wait",
]
