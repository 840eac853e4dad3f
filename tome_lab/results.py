"""The results store: one folder per sweep point, written atomically, read back as a DataFrame.

Layout of a sweep folder (``runs/<sweep>/`` by default)::

    runs/matching/
        matching=bipartite-3fa2c91b0d1e/   one folder per point: readable name, config hash
            config.yaml                    the resolved configuration, written first
            result.json                    written last, atomically: its presence marks the
                                           point finished (status "ok" or "failed")
            claim.json                     local / slurm only: the job that holds the point
                                           (see tome_lab.launch)
        .launch/                           the launcher's manifest, job scripts and job logs
        results.csv                        the table of the last sweep run into this folder

``result.json`` schema (version 1)::

    {"schema": 1, "status": "ok" | "failed", "key": <config hash>, "name": <readable name>,
     "overrides": {dotted path: value}, "config": {model, data, tome, eval, seed},
     "identity": {"config": <config hash>, "fn": "module:function",
                  "checkpoint": null | {"path", "sha256"}},
     "metrics": {top1, top5, gflops, img_per_s, speedup, ...} (flat; {} when failed),
     "error": null | {"type", "message", "traceback"},
     "job": {"launcher": "inline" | "local" | "slurm", "job_id", "attempt"},
     "env": {git_rev, git_dirty, python, torch, timm, tome_lab, device, dtype, hostname,
             platform, cpu_count, torch_threads, pid, date},
     "started": ISO date, "finished": ISO date, "seconds": float}

Every file is written to a temporary name in the same folder, flushed to disk and renamed, so a
kill at any moment leaves either the old file, the new one, or none: never half of one. The
layout follows big_vision's "config beside the metrics" and lm-evaluation-harness' result
records (git revision, versions and config in every file).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import re
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

SCHEMA = 1
RESULT = "result.json"
CONFIG = "config.yaml"


def now() -> str:
    """The current time as an ISO 8601 string with time zone."""
    return _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds")


def parse_time(stamp: Any) -> _dt.datetime | None:
    """An ISO 8601 time written by :func:`now` as an aware datetime (None if absent or bad),
    so that times are compared as times: ISO strings with different UTC offsets do not
    sort in time order."""
    if not isinstance(stamp, str) or not stamp:
        return None
    try:
        t = _dt.datetime.fromisoformat(stamp)
    except ValueError:
        return None
    return t if t.tzinfo is not None else t.astimezone()


def pid_alive(pid: Any) -> bool:
    """Whether process ``pid`` exists on this host (one owned by another user counts)."""
    try:
        os.kill(int(pid), 0)
    except PermissionError:
        return True
    except (OSError, ValueError, TypeError):
        return False
    return True


# --------------------------------------------------------------------------- locks

LOCK_STALE_S = 600.0  # a lock file older than this is abandoned (its holder was killed)


@contextlib.contextmanager
def exclusive(path: str | os.PathLike[str], timeout: float = 600.0,
              stale_s: float = LOCK_STALE_S, poll_s: float = 0.05) -> Iterator[None]:
    """Holds the lock file ``path`` for the duration: created with ``O_CREAT | O_EXCL``.

    Exclusive creation rather than ``flock``, which some network file systems do not honour
    (the tests exercise a local disk only). The file names its holder (host, pid, time); a
    lock whose holder died on this host, or older than ``stale_s``, is broken.

    Raises:
        TimeoutError: a live holder kept it for more than ``timeout`` seconds.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666 & ~_umask())
        except FileExistsError:
            if _lock_abandoned(path, stale_s):
                path.unlink(missing_ok=True)
                continue
            if time.monotonic() > deadline:
                raise TimeoutError(f"the lock {path} has been held for more than {timeout:g} s "
                                   f"by {_read_lock(path)}; delete it if that process is "
                                   f"gone") from None
            time.sleep(poll_s)
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"host": socket.gethostname(), "pid": os.getpid(), "time": now()}, f)
        break
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def _read_lock(path: Path) -> dict[str, Any]:
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _lock_abandoned(path: Path, stale_s: float) -> bool:
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return False  # released meanwhile: try again
    holder = _read_lock(path)
    if not holder:  # being written (or garbage): abandoned only once old
        return age > min(stale_s, 5.0)
    if holder.get("host") == socket.gethostname() and not pid_alive(holder.get("pid")):
        return True
    return age > stale_s


# --------------------------------------------------------------------------- atomic writes

def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Writes ``text`` (UTF-8) to ``path`` atomically (see :func:`write_bytes_atomic`)."""
    if not isinstance(text, str):
        raise TypeError(f"write_text_atomic takes a str, got {type(text).__name__}")
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Writes ``data`` to ``path`` via a temporary file and a rename (atomic on POSIX): the
    one atomic writer (results, tables, checkpoints).

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the writer's pid and host in the name let a later run drop what a killed writer left
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp",
                               prefix=f".{path.name}~{os.getpid()}@{socket.gethostname()}~")
    try:
        # mkstemp makes the file 0600; results are for collaborators on shared storage, so
        # give it the mode a plain open() would (0666 less the umask).
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)  # the rename itself survives a crash only once its folder is synced
    return path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. a platform without directory file descriptors
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a folder; the file itself is synced
    finally:
        os.close(fd)


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> Path:
    """Writes ``obj`` as indented JSON, atomically (see :func:`write_text_atomic`)."""
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=_jsonable)
                             + "\n")


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return dict(obj)
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    return str(obj)


TEMP_STALE_S = 600.0  # an atomic write takes milliseconds: a temporary this old was abandoned


_TEMP_WRITER = re.compile(r"~(\d+)@([^~]+)~[^~]*\.tmp$")


def remove_stale_temps(folder: str | os.PathLike[str], older_than_s: float = TEMP_STALE_S
                       ) -> int:
    """Deletes temporary files a killed writer left in ``folder``; returns how many.

    A temporary whose name says it was written on this host by a process that no longer
    exists goes at once; any other only once older than ``older_than_s``: a younger one may
    belong to a writer at work in another process (two launches of one sweep) or on another
    host, which must not lose it.
    """
    n, limit, host = 0, time.time() - older_than_s, socket.gethostname()
    for tmp in Path(folder).glob(".*.tmp"):
        writer = _TEMP_WRITER.search(tmp.name)
        dead = writer is not None and writer[2] == host and not pid_alive(writer[1])
        try:
            if not dead and tmp.stat().st_mtime >= limit:
                continue
        except FileNotFoundError:
            continue
        tmp.unlink(missing_ok=True)
        n += 1
    return n


# --------------------------------------------------------------------------- environment

def _git_revision(src: Path | None = None) -> tuple[str | None, bool | None]:
    """The git commit of the tome_lab source tree and whether it has local changes, from one
    ``git status --porcelain=v2 --branch`` (the commit and the changes in one call)."""
    src = Path(__file__).resolve().parent if src is None else Path(src)
    try:
        out = subprocess.run(["git", "-C", str(src), "status", "--porcelain=v2", "--branch",
                              "--", "."], capture_output=True, text=True, timeout=5,
                             check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    rev, dirty = None, False
    for line in out.splitlines():
        if line.startswith("# branch.oid "):
            oid = line.split()[2]
            rev = None if oid == "(initial)" else oid
        elif not line.startswith("#"):
            dirty = True
    return rev, dirty


def code_revision() -> str | None:
    """The git commit of the tome_lab source tree, with ``+dirty`` if it has local changes."""
    rev, dirty = _git_revision()
    return None if rev is None else rev + ("+dirty" if dirty else "")


def file_digest(path: str | os.PathLike[str]) -> str | None:
    """SHA-256 of a file's content (hex), or None if it cannot be read."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return None
    return h.hexdigest()


def same_identity(record: Mapping[str, Any], ident: Mapping[str, Any]) -> bool:
    """Whether a finished record was made from the same inputs as ``ident`` says.

    The identity (see :func:`tome_lab.launch.identity`) is the configuration hash, the point
    function, the checkpoint's path and content digest and a procedural dataset's generator
    version; the code revision is not part of it (results are reused across revisions, and the
    launcher says so). A record without an identity (written before it was recorded) is never
    the same.
    """
    old = record.get("identity")
    return isinstance(old, Mapping) and all(old.get(k) == ident.get(k)
                                            for k in ("config", "fn", "checkpoint", "data"))


def _version(package: str) -> str | None:
    """An installed package's version, without importing it (timm's import takes seconds)."""
    import sys
    from importlib import metadata

    module = sys.modules.get(package)
    if module is not None and hasattr(module, "__version__"):
        return str(module.__version__)
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def environment(device: str | None = None, dtype: str | None = None) -> dict[str, Any]:
    """Where and with what a result was made: git revision, versions, device, dtype, date."""
    import sys

    import torch

    import tome_lab

    rev, dirty = _git_revision()
    return {
        "git_rev": rev,
        "git_dirty": dirty,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "timm": _version("timm"),
        "tome_lab": tome_lab.__version__,
        "device": device,
        "dtype": dtype,
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "pid": os.getpid(),
        "date": now(),
    }


def make_record(*, status: str, key: str, name: str, overrides: Mapping[str, Any],
                config: Mapping[str, Any], metrics: Mapping[str, Any], error: Any,
                env: Mapping[str, Any], started: str | None, finished: str | None,
                seconds: float | None, identity: Mapping[str, Any] | None = None,
                job: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One ``result.json`` record in the schema above, its keys in the schema's order.

    The one builder of records: the launchers' points (:func:`tome_lab.launch.execute`) and the
    search's trials and test re-scores (:mod:`tome_lab.search`) all go through it. ``identity``
    and ``job`` appear only when given; tuples among the overrides are written as lists.
    """
    record: dict[str, Any] = {
        "schema": SCHEMA, "status": status, "key": key, "name": name,
        "overrides": {k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()},
        "config": config,
    }
    if identity is not None:
        record["identity"] = identity
    record.update(metrics=metrics, error=error)
    if job is not None:
        record["job"] = job
    record.update(env=env, started=started, finished=finished, seconds=seconds)
    return record


def write_point(point_dir: str | os.PathLike[str], record: Mapping[str, Any]) -> Path:
    """Writes a finished point's folder at once: ``config.yaml`` (the record's configuration)
    first, ``result.json`` last (its presence marks the point finished)."""
    pdir = Path(point_dir)
    write_text_atomic(pdir / CONFIG, yaml.safe_dump(record["config"], sort_keys=False))
    write_json_atomic(pdir / RESULT, record)
    return pdir


# --------------------------------------------------------------------------- reading

def read_result(point_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The record of a point folder, or None if it has none (not finished) or it is unreadable."""
    path = Path(point_dir) / RESULT
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def read_config(point_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``config.yaml`` of a point folder as a dict, or None."""
    try:
        return yaml.safe_load((Path(point_dir) / CONFIG).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, key + "."))
        elif isinstance(v, Mapping):
            continue  # an empty mapping (e.g. no plug-in options) adds no column
        else:
            out[key] = tuple(v) if isinstance(v, list) else v
    return out


# Words of a paired-sweep setting that choose the schedule, not the method.
SCHEDULE_WORDS = ("schedule", "gflops", "r", "keep_rate", "ratio", "at")


def setting_method(setting: str) -> str:
    """A paired-sweep setting (``"matching=atc linkage=average schedule=stages gflops=0.08"``)
    without its schedule words: the method it runs (``"matching=atc linkage=average"``)."""
    return " ".join(w for w in setting.split() if w.partition("=")[0] not in SCHEDULE_WORDS)


def record_row(record: Mapping[str, Any], point_dir: Path | None = None) -> dict[str, Any]:
    """One flat DataFrame row from a result record.

    Columns: ``sweep``, ``point``, ``key``, ``name``, ``status``; the metrics under their own
    names; the configuration as dotted paths (``tome.r``, ``data.name``, ...); ``error``; the
    environment as ``env.<field>``; ``started``, ``finished``, ``seconds``. Lists become tuples
    so that columns can be grouped on.
    """
    row: dict[str, Any] = {}
    if point_dir is not None:
        row["sweep"] = point_dir.parent.name
        row["point"] = point_dir.name
    row["key"] = record.get("key")
    row["name"] = record.get("name")
    row["status"] = record.get("status")
    row.update(_flatten(record.get("metrics") or {}))
    row.update(_flatten(record.get("config") or {}))
    err = record.get("error")
    row["error"] = f"{err.get('type')}: {err.get('message')}" if isinstance(err, dict) else None
    row.update(_flatten(record.get("env") or {}, "env."))
    for k in ("started", "finished", "seconds"):
        row[k] = record.get(k)
    return row


def find_points(path: str | os.PathLike[str]) -> list[Path]:
    """Point folders under ``path`` (a point folder, a sweep folder, or a folder of sweeps)."""
    path = Path(path)
    if (path / RESULT).is_file():
        return [path]
    return sorted(p.parent for p in path.rglob(RESULT))


def load(path: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
         status: str | None = None) -> pd.DataFrame:
    """All finished points of one or many sweeps as one DataFrame (one row per point).

    Args:
        path: a point folder, a sweep folder, a folder holding sweep folders, or a list of
            any of these.
        status: keep only rows of this status (``"ok"`` or ``"failed"``); None keeps all.

    Returns:
        One row per ``result.json`` found (see :func:`record_row` for the columns); an empty
        DataFrame when there is none.

    Raises:
        FileNotFoundError: a given path does not exist.
    """
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    rows = []
    for p in paths:
        if not Path(p).exists():
            raise FileNotFoundError(f"no such results folder: {p}")
        for point in find_points(p):
            record = read_result(point)
            if record is not None:
                rows.append(record_row(record, point))
    df = pd.DataFrame(rows)
    if status is not None and not df.empty:
        df = df[df["status"] == status].reset_index(drop=True)
    return df


def write_csv(df: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Writes ``df`` as CSV, atomically; tuple and list cells as JSON lists."""
    out = df.copy()
    for col in out.columns:
        if out[col].map(lambda v: isinstance(v, (tuple, list))).any():
            out[col] = out[col].map(
                lambda v: json.dumps(list(v)) if isinstance(v, (tuple, list)) else v)
    return write_text_atomic(path, out.to_csv(index=False))
