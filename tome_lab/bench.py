"""Throughput bench: ToMe settings against the unpatched timm model, interleaved in one run.

    python -m tome_lab.bench --model deit_small_patch16_224 --r 0,8,16 --batch-size 32
    python -m tome_lab.bench --eval.compile true --bench.memory true   # compiled, peak memory

Every repeat times one batch of each setting in turn (unpatched first), after a warm-up
(:func:`tome_lab.runtime.interleaved_times`), so drift in a shared machine's speed hits all
settings alike; the reported figure is the median img/s over repeats and the speed-up is the
ratio of medians to the unpatched model. With ``--eval.compile`` every setting, timm's model
included, is also timed after ``torch.compile``, interleaved with the eager ones, and its
speed-up is taken against compiled timm. Models are randomly initialised unless a checkpoint
is given: speed does not depend on the weights, and nothing is downloaded.

``--bench.memory`` adds each setting's peak memory of one forward: on CUDA the peak that torch
allocated above what was allocated before the forward; on the CPU how far one forward raises
the peak resident set size above the resident size before it, in a fresh process per setting
(memory an earlier forward freed stays resident in the allocator and would hide a later
one's; on Linux the peak is reset after the model is built, ``/proc/self/clear_refs``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tome_lab import cli
from tome_lab.config import BenchRunConfig, ModelConfig, ToMeConfig, from_dict, to_dict
from tome_lab.runtime import autocast, compile_model, interleaved_times, throughput

PROG = "python -m tome_lab.bench"


@dataclass(frozen=True)
class Setting:
    """One bench column: ``matching`` at ``r`` (``matching=None`` is unpatched timm)."""

    matching: str | None
    r: int

    @property
    def label(self) -> str:
        return "timm" if self.matching is None else f"{self.matching} r={self.r}"

    def tome(self, base: ToMeConfig) -> ToMeConfig | None:
        """The ToMe configuration of this setting (None: unpatched)."""
        if self.matching is None:
            return None
        return dataclasses.replace(base, r=self.r, matching=self.matching)


def settings_of(cfg: BenchRunConfig) -> list[Setting]:
    """Unpatched timm first, then every (matching, r) of ``cfg.bench``."""
    return [Setting(None, 0)] + [Setting(m, r) for m in cfg.bench.matching for r in cfg.bench.r]


def _build(cfg: BenchRunConfig, s: Setting, base: nn.Module | None = None) -> nn.Module:
    import tome_lab
    from tome_lab.models import create_model

    model = copy.deepcopy(base) if base is not None else create_model(cfg.model)
    tome = s.tome(cfg.tome)
    if tome is not None:
        tome_lab.apply_config(model, tome)
    model = model.eval().to(cfg.eval.device)
    if cfg.bench.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _input(cfg: BenchRunConfig, model: nn.Module) -> torch.Tensor:
    from tome_lab.data import model_data_config

    size = tuple(model_data_config(model)["input_size"])
    x = torch.randn(cfg.bench.batch_size, *size, device=cfg.eval.device)
    if cfg.bench.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x  # (B, C, H, W)


def _forward_peak_cuda(model: nn.Module, x: torch.Tensor, dtype: str) -> float:
    """MiB that one forward allocates above what was allocated before it (CUDA)."""
    torch.cuda.synchronize(x.device)
    before = torch.cuda.memory_allocated(x.device)
    torch.cuda.reset_peak_memory_stats(x.device)
    with torch.inference_mode(), autocast(x.device, dtype):
        model(x)
    torch.cuda.synchronize(x.device)
    return (torch.cuda.max_memory_allocated(x.device) - before) / 2**20


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"no {field} in /proc/self/status")


def _forward_peak_cpu(model: nn.Module, x: torch.Tensor, dtype: str) -> float | None:
    """MiB by which one forward raises the peak resident set above the resident size before
    it, or None where the peak cannot be reset (Linux's ``/proc/self/clear_refs``, value 5,
    resets it to the current size). Only meaningful in a fresh process: memory that earlier
    forwards freed stays resident in the allocator and would hide a later forward's."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _status_kib("VmRSS")
    except OSError:
        return None
    with torch.inference_mode(), autocast(x.device, dtype):
        model(x)
    return max(0, _status_kib("VmHWM") - before) / 1024


def _forward_peak_rss() -> None:
    """The child process of a CPU memory probe: reads ``{"cfg", "setting"}`` JSON on stdin,
    prints the peak-RSS growth (MiB) of one forward of that setting."""
    import resource

    req = json.loads(sys.stdin.read())
    cfg = from_dict(BenchRunConfig, req["cfg"])
    if cfg.eval.threads is not None:
        torch.set_num_threads(cfg.eval.threads)
    model = _build(cfg, Setting(req["matching"], req["r"]))
    x = _input(cfg, model)
    peak = _forward_peak_cpu(model, x, cfg.eval.dtype)
    if peak is None:  # no resettable peak: the growth of the process's peak so far
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        with torch.inference_mode(), autocast(x.device, cfg.eval.dtype):
            model(x)
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    print(json.dumps({"peak_mib": peak}))


def _peak_rss_mib(cfg: BenchRunConfig, s: Setting) -> float:
    req = json.dumps({"cfg": to_dict(cfg), "matching": s.matching, "r": s.r})
    out = subprocess.run([sys.executable, "-c", "from tome_lab.bench import _forward_peak_rss;"
                          " _forward_peak_rss()"], input=req, capture_output=True, text=True,
                         check=False)
    if out.returncode != 0:
        raise RuntimeError(f"the memory probe of {s.label} failed:\n{out.stderr}")
    return float(json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"])


@dataclass
class Prepared:
    """The bench's models, built and validated before any timing."""

    cfg: BenchRunConfig
    settings: list[Setting]
    models: dict[Setting, nn.Module]
    gflops: dict[Setting, float]
    x: torch.Tensor


def prepare(cfg: BenchRunConfig) -> Prepared:
    """Builds one model per setting (validating each) and counts its GFLOPs.

    Raises:
        ValueError: an unknown model or a setting the configuration rejects.
    """
    import tome_lab
    from tome_lab.data import model_data_config
    from tome_lab.models import create_model

    if cfg.eval.threads is not None:
        torch.set_num_threads(cfg.eval.threads)
    base = create_model(cfg.model)
    size = tuple(model_data_config(base)["input_size"])
    settings = settings_of(cfg)
    models, gflops = {}, {}
    for s in settings:
        models[s] = _build(cfg, s, base)
        gflops[s] = tome_lab.count_flops(models[s], size)
    return Prepared(cfg, settings, models, gflops, _input(cfg, models[settings[0]]))


def measure(p: Prepared) -> list[dict[str, Any]]:
    """Times every setting (eager, and compiled with ``eval.compile``); returns one row each.

    Rows hold ``setting``, ``matching``, ``r``, ``img_per_s`` (median) and ``speedup`` (over
    eager timm), with ``eval.compile`` also ``img_per_s_compiled`` and ``speedup_compiled``
    (over compiled timm), ``gflops`` (fvcore, one image), ``flop_ratio`` (unpatched / this),
    with ``bench.memory`` ``peak_mib`` (see the module docstring), and the run's parameters.
    """
    from tqdm.auto import tqdm

    cfg = p.cfg
    ev = cfg.eval
    variants = ["eager", "compiled"] if ev.compile else ["eager"]
    fns = {}
    for s in p.settings:
        for v in variants:
            m = p.models[s] if v == "eager" else compile_model(
                p.models[s], ev.compile_backend, ev.compile_mode, ev.compile_freezing)

            def call(m: nn.Module = m) -> None:
                with torch.inference_mode(), autocast(p.x.device, ev.dtype):
                    m(p.x)

            fns[(s, v)] = call
    bar = tqdm(total=(ev.speed_warmup + ev.speed_batches) * len(fns), file=sys.stderr,
               desc=f"bench {cfg.model.name}", disable=not cfg.bench.progress)
    times = interleaved_times(fns, ev.speed_batches, ev.speed_warmup, ev.device,
                              on_step=bar.update)
    bar.close()
    first = p.settings[0]
    speed = {v: throughput({s: times[(s, v)] for s in p.settings}, len(p.x), base=first)
             for v in variants}
    rows = []
    for s in p.settings:
        row: dict[str, Any] = {
            "model": cfg.model.name, "setting": s.label, "matching": s.matching or "none",
            "r": s.r, "img_per_s": speed["eager"][s]["img_per_s"],
            "speedup": speed["eager"][s]["speedup"]}
        if ev.compile:
            row["img_per_s_compiled"] = speed["compiled"][s]["img_per_s"]
            row["speedup_compiled"] = speed["compiled"][s]["speedup"]
        row["gflops"] = p.gflops[s]
        row["flop_ratio"] = p.gflops[first] / p.gflops[s]
        if cfg.bench.memory:
            if p.x.device.type == "cuda":
                row["peak_mib"] = _forward_peak_cuda(p.models[s], p.x, ev.dtype)
            else:
                row["peak_mib"] = _peak_rss_mib(cfg, s)
        row.update({"batch_size": cfg.bench.batch_size, "device": ev.device, "dtype": ev.dtype,
                    "compile": ev.compile, "compile_mode": ev.compile_mode,
                    "compile_freezing": ev.compile_freezing,
                    "channels_last": cfg.bench.channels_last,
                    "threads": torch.get_num_threads(), "repeats": ev.speed_batches,
                    "warmup": ev.speed_warmup})
        rows.append(row)
    return rows


def run_bench(cfg: BenchRunConfig | None = None) -> list[dict[str, Any]]:
    """Times each (matching, r) setting of ``cfg`` against unpatched timm; one row each."""
    return measure(prepare(cfg or BenchRunConfig()))


def format_table(rows: list[dict[str, Any]]) -> str:
    """A fixed-width table of bench rows (compiled and memory columns when present)."""
    # (key, header, width, format, suffix); the compiled and memory columns when present
    cols = [("img_per_s", "img/s", 10, ".1f", ""), ("speedup", "speed-up", 10, ".2f", "x")]
    if "img_per_s_compiled" in rows[0]:
        cols += [("img_per_s_compiled", "compiled", 10, ".1f", ""),
                 ("speedup_compiled", "speed-up", 10, ".2f", "x")]
    cols += [("gflops", "GFLOPs", 9, ".2f", ""), ("flop_ratio", "FLOP ratio", 12, ".2f", "x")]
    if "peak_mib" in rows[0]:
        cols.append(("peak_mib", "peak MiB", 10, ".1f", ""))
    head = f"{'setting':<24}" + "".join(f"{h:>{w}}" for _, h, w, _, _ in cols)
    lines = [head, "-" * len(head)]
    for row in rows:
        lines.append(f"{row['setting']:<24}" + "".join(
            f"{format(row[k], f) + sfx:>{w}}" for k, _, w, f, sfx in cols))
    return "\n".join(lines)


def write_rows(rows: list[dict[str, Any]], json_path: str | None, csv_path: str | None) -> None:
    """Writes the rows as JSON (``-``: stdout) and / or CSV, atomically."""
    from tome_lab import results

    if json_path:
        text = json.dumps(rows, indent=2)
        if json_path == "-":
            print(text)
        else:
            results.write_text_atomic(json_path, text + "\n")
    if csv_path:
        import pandas as pd

        results.write_csv(pd.DataFrame(rows), csv_path)


ALIASES: dict[str, cli.Alias] = {
    **cli.MODEL_ALIASES, **cli.section_aliases("bench", type(BenchRunConfig().bench)),
    "--device": "--eval.device", "--dtype": "--eval.dtype", "--threads": "--eval.threads",
    "--compile": ("--eval.compile", "true"), "--repeats": "--eval.speed_batches",
    "--warmup": "--eval.speed_warmup",
}


def build_parser() -> Any:
    """The jsonargparse parser: model, tome, eval and bench sections."""
    return cli.build_parser(BenchRunConfig, PROG, __doc__, ALIASES)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: prints the table (and writes JSON / CSV); returns the exit status."""

    def body() -> int:
        cfg, _ = cli.parse(build_parser(), BenchRunConfig, argv, ALIASES)
        with cli.setting_up():
            prepared = prepare(cfg)
        rows = measure(prepared)
        print(format_table(rows))
        write_rows(rows, cfg.bench.json, cfg.bench.csv)
        return 0

    return cli.run(PROG, body)


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["ModelConfig", "Setting", "autocast", "format_table", "main", "measure", "prepare",
           "run_bench"]
