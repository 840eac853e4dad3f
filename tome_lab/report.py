"""The tables of figures in the docs, generated from the committed result files.

Every table of measured figures in ``README.md`` and ``docs/*.md`` sits between two markers::

    <!-- report:NAME ARG ... -->
    ...generated Markdown...
    <!-- /report:NAME -->

``NAME`` is a generator registered below (``TABLES``) and the arguments are, in most cases,
data files relative to the repository root (``benchmarks/*.json``, ``benchmarks/tasks/*.jsonl``,
``tome_lab/zoo/*.json``). Each generated table ends with a link to the file(s) it read, written
relative to the page, so a reader can check every figure against its data::

    python -m tome_lab.report            # rewrite every block from the files
    python -m tome_lab.report --check    # exit 1 and name each block that differs
    python -m tome_lab.report --list     # the generators

``tests/test_docs.py`` runs the check, so prose tables cannot drift from the data. The paired
table repeats the format of ``benchmarks/paired_table.py`` (a test holds the two equal).
"""

from __future__ import annotations

import argparse
import collections
import inspect
import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tome_lab.registry import Registry

ROOT = Path(__file__).resolve().parent.parent
PAGES = ("README.md", "docs/*.md", "docs/**/*.md", "benchmarks/tasks/*.md")
TASK_FILES = ("benchmarks/tasks/*.jsonl", "benchmarks/*.jsonl")

# <!-- report:NAME args --> ... <!-- /report:NAME -->
BLOCK = re.compile(r"(<!-- report:(?P<name>[\w-]+)(?P<args>[^>]*?)\s*-->\n)(?P<body>.*?)"
                   r"(<!-- /report:(?P=name) -->)", re.S)


@dataclass(frozen=True)
class Ctx:
    """Where a block is being generated: the repository root and the page that holds it."""

    root: Path
    page: Path

    def path(self, rel: str) -> Path:
        """A data file named relative to the repository root; it must exist."""
        p = self.root / rel
        if not p.is_file():
            raise FileNotFoundError(f"{self.page.name}: data file {rel} does not exist")
        return p

    def link(self, rel: str, text: str | None = None) -> str:
        """A Markdown link from the page to a repository file."""
        target = os.path.relpath(self.root / rel, self.page.parent).replace(os.sep, "/")
        return f"[{text or Path(rel).name}]({target})"

    def json(self, rel: str) -> Any:
        return json.loads(self.path(rel).read_text())

    def jsonl(self, rel: str) -> list[dict]:
        lines = self.path(rel).read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def source(self, *rels: str) -> str:
        return "Data: " + ", ".join(self.link(r) for r in rels) + "."


Table = Callable[..., str]
TABLES: Registry[Table] = Registry("report table")


def _x(v: float, nd: int = 2) -> str:
    return f"{v:.{nd}f}x"


def _int(v: float) -> str:
    return f"{v:,.0f}"


def _md(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------- the method zoo

@TABLES.register("methods")
def methods(ctx: Ctx) -> str:
    """One row per registered matching plug-in, read from the registry itself."""
    from tome_lab.registry import MATCHING  # the lookup imports the plug-ins

    rows = []
    for name in MATCHING.names():
        fn = MATCHING.get(name)
        mod = sys.modules[fn.__module__]
        what = (mod.__doc__ or fn.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        params = list(inspect.signature(fn).parameters.values())[2:]
        opts = ", ".join(f"`{p.name}={p.default!r}`" for p in params) or "-"
        reads = ", ".join(f"`{k}`" for k in sorted(getattr(fn, "uses", ()))) or "-"
        file = fn.__module__.replace(".", "/") + ".py"
        rows.append([f"`{name}`", what, opts, reads, ctx.link(file, Path(file).name)])
    return _md(["matching", "what (the module's docstring)", "options", "reads", "file"], rows)


@TABLES.register("capabilities")
def capabilities_table(ctx: Ctx) -> str:
    """One row per matching plug-in: its declared capabilities (the block protocol's
    ``Capabilities``) and its own FLOP formula (the docstring of its ``flops``)."""
    from tome_lab.matching import capabilities
    from tome_lab.registry import MATCHING

    def yes(v: bool) -> str:
        return "yes" if v else "no"

    rows = []
    for name in MATCHING.names():
        fn = MATCHING.get(name)
        c = capabilities(fn)
        own = getattr(fn, "flops", None)
        formula = " ".join((own.__doc__ or "").strip().split("\n\n")[0].split()) if own else "-"
        stats = ", ".join(f"`{a}`" for a in sorted(c.attention)) or "-"
        rows.append([f"`{name}`", c.reduction, f"`{c.bound}`", stats, yes(c.positions),
                     yes(c.sources), yes(c.unmerge), yes(c.stochastic), yes(c.fullgraph),
                     formula])
    return _md(["matching", "reduction", "bound on r", "attention stats", "positions",
                "trace_source", "unmerge", "stochastic", "fullgraph compile",
                "own FLOPs (besides the stats)"], rows)


@TABLES.register("knobs")
def knobs(ctx: Ctx) -> str:
    """Every registry of plug-ins and its registered names."""
    from tome_lab import registry

    rows = []
    for attr in sorted(dir(registry)):
        reg = getattr(registry, attr)
        if isinstance(reg, Registry) and attr != "DATASETS":  # datasets: see the data page
            aliases = ", ".join(f"`{a}`->`{c}`" for a, c in sorted(reg.aliases().items()))
            rows.append([f"`{attr}`", reg.kind, ", ".join(f"`{n}`" for n in reg.names()),
                         aliases or "-"])
    return _md(["registry", "holds", "names", "aliases"], rows)


# Bolya et al., ICLR 2023, Table 5: DeiT GFLOPs without and with ToMe (also tests/test_flops.py).
PAPER_GFLOPS = {"deit_small_patch16_224": {0: 4.6, 8: 3.4, 13: 2.7, 16: 2.3},
                "deit_tiny_patch16_224": {0: 1.3, 8: 0.9, 12: 0.8, 16: 0.6}}


@TABLES.register("flops-paper")
def flops_paper(ctx: Ctx) -> str:
    """The paper's DeiT GFLOPs against the analytic count (equal to fvcore's, by test)."""
    import timm
    import torch

    from tome_lab.engine import vit_spec
    from tome_lab.flops import analytic_gflops

    rows = []
    for name, table in PAPER_GFLOPS.items():
        with torch.device("meta"):
            spec = vit_spec(timm.create_model(name, pretrained=False))
        rs = list(table)
        ours = [analytic_gflops(spec, [r] * spec.depth) for r in rs]
        rows.append([f"`{name}`", " / ".join(map(str, rs)),
                     " / ".join(str(table[r]) for r in rs), " / ".join(f"{g:.3f}" for g in ours)])
    return (_md(["model", "r", "GFLOPs (paper)", "GFLOPs (tome_lab)"], rows)
            + f"\n\nComputed by `tome_lab.analytic_gflops`; {ctx.link('tests/test_flops.py')} "
              "holds it equal to fvcore's count and to the paper's figures.")


# --------------------------------------------------------------------------- speed

@TABLES.register("bench")
def bench(ctx: Ctx, *files: str) -> str:
    """Rows of ``python -m tome_lab.bench --json`` (one or more files, same model)."""
    rows, compiled, peak = [], False, False
    for f in files:
        for row in ctx.json(f):
            rows.append(row)
            compiled |= row.get("img_per_s_compiled") is not None
            peak |= row.get("peak_mib") is not None
    header = ["model", "setting", "img/s", "vs timm"]
    if compiled:
        header += ["img/s compiled", "vs timm compiled"]
    header += ["GFLOPs", "FLOP ratio"] + (["peak MiB"] if peak else [])
    out = []
    for row in rows:
        cells = [row["model"], row["setting"], f"{row['img_per_s']:,.1f}", _x(row["speedup"])]
        if compiled:
            c = row.get("img_per_s_compiled")
            cells += [f"{c:,.1f}" if c else "", _x(row["speedup_compiled"]) if c else ""]
        cells += [f"{row['gflops']:.2f}", _x(row["flop_ratio"])]
        if peak:
            cells.append(_int(row["peak_mib"]) if row.get("peak_mib") else "")
        out.append(cells)
    r0 = rows[0]
    where = (f"{r0['device']}, {r0['dtype']}, batch {r0['batch_size']}, "
             f"{r0['threads'] or 'default'} threads, median of {r0['repeats']} timed batches")
    return _md(header, out) + f"\n\n{where}. " + ctx.source(*files)


@TABLES.register("zoo-speed")
def zoo_speed(ctx: Ctx, file: str) -> str:
    """``bench --matching all --r 8,16``: one row per matcher, r=8 and r=16 side by side."""
    rows = ctx.json(file)
    by: dict[str, dict[int, dict]] = {}
    for row in rows:
        name = "timm (unpatched)" if row["setting"] == "timm" else row["matching"]
        by.setdefault(name, {})[row["r"] or 0] = row
    out = []
    for name, rs in by.items():
        if 8 not in rs and 16 not in rs:  # the unpatched row
            base = next(iter(rs.values()))
            out.append([name, f"{base['img_per_s']:.1f}", "1.00x", "", "", f"{base['gflops']:.2f}"])
            continue
        a, b = rs[8], rs[16]
        out.append([f"`{name}`", f"{a['img_per_s']:.1f}", _x(a["speedup"]),
                    f"{b['img_per_s']:.1f}", _x(b["speedup"]),
                    f"{a['gflops']:.2f} / {b['gflops']:.2f}"])
    return (_md(["matching", "r=8 img/s", "r=8 vs timm", "r=16 img/s", "r=16 vs timm",
                 "GFLOPs r=8 / r=16"], out)
            + f"\n\nbatch {rows[0]['batch_size']}, {rows[0]['threads']} threads, median of "
              f"{rows[0]['repeats']} timed batches. " + ctx.source(file))


@TABLES.register("batch-sizes")
def batch_sizes(ctx: Ctx, file: str) -> str:
    """``benchmarks/batch_sizes.py --json``: every variant at every batch size."""
    d = ctx.json(file)
    out = [[row["batch"], row["variant"], f"{row['img_s']:.1f}", _x(row["vs_same"]),
            f"{_x(row['round_ratio'])} [{row['round_ratio_q1']:.2f}, {row['round_ratio_q3']:.2f}]",
            _x(row["vs_eager"])] for row in d["rows"]]
    mode = d["compile_mode"] + (" + freezing" if d.get("freezing") else "")
    return (_md(["batch", "variant", "img/s", "vs timm (same mode)",
                 "per-round ratio, median [quartiles]", "vs timm eager"], out)
            + f"\n\ncompile mode {mode}, {d['threads']} threads, {d['rows'][0]['rounds']} rounds, "
              f"torch {d['torch']}, timm {d['timm']}. " + ctx.source(file))


def _variant(d: dict, batch: int, name: str) -> dict | None:
    return next((r for r in d["rows"] if r["batch"] == batch and r["variant"] == name), None)


@TABLES.register("batch1-targets")
def batch1_targets(ctx: Ctx, *files: str) -> str:
    """Batch-1 runs against issue 8's targets: ratio of median img/s to timm eager."""
    cols = ["r=0 eager", "r=16 eager", "floor r=16 eager", "floor plain r=16 eager",
            "r=16 compiled", "floor r=16 compiled", "floor plain r=16 compiled"]
    out = []
    for f in files:
        d = ctx.json(f)
        cells = [ctx.link(f, Path(f).stem.replace("batch_sizes_deit_s_cpu", "").strip("_")
                          or "batch sizes 1-128"),
                 d["compile_mode"] + (" + freezing" if d.get("freezing") else "")]
        for c in cols:
            row = _variant(d, 1, c)
            cells.append(_x(row["vs_eager"]) if row else "")
        out.append(cells)
    out.append(["target", "", ">= 0.99x", ">= 1.65x", "", "", ">= 1.85x", "", ""])
    return _md(["run", "compile"] + cols, out)


@TABLES.register("merge-kernels")
def merge_kernels(ctx: Ctx, *files: str) -> str:
    """``benchmarks/merge_kernels.py --json``: one merge, row copies against gather/scatter."""
    out = []
    for f in files:
        d = ctx.json(f)
        for row in d["rows"]:
            out.append([f"{row['batch']}, {d['channels']}",
                        f"{_int(row['rows_us'])} / {_int(row['gather_us'])}", _x(row["ratio"]),
                        f"{_int(row['wavg_rows_us'])} / {_int(row['wavg_passes_us'])}",
                        _x(row["wavg_ratio"]), ctx.link(f)])
    return _md(["batch, channels", "summing merge: rows / gather (us)", "ratio",
                "size-weighted average: merged rows / three passes (us)", "ratio", "data"], out)


def _load_note(rows: list[dict]) -> str:
    """", 1-minute load lo-hi" over the rows that recorded the machine's load, else ""."""
    loads = [r["load_1min"] for r in rows if "load_1min" in r]
    return f", 1-minute load {min(loads):.1f}-{max(loads):.1f}" if loads else ""


@TABLES.register("families-speed")
def families_speed(ctx: Ctx, file: str) -> str:
    """``benchmarks/families_speed.py --json`` (a JSON list): per model family, img/s of the
    unpatched model and of r = 0, 8, 16, the speed-up (ratio of medians, round-by-round
    quartiles) and the analytic GFLOPs ratio."""
    rows = ctx.json(file)
    out = [[f"`{r['family']}`", r["model"], r["setting"], f"{r['img_per_s']:.2f}",
            f"{_x(r['speedup'])} [{r['speedup_quartiles'][0]:.2f}, "
            f"{r['speedup_quartiles'][2]:.2f}]", f"{r['gflops']:.2f}", _x(r["flop_ratio"])]
           for r in rows]
    r0 = rows[0]
    load = _load_note(rows)
    return (_md(["family", "model", "setting", "img/s", "vs unpatched [quartiles]", "GFLOPs",
                 "FLOP ratio"], out)
            + f"\n\nCPU, fp32, batch {r0['batch']}, {r0['threads']} thread(s), median of "
              f"{r0['repeats']} interleaved rounds{load}. " + ctx.source(file))


@TABLES.register("attn-stats-cost")
def attn_stats_cost(ctx: Ctx, file: str) -> str:
    """``benchmarks/attn_stats_cost.py --json``: each attention-statistics request's time as a
    fraction of one DeiT-S block's, beside its share of the block's products."""
    rows = ctx.json(file)
    out = [[r["batch"], f"`{r['request']}`", f"{r['stats_ms']:.3f}", f"{r['block_ms']:.2f}",
            f"{100 * r['fraction_of_block']:.1f}% [{100 * r['fraction_quartiles'][0]:.1f}, "
            f"{100 * r['fraction_quartiles'][2]:.1f}]", f"{100 * r['products_fraction']:.2f}%"]
           for r in rows]
    r0 = rows[0]
    load = _load_note(rows)
    return (_md(["batch", "statistics", "ms", "block ms", "time vs block [quartiles]",
                 "products vs block"], out)
            + f"\n\nCPU, fp32, {r0['threads']} thread(s), median of {r0['repeats']} interleaved "
              f"rounds{load}. " + ctx.source(file))


@TABLES.register("learned-vs-search")
def learned_vs_search(ctx: Ctx, file: str) -> str:
    """``benchmarks/diffrate_vs_search.py``'s rows: per task, budget and method, test and val
    top-1 over the seeds (mean +- sample sd [min, max]), GFLOPs and each job's wall time."""
    import statistics

    rows = ctx.jsonl(file)
    names = {"optuna": "Optuna search (bipartite schedules)",
             "diffrate": "learned pairs (soft masks)",
             "diffrate-hard": "learned pairs (straight-through)"}
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["budget"], r["method"]), []).append(r)

    def spread(vals: list[float]) -> str:
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        return f"{statistics.mean(vals):.2f} +- {sd:.2f} [{min(vals):.2f}, {max(vals):.2f}]"

    out = []
    for (task, budget, method), rs in sorted(groups.items()):
        g = [r["gflops"] for r in rs]
        walls = [r.get("wall_s") for r in rs]
        out.append([task, f"{budget} ({rs[0]['budget_gflops']:.4f})", names.get(method, method),
                    ", ".join(str(r["seed"]) for r in rs), spread([r["top1_test"] for r in rs]),
                    spread([r["top1_val"] for r in rs]),
                    f"{min(g):.4f}" + (f"-{max(g):.4f}" if f"{max(g):.4f}" != f"{min(g):.4f}"
                                       else ""),
                    ", ".join("-" if w is None else f"{w:.0f}" for w in walls)])
    models = sorted({(r["task"], r["model"]) for r in rows})
    return (_md(["task", "budget", "method", "seeds", "test top-1", "val top-1", "GFLOPs",
                 "wall s per job"], out)
            + "\n\n" + ", ".join(f"{m} on {t}" for t, m in models) + ". " + ctx.source(file))


@TABLES.register("learned-rate-variants")
def learned_rate_variants(ctx: Ctx, file: str) -> str:
    """``benchmarks/diffrate_variants.py``: each form of the relaxation's exported pairs on
    val, with their GFLOPs against the target."""
    d = ctx.json(file)
    out = [[f"`{r['counts']}`", f"{r['tau_end']:g}", f"{r['start']:g}", f"{r['top1_val']:.1f}",
            f"{r['gflops']:.4f}", f"{r['expected_gflops']:.4f}", str(r["repair_steps"]),
            f"{r['learn_s']:.0f}"] for r in d["rows"]]
    return (_md(["counts", "tau_end", "start", "val top-1 of the export", "GFLOPs",
                 "relaxation's GFLOPs", "repair steps", "learn s"], out)
            + f"\n\nTarget {d['target']} GFLOPs. " + ctx.source(file))


@TABLES.register("launchers")
def launchers(ctx: Ctx, file: str) -> str:
    """``benchmarks/launchers.py --json``: wall time of one sweep under each launcher."""
    d = ctx.json(file)
    out = [[f"`{k}`", f"{v:.0f} s"] for k, v in d["seconds"].items()]
    return (_md(["launcher", "wall time"], out)
            + f"\n\n`{d['command']}` on {d['cpu_count']} cores, {d['date'][:10]}. "
            + ctx.source(file))


@TABLES.register("text")
def text(ctx: Ctx, file: str) -> str:
    """A committed text file that is already Markdown (a profile's tables), copied as is."""
    return ctx.path(file).read_text().rstrip("\n") + "\n\n" + ctx.source(file)


# --------------------------------------------------------------------------- search

def _pct(iv: dict) -> str:
    return f"{100 * iv['estimate']:.1f} [{100 * iv['low']:.1f}, {100 * iv['high']:.1f}]"


def _signed(iv: dict) -> str:
    return (f"{100 * iv['estimate']:+.1f} [{100 * iv['low']:+.1f}, {100 * iv['high']:+.1f}]")


def search_comparisons(d: dict) -> dict[str, Any]:
    """Counts of the budget table: rows, distinct (searched, baseline) pairs, and wins."""
    seen, wins, lo, hi, gains = set(), 0, math.inf, -math.inf, []
    for b in d["budgets"]:
        key = (tuple(b["searched"] or ()), b["baseline"])
        if key in seen or b["diff"] is None:
            continue
        seen.add(key)
        if b["diff"]["low"] > 0:
            wins += 1
            lo, hi = min(lo, b["budget"]), max(hi, b["budget"])
            gains.append(100 * b["diff"]["estimate"])
    return {"budgets": len(d["budgets"]), "distinct": len(seen), "wins": wins,
            "lo": lo, "hi": hi, "gain_lo": min(gains), "gain_hi": max(gains)}


@TABLES.register("search-summary")
def search_summary(ctx: Ctx, file: str) -> str:
    """Wall time, hypervolumes and the count of won comparisons of one search benchmark."""
    d = ctx.json(file)
    c = search_comparisons(d)
    ref = d["reference"]
    hv = [["search frontier (val-Pareto schedules)", f"{d['hv_val']['all trials']:.3f}",
           f"{float(d['hv_test']['val-Pareto schedules']):.3f}"],
          ["searched trials only", f"{d['hv_val']['searched only']:.3f}", "-"],
          ["constant r", f"{d['hv_val']['constant r']:.3f}",
           f"{float(d['hv_test']['constant r']):.3f}"],
          ["constant r + decreasing", f"{d['hv_val']['constant + decreasing']:.3f}",
           f"{float(d['hv_test']['constant + decreasing']):.3f}"]]
    return (f"**{d['trials']} trials in {d['wall_s']:.1f} s** (first trial started to last "
            f"finished). Hypervolume (top-1 % x GFLOPs, reference top-1 {ref['top1']:g} %, "
            f"GFLOPs {ref['gflops']:.4f}):\n\n" + _md(["set", "val", "test"], hv)
            + f"\n\nThe budget table has {c['budgets']} rows but {c['distinct']} distinct "
              f"comparisons (several budgets pick the same pair). In {c['wins']} of them, at "
              f"budgets from {c['lo']:.4f} to {c['hi']:.4f} GFLOPs, the searched schedule beats "
              f"the best baseline on test by {c['gain_lo']:.1f} to {c['gain_hi']:.1f} points "
              f"with a paired interval that excludes 0. " + ctx.source(file))


@TABLES.register("search-budgets")
def search_budgets(ctx: Ctx, file: str) -> str:
    """One row per distinct (searched, baseline) comparison of the budget table."""
    d = ctx.json(file)
    out, seen = [], set()
    for b in d["budgets"]:
        key = (tuple(b["searched"] or ()), b["baseline"])
        if key in seen:
            continue
        seen.add(key)
        out.append([f"{b['budget']:.4f}", " ".join(map(str, b["searched"] or [])),
                    f"{b['s_gflops']:.4f}", f"{b['s_val']:.1f}", _pct(b["s_test"]), b["baseline"],
                    f"{b['b_gflops']:.4f}", f"{b['b_val']:.1f}", _pct(b["b_test"]),
                    _signed(b["diff"])])
    return (_md(["budget (GFLOPs)", "searched r (picked on val)", "GFLOPs", "val",
                 "test top-1 [95%]", "best baseline (picked on val)", "GFLOPs", "val",
                 "test top-1 [95%]", "difference [95% paired]"], out)
            + "\n\nThe first budget of each distinct pair; the file holds every budget. "
            + ctx.source(file))


# --------------------------------------------------------------------------- tasks

def paired_verdict(ref: dict, row: dict) -> str:
    """``not distinguishable here`` unless a 95% interval separates ``row`` from ``ref``."""
    if row["low"] > ref["high"]:
        return "above"
    if row["high"] < ref["low"]:
        return "below"
    if row["diff_low"] > 0:  # reference - this, paired on the same images
        return "below (paired)"
    if row["diff_high"] < 0:
        return "above (paired)"
    return "not distinguishable here"


def paired_rows(rows: list[dict]) -> str:
    """The table of ``benchmarks/paired_table.py`` for one paired-sweep file."""
    ref = rows[0]
    out = []
    for i, row in enumerate(rows):
        cells = [f"`{row['setting']}`" + (" (reference)" if i == 0 else ""),
                 f"{row['top1']:.1f} [{row['low']:.1f}, {row['high']:.1f}]", f"{row['gflops']:.4f}"]
        if i == 0:
            cells += ["-", "-", "-", "-"]
        else:
            cells += [f"{row['only_ref']} / {row['only_this']}", f"{row['mcnemar_p']:.2g}",
                      f"{row['diff']:+.1f} [{row['diff_low']:+.1f}, {row['diff_high']:+.1f}]",
                      paired_verdict(ref, row)]
        out.append(cells)
    n = ", ".join(map(str, sorted({row["n_images"] for row in rows})))
    return (_md(["setting", "top-1 [95% CI]", "GFLOPs",
                 "right only with reference / only with this", "McNemar p",
                 "reference - this [95% paired CI]", "verdict"], out)
            + f"\n\n({n} test images; {ref['model']} on {ref['data']})")


@TABLES.register("paired")
def paired(ctx: Ctx, file: str) -> str:
    """A ``benchmarks/paired_sweep.py --json`` file: each setting against the first."""
    return paired_rows(ctx.jsonl(file)) + " " + ctx.source(file)


def _words(setting: str) -> dict[str, str]:
    return dict(w.partition("=")[::2] for w in setting.split())


def _speeds(ctx: Ctx, files: list[str]) -> dict[tuple[str, str], float]:
    """(model, setting) -> img/s from ``benchmarks/methods_speed.py`` files."""
    return {(row["model"], row["setting"]): row["img_per_s"]
            for f in files for row in ctx.jsonl(f)}


OVER_BUDGET = 0.05  # a row more than 5% above its budget cannot compete at that budget


def _budget(row: dict) -> float | None:
    """The GFLOPs budget a methods-table row was run for (its ``budget``, else the setting's
    ``gflops=``), or None."""
    b = row.get("budget", _words(row["setting"]).get("gflops"))
    return None if b is None else float(b)


def _unreachable(row: dict) -> str | None:
    """Why a row is out of its table's comparison: ``refused`` (the model cannot run the
    method) or ``unreachable`` (its achieved GFLOPs exceed the budget by more than
    :data:`OVER_BUDGET`: integer r, a method's own cost or its bound on r cannot get closer);
    None for a row that competes. A row whose images keep their own token counts (ATS) is
    judged by its mean per-image GFLOPs, not the padded batch's cap."""
    if "refused" in row:
        return "refused: " + row["refused"].split(";")[0]
    b, g = _budget(row), _cost(row)
    if b is not None and g > b * (1 + OVER_BUDGET):
        return f"unreachable: {100 * (g / b - 1):+.1f}% over the budget"
    return None


def _cost(row: dict) -> float:
    """The GFLOPs a methods-table row is held to: the mean per-image count where images keep
    their own token counts, else the (one) count of every image."""
    return row.get("gflops_image_mean", row["gflops"])


def _holm(per_file: list[list[dict]]) -> tuple[list[dict], dict[int, float]]:
    """The paired tests of a methods table (every non-reference row of every file that is
    neither refused nor over budget) and their Holm-adjusted p-values by ``id(row)``: one
    family per table."""
    from tome_lab import stats

    tests = [row for rows in per_file for row in rows[1:] if _unreachable(row) is None]
    return tests, dict(zip(map(id, tests), stats.holm([r["mcnemar_p"] for r in tests]),
                           strict=True))


def _verdict(row: dict, p_holm: float) -> str:
    """A row against the reference at level 0.05 after Holm's adjustment."""
    if p_holm >= 0.05:
        return "not distinguishable here"
    return "reference better" if row["diff"] > 0 else "this better"


# file-name suffix -> way; ``_searched_ats`` (methods_compare.sh m2ca): ATS under way (c)'s
# schedule, kept apart from ``_searched`` only because it ran later
WAYS = {"_own": "(b) own schedule", "_searched": "(c) searched schedule",
        "_searched_ats": "(c) searched schedule", "_tuned": "(a) tuned on val"}


def _way(file: str) -> str:
    stem = Path(file).stem
    return next((w for suffix, w in WAYS.items() if stem.endswith(suffix)), "(a) constant r")


def _label(row: dict) -> str:
    """A methods-table row's method, with its schedule where it is not the way's shared one
    (constant r or the searched list): ``matching=pitome`` (keep_ratio)."""
    from tome_lab import results

    shape = _words(row["setting"]).get("schedule", "constant")
    tail = "" if shape in ("constant", "constant_flops", "list") else f" ({shape})"
    avg = " (avg)" if "gflops_image_mean" in row else ""  # as in methods-compare
    return f"`{results.setting_method(row['setting'])}`{avg}{tail}"


@TABLES.register("methods-summary")
def methods_summary(ctx: Ctx, *files: str) -> str:
    """The headline of the methods comparison: per task, way and budget, how many methods are
    better than, worse than or not distinguishable from bipartite after Holm's adjustment,
    with the best top-1. Files of one task and way form one Holm family, as in their
    ``methods-compare`` table (way from the file name: :data:`WAYS`, else (a)). Files of one
    task and way with the same budget and reference setting (``_searched`` and
    ``_searched_ats``) make one row, the reference's top-1 from the first."""

    groups: dict[tuple[str, str], list[str]] = {}
    for f in files:
        rows = ctx.jsonl(f)
        groups.setdefault((rows[0]["model"], _way(f)), []).append(f)
    out = []
    for (model, way), fs in groups.items():
        per_file = [ctx.jsonl(f) for f in fs]
        _, adjusted = _holm(per_file)
        merged: dict[tuple[float | None, str], list[dict]] = {}
        for rows in per_file:  # the first file's reference row, every file's others
            key = (_budget(rows[0]), rows[0]["setting"])
            merged.setdefault(key, rows[:1]).extend(rows[1:])
        for rows in merged.values():
            ref = rows[0]
            ok = [r for r in rows[1:] if _unreachable(r) is None]
            verdicts = collections.Counter(_verdict(r, adjusted[id(r)]) for r in ok)
            best = max(rows, key=lambda r: r.get("top1", float("-inf")))
            better = [_label(r) for r in ok if _verdict(r, adjusted[id(r)]) == "this better"]
            out.append([model, way, f"{_budget(ref):.4f}" if _budget(ref) else "-",
                        f"{ref['top1']:.1f}", ", ".join(better) or "none",
                        verdicts["reference better"], verdicts["not distinguishable here"],
                        len(rows) - 1 - len(ok),
                        f"{_label(best)} {best['top1']:.1f}"])
    return (_md(["model", "way", "budget (GFLOPs)", "bipartite top-1",
                 "better than bipartite", "worse", "not distinguishable",
                 "refused or unreachable",
                 "highest top-1"], out)
            + "\n\n(Holm over each task and way's table; level 0.05; unreachable: more than "
            f"{100 * OVER_BUDGET:.0f}% over the budget.) " + ctx.source(*files))


def _per_image(row: dict) -> str:
    """A methods-table cell: each image's own GFLOPs, mean [min, max] (``-`` where every image
    keeps the same token count)."""
    if "gflops_image_mean" not in row:
        return "-"
    return (f"{row['gflops_image_mean']:.4f} [{row['gflops_image_min']:.4f}, "
            f"{row['gflops_image_max']:.4f}]")


@TABLES.register("methods-compare")
def methods_compare(ctx: Ctx, *files: str) -> str:
    """``benchmarks/paired_sweep.py --json`` files, one per FLOP budget, each method against the
    first setting (the reference) at that budget, with Holm's adjustment over every comparison
    of the table (the family: all files given). Files named ``*speed*.jsonl``
    (``benchmarks/methods_speed.py``) fill the img/s column instead, matched by model and
    setting. "vs budget" is the achieved GFLOPs against the budget (a row with per-image
    counts, ATS: their mean). A file whose reference is an earlier file's (same model, setting,
    budget and top-1: ``_searched_ats`` after ``_searched``) does not repeat it."""
    import tome_lab
    from tome_lab import results
    from tome_lab.config import ModelConfig
    from tome_lab.models import create_model

    speed_files = [f for f in files if "speed" in Path(f).name]
    files = tuple(f for f in files if f not in speed_files)
    per_file = [ctx.jsonl(f) for f in files]
    tests, adjusted = _holm(per_file)
    specs: dict[str, Any] = {}
    speed = _speeds(ctx, speed_files)
    out, seeds, per_image = [], collections.defaultdict(list), []
    refs: set[tuple] = set()  # (model, setting, budget, top-1) of the references shown
    for rows in per_file:
        ref = rows[0]
        model = ref["model"]
        key = (model, ref["setting"], _budget(ref), ref.get("top1"))
        first = 1 if key in refs else 0  # the same run as an earlier file's reference
        refs.add(key)
        for i, row in enumerate(rows):
            if i < first:
                continue
            w = _words(row["setting"])
            method = results.setting_method(row["setting"])
            shape = w.get("schedule", "constant")
            budget = f"{_budget(row):.4f}" if _budget(row) else "-"
            per_image.append(_per_image(row))
            if "refused" in row:  # the method cannot run on this model: say why
                out.append([budget, f"`{method}`", shape, "-", "-", "-", "-", "-", "-", "-",
                            "-", "refused: " + row["refused"].split(";")[0]])
                continue
            if "r" in row:
                r = row["r"]
            else:  # older files: rebuild the schedule on random weights
                if model not in specs:
                    specs[model] = create_model(ModelConfig(name=model, pretrained=False))
                opts = {k: v for k, v in w.items() if k != "seed"}
                r = tome_lab.tome_state(tome_lab.apply_tome(
                    specs[model], **{k: _number(v) for k, v in opts.items()})).r
            gap = (f"{100 * (_cost(row) / float(budget) - 1):+.1f}%"
                   if budget != "-" else "-")
            ips = speed.get((model, row["setting"]))
            g_val = row.get("val_gflops_image", [None] * len(row.get("tuned_values", [])))
            tried = ("" if "tuned_values" not in row else " (val: " + ", ".join(
                f"{v}{f' ({g:.4f} GFLOPs)' if g is not None else ''} {t:.1f}"
                if t is not None else f"{v} refused" for v, g, t in
                zip(row["tuned_values"], g_val, row["val_top1"], strict=True)) + ")")
            avg = " (avg)" if "gflops_image_mean" in row else ""  # counts differ per image
            cells = [budget, f"`{method}`" + avg + (" (reference)" if i == 0 else "") + tried,
                     shape + (f" r={r[0]}" if len(set(r)) == 1 else
                              " r=" + ",".join(map(str, r))),
                     f"{row['gflops']:.4f}", gap, f"{ips:.0f}" if ips else "-",
                     f"{row['top1']:.1f} [{row['low']:.1f}, {row['high']:.1f}]"]
            if i == 0:
                cells += ["-", "-", "-", "-"]
            elif _unreachable(row):
                cells += [f"{row['diff']:+.1f} [{row['diff_low']:+.1f}, {row['diff_high']:+.1f}]",
                          f"{row['mcnemar_p']:.2g}", "-", _unreachable(row)]
            else:
                p_holm = adjusted[id(row)]
                verdict = _verdict(row, p_holm)
                cells += [f"{row['diff']:+.1f} [{row['diff_low']:+.1f}, {row['diff_high']:+.1f}]",
                          f"{row['mcnemar_p']:.2g}", f"{p_holm:.2g}", verdict]
            out.append(cells)
            if "seed" in w:  # one setting's draws: every word the same but the seed
                same = " ".join(f"{k}={v}" for k, v in w.items() if k != "seed")
                seeds[(budget, same, method.replace(f" seed={w['seed']}", ""))].append(
                    row["top1"])
    spread = "; ".join(f"{m} at {g}: {min(v):.1f} to {max(v):.1f} over {len(v)} seeds"
                       for (g, _, m), v in seeds.items() if len(v) > 1)
    n = ", ".join(map(str, sorted({row["n_images"] for rows in per_file for row in rows
                                   if "n_images" in row})))
    models = ", ".join(dict.fromkeys(f"{rows[0]['model']} on {rows[0]['data']}"
                                     for rows in per_file))
    header = ["budget (GFLOPs)", "method", "schedule", "GFLOPs", "vs budget", "img/s",
              "top-1 [95% CI]", "reference - this [95% paired CI]", "McNemar p", "Holm p",
              "verdict"]
    averaged = ""
    if any(c != "-" for c in per_image):  # a column only where some image count varies
        header.insert(4, "per-image GFLOPs mean [min, max]")
        out = [cells[:4] + [c] + cells[4:] for cells, c in zip(out, per_image, strict=True)]
        averaged = ("; (avg): each image keeps its own token count, so the top-1 and the "
                    "per-image GFLOPs are averages over the images, GFLOPs is the padded "
                    "batch's cap, and vs budget and the 5% rule use the per-image mean")
    return (_md(header, out)
            + f"\n\n({n} test images; {models}; Holm over the "
            f"{len(tests)} comparisons of this table (rows refused or more than "
            f"{100 * OVER_BUDGET:.0f}% over their budget left out)"
            + (f"; stochastic methods' spread: {spread}" if spread else "") + averaged + ") "
            + ctx.source(*files, *speed_files))


def _number(v: str) -> Any:
    for kind in (int, float):
        try:
            return kind(v)
        except ValueError:
            continue
    return {"true": True, "false": False}.get(v.lower(), v)


@TABLES.register("r-sweep")
def r_sweep(ctx: Ctx, file: str) -> str:
    """A ``benchmarks/r_sweep.py --json`` file: top-1 and throughput against r."""
    rows = ctx.jsonl(file)
    ckpts = [k for k, v in rows[0].items() if isinstance(v, dict) and "top1" in v]
    header = ["r", "tokens after the last block", "GFLOPs (ratio)",
              "img/s merged / unmerged (speed-up)"]
    header += [f"{k.replace('_', ' ')} top-1 [95% CI]" for k in ckpts]
    gaps = [k for k in rows[0] if k.startswith("gap_")]
    header += [f"gap ({k[4:].replace('_', ' ')} - {ckpts[0].replace('_', ' ')}) [95% paired CI]"
               for k in gaps]
    out = []
    for row in rows:
        cells = [row["r"], row["tokens_last"],
                 f"{row['gflops']:.4f} ({_x(row['gflops_base'] / row['gflops'])})",
                 f"{row['img_per_s']:.0f} / {row['img_per_s_base']:.0f} ({_x(row['speedup'])})"]
        cells += [f"{row[k]['top1']:.1f} [{row[k]['low']:.1f}, {row[k]['high']:.1f}]"
                  for k in ckpts]
        cells += [f"{row[k]['diff']:+.1f} [{row[k]['low']:+.1f}, {row[k]['high']:+.1f}]"
                  for k in gaps]
        out.append(cells)
    return _md(header, out) + f"\n\n({rows[0]['n']} test images) " + ctx.source(file)


def task_files(root: Path) -> list[str]:
    """Every committed result file of the embedded tasks, sorted."""
    found = {p.relative_to(root).as_posix() for pat in TASK_FILES for p in root.glob(pat)}
    return sorted(found)


def _kind(rows: list[dict]) -> str:
    if rows and "setting" in rows[0]:
        return "paired"
    if rows and "r" in rows[0] and "tokens_last" in rows[0]:
        return "r-sweep"
    return "other"


@TABLES.register("task-index")
def task_index(ctx: Ctx) -> str:
    """Every task result file (``benchmarks/tasks/*.jsonl``, ``benchmarks/*.jsonl``), by glob.

    A new task's files appear here without editing this script.
    """
    out = []
    for rel in task_files(ctx.root):
        rows = ctx.jsonl(rel)
        kind = _kind(rows)
        first = rows[0] if rows else {}
        model = first.get("model", "")
        if kind == "paired":
            what = f"{len(rows) - 1} setting(s) against `{rows[0]['setting']}`"
        elif kind == "r-sweep":
            what = "r = " + ", ".join(str(r["r"]) for r in rows)
        else:
            what = f"{len(rows)} rows"
        n = first.get("n_images", first.get("n", ""))
        out.append([ctx.link(rel, rel.split("/")[-1]), kind, f"`{model}`" if model else "",
                    n, what])
    return _md(["file", "kind", "model", "test images", "what"], out)


@TABLES.register("checkpoints")
def checkpoints(ctx: Ctx, *names: str) -> str:
    """The zoo's trained checkpoints, each from its record ``tome_lab/zoo/<name>.json``."""
    names = names or tuple(sorted(p.stem for p in (ctx.root / "tome_lab/zoo").glob("*.json")))
    out = []
    for name in names:
        rel = f"tome_lab/zoo/{name}.json"
        d = ctx.json(rel)
        cfg = d.get("config", {})
        r = cfg.get("tome", {}).get("r", 0)
        split = d.get("split", "test")
        n = d.get("splits", {}).get(split, "")
        top1 = d.get("top1_r0", d.get("top1"))
        weights = ctx.root / f"tome_lab/zoo/{name}.safetensors"
        size = f"{weights.stat().st_size / 1e6:.1f} MB" if weights.is_file() else "-"
        out.append([f"`{name}`", f"`{d.get('dataset', '')}`", r,
                    "-" if top1 is None else
                    f"{top1:.1f} ({split}, {n:,} images)" if n else f"{top1:.1f} ({split})",
                    f"{d['val_top1']:.1f}" if d.get("val_top1") is not None else "-",
                    f"{d['wall_s'] / 60:.0f} min" if d.get("wall_s") else "-", size,
                    ctx.link(rel)])
    return _md(["checkpoint", "dataset", "r while training", "top-1 at r = 0",
                "val top-1", "training wall", "size", "record"], out)


# --------------------------------------------------------------------------- headlines

@TABLES.register("headlines")
def headlines(ctx: Ctx) -> str:
    """The README's summary: one figure per line, each read from its file."""
    core = {r["setting"]: r for r in ctx.json("benchmarks/core_deit_s_cpu.json")}
    r16 = next(v for k, v in core.items() if "16" in k)
    gpu_file = "benchmarks/gpu/run4/bench_deit_b_eager_floor_gpu.json"
    gpu = {r["setting"]: r for r in ctx.json(gpu_file)}
    g16 = next(v for k, v in gpu.items() if k.endswith("r=16") and "truncate" not in k)
    mk = ctx.json("benchmarks/merge_kernels_cpu.json")["rows"]
    search = ctx.json("benchmarks/search_bench144.json")
    c = search_comparisons(search)
    sched = ctx.jsonl("benchmarks/tasks/clutter_r19_schedule.jsonl")
    lin = next(r for r in sched if r["setting"].startswith("schedule=linear"))
    audio = {r["r"]: r for r in ctx.jsonl("benchmarks/audio_r_sweep.jsonl")}
    a0, a16 = audio[0]["off_the_shelf"], audio[16]
    rows = [
        ["DeiT-S r=16, batch 32, 2-core CPU, fp32",
         f"{_x(r16['speedup'])} img/s of timm for {_x(r16['flop_ratio'])} fewer FLOPs",
         ctx.link("benchmarks/core_deit_s_cpu.json")],
        ["DeiT-B r=16, batch 256, H100, bf16, eager",
         f"{_x(g16['speedup'])} img/s of timm for {_x(g16['flop_ratio'])} fewer FLOPs",
         ctx.link(gpu_file)],
        ["one merge, row copies vs the paper's gather/scatter (DeiT-S sizes)",
         " and ".join(f"{_x(r['ratio'], 1)} at batch {r['batch']}" for r in mk),
         ctx.link("benchmarks/merge_kernels_cpu.json")],
        ["per-layer schedule search, `vit_digits`",
         f"beats constant/decreasing r in {c['wins']} of {c['distinct']} budget comparisons "
         f"(test, paired 95%)", ctx.link("benchmarks/search_bench144.json")],
        ["decreasing schedule vs constant r = 19, `vit_clutter`, equal GFLOPs",
         f"{-lin['diff']:+.1f} points top-1 [{-lin['diff_high']:+.1f}, {-lin['diff_low']:+.1f}] "
         f"(paired 95%)",
         ctx.link("benchmarks/tasks/clutter_r19_schedule.jsonl")],
        ["spectrogram ViT off the shelf, r = 16",
         f"top-1 {a16['off_the_shelf']['top1']:.1f} vs {a0['top1']:.1f} unmerged at "
         f"{_x(a16['speedup'])} img/s", ctx.link("benchmarks/audio_r_sweep.jsonl")],
    ]
    return _md(["result", "figure", "data"], rows)


# --------------------------------------------------------------------------- the driver

def _call(name: str, ctx: Ctx, args: str) -> str:
    fn = TABLES.get(name)
    return fn(ctx, *args.split()).rstrip("\n") + "\n"


def pages(root: Path = ROOT) -> list[Path]:
    """The Markdown files that may hold generated blocks."""
    found = {p for pat in PAGES for p in root.glob(pat)}
    return sorted(found)


def blocks(text: str) -> Iterator[re.Match]:
    return BLOCK.finditer(text)


def render(text: str, ctx: Ctx) -> str:
    """``text`` with every generated block rewritten from the files."""
    def sub(m: re.Match) -> str:
        body = _call(m["name"], ctx, m["args"])
        return m.group(1) + body + m.group(5)

    return BLOCK.sub(sub, text)


def stale(root: Path = ROOT) -> list[str]:
    """``page: block`` for each generated block whose committed text differs from the files."""
    out = []
    for page in pages(root):
        text = page.read_text()
        ctx = Ctx(root, page)
        for m in blocks(text):
            if _call(m["name"], ctx, m["args"]) != m["body"]:
                out.append(f"{page.relative_to(root)}: report:{m['name']}{m['args']}")
    return out


def write(root: Path = ROOT) -> list[Path]:
    """Rewrites every page's generated blocks; returns the pages that changed."""
    changed = []
    for page in pages(root):
        text = page.read_text()
        new = render(text, Ctx(root, page))
        if new != text:
            page.write_text(new)
            changed.append(page)
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; exit status 0, 1 when ``--check`` finds a stale block, 2 bad input."""
    ap = argparse.ArgumentParser(prog="python -m tome_lab.report",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true",
                    help="Rewrite nothing; exit 1 and list the blocks that differ from the files.")
    ap.add_argument("--list", action="store_true", help="List the generators and exit.")
    ap.add_argument("--root", default=str(ROOT), help="The repository root.")
    args = ap.parse_args(argv)
    root = Path(args.root)
    if args.list:
        for name in TABLES.names():
            print(f"{name:16s} {(TABLES.get(name).__doc__ or '').splitlines()[0]}")
        return 0
    try:
        if args.check:
            bad = stale(root)
            for b in bad:
                print(f"stale: {b}", file=sys.stderr)
            if bad:
                print("run: python -m tome_lab.report", file=sys.stderr)
            return 1 if bad else 0
        for page in write(root):
            print(f"rewrote {page.relative_to(root)}")
    except (ValueError, FileNotFoundError, KeyError) as err:
        print(f"python -m tome_lab.report: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
