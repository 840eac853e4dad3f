"""Where and how the points of a sweep run: :class:`LaunchConfig`, from flags or a YAML file
(``launch/*.yaml``)."""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

LAUNCHERS = ("inline", "local", "slurm")
RERUN = ("failed", "all")


@dataclass(frozen=True)
class LaunchConfig:
    """Where and how the points of a sweep run.

    Attributes:
        launcher: ``inline`` (this process), ``local`` (submitit's local executor: one fresh
            process per point) or ``slurm`` (one submitit job array).
        parallel: points running at once (``local``: processes; ``slurm``: the array's
            ``%parallel`` throttle).
        partition: Slurm partition; None: the cluster's default.
        cpus_per_task: CPUs per point.
        gpus_per_task: GPUs per point (Slurm ``--gpus-per-task``).
        mem_gb: memory per point in GB; None: the cluster's default.
        time_min: time limit per point in minutes (Slurm rounds up to whole minutes).
        account: Slurm account.
        qos: Slurm quality of service.
        constraint: Slurm node constraint (e.g. ``a100``).
        sbatch: extra sbatch options, name -> value (``{"exclude": "node7"}``; ``true`` for a
            bare flag).
        setup: shell lines run before each job (module loads, environment activation).
        log_dir: submitit's folder of job scripts and logs; None: ``<sweep>/.launch``.
        max_requeue: how many times a timed-out job requeues itself before it fails.
        signal_delay_s: seconds before the time limit at which a job gets SIGUSR2 (checkpoint
            and requeue).
        wait: wait for the jobs with a progress bar; False: submit and return.
        poll_s: seconds between two looks at the job states while waiting.
        python: the Python executable on the compute nodes; None: this one.
    """

    launcher: str = "inline"
    parallel: int = 2
    partition: str | None = None
    cpus_per_task: int = 1
    gpus_per_task: int = 0
    mem_gb: float | None = None
    time_min: float = 60.0
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    sbatch: Mapping[str, Any] = field(default_factory=dict)
    setup: tuple[str, ...] = ()
    log_dir: str | None = None
    max_requeue: int = 3
    signal_delay_s: int = 90
    wait: bool = True
    poll_s: float = 2.0
    python: str | None = None

    def __post_init__(self) -> None:
        if self.launcher not in LAUNCHERS:
            raise ValueError(f"launcher must be one of {', '.join(LAUNCHERS)}, got "
                             f"{self.launcher!r}{_did_you_mean(self.launcher, LAUNCHERS)}")
        for name, low in (("parallel", 1), ("cpus_per_task", 1), ("gpus_per_task", 0),
                          ("max_requeue", 0), ("signal_delay_s", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"launch.{name} must be an int >= {low}, got {value!r}")
        for name in ("time_min", "poll_s") + (("mem_gb",) if self.mem_gb is not None else ()):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"launch.{name} must be a number > 0, got {value!r}")
        for name in ("partition", "account", "qos", "constraint", "log_dir", "python"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"launch.{name} must be a non-empty string or null, "
                                 f"got {value!r}")
        if not isinstance(self.sbatch, Mapping):
            raise ValueError(f"launch.sbatch must be a mapping of sbatch options, "
                             f"got {self.sbatch!r}")
        for k, v in self.sbatch.items():
            if not isinstance(k, str) or not re.fullmatch(r"[a-z][a-z0-9_-]*", k):
                raise ValueError(f"launch.sbatch: {k!r} is not an sbatch option name "
                                 f"(lowercase, e.g. 'exclude' for --exclude)")
            if not isinstance(v, (str, int, float, bool)):
                raise ValueError(f"launch.sbatch.{k} must be a string, number or true, "
                                 f"got {v!r}")
        setup = (self.setup,) if isinstance(self.setup, str) else tuple(self.setup)
        if not all(isinstance(line, str) for line in setup):
            raise ValueError(f"launch.setup must be a list of shell lines, got {self.setup!r}")
        object.__setattr__(self, "setup", setup)
        object.__setattr__(self, "sbatch", dict(self.sbatch))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LaunchConfig:
        """A LaunchConfig from a mapping, naming unknown keys (with a did-you-mean).

        Raises:
            ValueError: an unknown key or a bad value.
        """
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in d if k not in names]
        if unknown:
            k = unknown[0]
            raise ValueError(f"unknown launch option {k!r}{_did_you_mean(k, names)}; valid: "
                             f"{', '.join(names)}")
        return cls(**dict(d))

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> LaunchConfig:
        """Reads a launcher YAML file (see ``launch/*.yaml``): a mapping of the fields above.

        Raises:
            ValueError: the file is missing, not a mapping, or holds a bad key or value.
        """
        p = Path(path)
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8"))
        except OSError as err:
            raise ValueError(f"cannot read launcher file {str(p)!r}: {err.strerror}") from None
        except yaml.YAMLError as err:
            raise ValueError(f"launcher file {str(p)!r} is not valid YAML: {err}") from None
        if not isinstance(data, Mapping):
            raise ValueError(f"launcher file {str(p)!r} must hold a mapping of launch options")
        try:
            return cls.from_dict(data)
        except ValueError as err:
            raise ValueError(f"{p}: {err}") from None

    @classmethod
    def parse(cls, launcher: str, **overrides: Any) -> LaunchConfig:
        """``inline``, ``local``, ``slurm`` or a YAML file's path, then field overrides."""
        if launcher in LAUNCHERS:
            base = cls(launcher=launcher)
        elif launcher.endswith((".yaml", ".yml")) or os.sep in launcher:
            base = cls.from_file(launcher)
        else:
            raise ValueError(f"--launcher takes {', '.join(LAUNCHERS)} or a YAML file, got "
                             f"{launcher!r}{_did_you_mean(launcher, LAUNCHERS)}")
        return dataclasses.replace(base, **overrides) if overrides else base


def _did_you_mean(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""

