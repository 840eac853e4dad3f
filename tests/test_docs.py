"""The docs against the code and the data: generated tables, fenced shell commands, the site.

- Every ``<!-- report:NAME -->`` block of README.md and docs/*.md equals what
  ``python -m tome_lab.report`` writes from the committed files.
- Every command of every fenced ``bash`` block parses: ``python -m tome_lab.<cmd>`` through that
  command's own parser, in this process; scripts exist and take the flags given; ``make``
  targets exist; the paths a command names exist. A block after ``<!-- recorded -->`` records
  how a committed result was made: its output files must exist too.
- The full tier runs the unrecorded commands with ``--print_config`` / ``--help`` in a fresh
  process and builds the site with ``mkdocs build --strict``.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

from tome_lab import report

ROOT = Path(__file__).resolve().parent.parent
# benchmarks/tasks/*.md: task write-ups the docs include (docs/hooks/repo_files.py)
PAGES = sorted({ROOT / "README.md", *ROOT.glob("docs/*.md"), *ROOT.glob("benchmarks/tasks/*.md")})
FENCE = re.compile(r"^```(bash|sh|shell)\s*\n(.*?)^```", re.S | re.M)
RECORDED = re.compile(r"<!-- recorded -->\s*$")
# Flags whose value is a file the command writes: not there before an unrecorded run.
OUTPUT_FLAGS = {"--json", "--csv", "--output", "--out", "-o", "--train.output", "--bench.json",
                "--bench.csv", "--name", "--search.name", "--search.out"}
EXTERNAL = {"pip", "optuna-dashboard", "mkdocs", "apt-get", "brew"}
PYTHONS = {"python", "python3", ".venv/bin/python"}


@dataclass(frozen=True)
class Command:
    page: str
    line: int
    argv: tuple[str, ...]
    recorded: bool

    def __str__(self) -> str:
        return f"{self.page}:{self.line}"


def commands() -> list[Command]:
    """Every command of every fenced shell block of the README and the docs."""
    out = []
    for page in PAGES:
        text = page.read_text()
        for m in FENCE.finditer(text):
            recorded = bool(RECORDED.search(text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1]))
            first = text[:m.start(2)].count("\n") + 1
            joined, start = "", first
            for i, line in enumerate(m[2].splitlines()):
                if not joined:
                    start = first + i
                joined += line[:-1] + " " if line.endswith("\\") else line
                if line.endswith("\\"):
                    continue
                argv = shlex.split(joined, comments=True)
                joined = ""
                if argv:
                    out.append(Command(page.relative_to(ROOT).as_posix(), start, tuple(argv),
                                       recorded))
    return out


COMMANDS = commands()


def _strip(argv: tuple[str, ...]) -> list[str]:
    """Drops environment assignments, ``sudo`` and ``timeout N`` in front of a command."""
    args = list(argv)
    while args and (re.match(r"^[A-Z_]+=", args[0]) or args[0] == "sudo"):
        args.pop(0)
    if args and args[0] == "timeout":
        args = args[2:]
    return args


def _is_placeholder(value: str) -> bool:
    return ("<" in value or value.startswith(("runs/", "/", "~", "$", "http"))
            or value in ("...",))


def _named_paths(args: list[str], recorded: bool) -> list[str]:
    """The repository paths a command names (outputs too when it is recorded)."""
    paths = []
    for i, a in enumerate(args):
        value = a.split("=", 1)[1] if re.match(r"^[\w.]+=", a) else a
        if a.startswith("-") or "/" not in value or _is_placeholder(value):
            continue
        if not recorded and i > 0 and args[i - 1] in OUTPUT_FLAGS:
            continue
        paths.append(value)
    return paths


def _config_free(args: list[str]) -> list[str]:
    """``--config PLACEHOLDER`` pairs removed (a sweep point's config.yaml is not committed)."""
    out, skip = [], False
    for i, a in enumerate(args):
        if skip:
            skip = False
            continue
        if a == "--config" and i + 1 < len(args) and _is_placeholder(args[i + 1]):
            skip = True
            continue
        out.append(a)
    return out


@cache
def _parsers() -> dict:
    from tome_lab import bench, evaluate, search, train
    from tome_lab.config import BenchRunConfig, ExperimentConfig, TrainRunConfig

    sp, saliases = search.build_parser()
    return {"evaluate": (evaluate.build_parser(), ExperimentConfig, evaluate.ALIASES),
            "train": (train.build_parser(), TrainRunConfig, train.ALIASES),
            "bench": (bench.build_parser(), BenchRunConfig, bench.ALIASES),
            "search": (sp, search.SearchRunConfig, saliases)}


def _parse_module(module: str, args: list[str]) -> None:
    """Parses a ``python -m tome_lab.<module>`` command line in this process, as the command
    does before it runs anything; fails on any flag or value the command would refuse."""
    from tome_lab import ablate, cli

    args = _config_free(args)
    try:
        if module in _parsers():
            parser, cls, aliases = _parsers()[module]
            _, ns = cli.parse(parser, cls, args, aliases)
            if module == "search":
                cli.launch_config(ns)
        elif module == "ablate":
            ns = ablate.build_parser().parse_args(args)
            ablate.expand(list(ns.sweep) + list(ns.words), ablate._base_dict(ns))
            cli.launch_config(ns)
        elif module == "plots":
            from tome_lab import plots

            plots._parser().parse_args(args)
        else:  # argparse built inside main (launch, report, tasks.*): the flags it defines
            path = ROOT / "tome_lab" / module.replace(".", "/")
            _flags_in_source(path if path.is_dir() else path.with_suffix(".py"), args)
    except (ValueError, cli.UsageError) as err:
        pytest.fail(f"python -m tome_lab.{module} {shlex.join(args)}: {err}")
    except SystemExit as exc:
        if exc.code not in (0, None) or not {"--help", "--print_config"} & set(args):
            pytest.fail(f"python -m tome_lab.{module} {shlex.join(args)}: exit {exc.code}")


def _flags_in_source(path: Path, args: list[str]) -> None:
    """Every ``--flag`` given to a script is defined in its source (a package: its modules)."""
    files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
    source = "\n".join(f.read_text() for f in files)
    for a in args:
        if a.startswith("--"):
            flag = a.split("=", 1)[0]
            assert re.search(rf"""["']{re.escape(flag)}["']""", source), \
                f"{path.relative_to(ROOT)} defines no {flag}"


def _make_targets() -> set[str]:
    return set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))


def check(cmd: Command) -> None:
    """Fails when a documented command would not parse or names a missing file."""
    args = _strip(cmd.argv)
    prog = args[0]
    for p in _named_paths(args[1:], cmd.recorded):
        assert glob.glob(str(ROOT / p)), f"{cmd}: {p} does not exist"
    if prog in PYTHONS:
        if args[1] == "-m":
            module = args[2]
            assert module.startswith("tome_lab."), f"{cmd}: not a tome_lab command: {module}"
            _parse_module(module.removeprefix("tome_lab."), args[3:])
        else:
            script = ROOT / args[1]
            assert script.is_file(), f"{cmd}: no script {args[1]}"
            _flags_in_source(script, args[2:])
    elif prog == "bash" or prog.endswith(".sh"):
        script = ROOT / (args[1] if prog == "bash" else prog)
        assert script.is_file(), f"{cmd}: no script {script.relative_to(ROOT)}"
    elif prog == "make":
        missing = set(args[1:]) - _make_targets()
        assert not missing, f"{cmd}: the Makefile has no target {sorted(missing)}"
    else:
        assert prog in EXTERNAL, f"{cmd}: unknown program {prog!r}"


# --------------------------------------------------------------------------- generated tables

def test_generated_tables_match_the_committed_files():
    stale = report.stale(ROOT)
    assert not stale, ("tables differ from the data files; run python -m tome_lab.report:\n"
                       + "\n".join(stale))


def test_every_page_with_figures_has_generated_blocks():
    """The benchmarks page and the README carry generated tables, not hand-typed ones."""
    for page in ("README.md", "docs/benchmarks.md", "docs/tasks.md", "docs/search.md"):
        assert "<!-- report:" in (ROOT / page).read_text(), page


def test_a_changed_figure_is_caught(tmp_path):
    for d in ("benchmarks", "tome_lab", "tests"):
        (tmp_path / d).symlink_to(ROOT / d)
    (tmp_path / "docs").mkdir()
    page = tmp_path / "docs" / "x.md"
    page.write_text("<!-- report:bench benchmarks/core_deit_s_cpu.json -->\n"
                    "<!-- /report:bench -->\n")
    assert report.stale(tmp_path)  # empty block: stale
    report.write(tmp_path)
    assert not report.stale(tmp_path)
    text = page.read_text()
    assert "| 1.99x |" in text  # DeiT-S r=16 in core_deit_s_cpu.json
    page.write_text(text.replace("| 1.99x |", "| 2.10x |"))
    assert report.stale(tmp_path) == ["docs/x.md: report:bench benchmarks/core_deit_s_cpu.json"]


def test_a_missing_data_file_fails(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such.json"):
        report.TABLES.get("bench")(report.Ctx(ROOT, ROOT / "docs" / "x.md"),
                                   "benchmarks/no_such.json")


def test_search_counts_distinct_comparisons():
    """Budgets that pick the same (searched, baseline) pair are one comparison (the issue's
    example: 22 budget rows of the first benchmark were 17 distinct comparisons)."""

    def row(budget, searched, baseline, low, est=0.05):
        return {"budget": budget, "searched": searched, "baseline": baseline,
                "diff": None if low is None else {"low": low, "estimate": est}}

    d = {"budgets": [row(0.03, [4, 2], "constant r=4", 0.01),
                     row(0.04, [4, 2], "constant r=4", 0.01),   # the same pair again
                     row(0.05, [3, 1], "constant r=4", 0.02, 0.08),
                     row(0.06, [3, 1], "decreasing r=2", -0.01),  # a tie: not a win
                     row(0.07, [2, 0], "constant r=2", None)]}  # nothing to compare
    c = report.search_comparisons(d)
    assert (c["budgets"], c["distinct"], c["wins"]) == (5, 3, 2)
    assert (c["lo"], c["hi"]) == (0.03, 0.05)
    assert (c["gain_lo"], c["gain_hi"]) == pytest.approx((5.0, 8.0))


def test_the_paired_table_script_prints_the_docs_table(capsys, monkeypatch):
    import sys

    spec = importlib.util.spec_from_file_location("paired_table",
                                                  ROOT / "benchmarks" / "paired_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ctx = report.Ctx(ROOT, ROOT / "docs" / "x.md")
    rel = next(r for r in report.task_files(ROOT) if "setting" in (ctx.jsonl(r) or [{}])[0])
    monkeypatch.setattr(sys, "argv", ["paired_table.py", str(ROOT / rel)])
    mod.main()
    assert report.paired_rows(ctx.jsonl(rel)) in capsys.readouterr().out


def test_methods_table_has_one_row_per_matcher():
    from tome_lab.registry import MATCHING

    text = report.methods(report.Ctx(ROOT, ROOT / "docs" / "methods.md"))
    assert len(text.splitlines()) == 2 + len(MATCHING.names())


# --------------------------------------------------------------------------- commands

def test_commands_are_found():
    assert len(COMMANDS) > 30
    assert any(c.recorded for c in COMMANDS) and any(not c.recorded for c in COMMANDS)
    readme = [c for c in COMMANDS if c.page == "README.md"]
    assert any(c.argv[:2] == ("make", "test") for c in readme)


@pytest.mark.parametrize("cmd", COMMANDS, ids=str)
def test_documented_command_parses(cmd):
    check(cmd)


def test_the_check_catches_a_bad_flag_and_a_missing_file():
    bad_flag = Command("x.md", 1, ("python", "-m", "tome_lab.evaluate", "--tome.rr", "4"), False)
    with pytest.raises(pytest.fail.Exception):
        check(bad_flag)
    bad_word = Command("x.md", 1, ("python", "-m", "tome_lab.ablate", "matchin=bipartite"), False)
    with pytest.raises(pytest.fail.Exception):
        check(bad_word)
    missing = Command("x.md", 1, ("python", "benchmarks/r_sweep.py", "--json",
                                  "benchmarks/none.json"), True)
    with pytest.raises(AssertionError, match="does not exist"):
        check(missing)
    script_flag = Command("x.md", 1, ("python", "benchmarks/r_sweep.py", "--no-such"), False)
    with pytest.raises(AssertionError, match="defines no --no-such"):
        check(script_flag)


# --------------------------------------------------------------------------- full tier

def _subprocess_args(cmd: Command) -> list[str] | None:
    args = _strip(cmd.argv)
    if cmd.recorded or args[0] not in PYTHONS or args[1] != "-m":
        return None
    module = args[2].removeprefix("tome_lab.")
    tail = _config_free(args[3:])
    if module in ("evaluate", "train", "bench", "search", "ablate"):
        return [sys.executable, "-m", args[2], *tail, "--print_config"]
    return [sys.executable, "-m", args[2], "--help"]


def _one_per_module() -> list[Command]:
    """The first documented unrecorded command of each ``python -m tome_lab.<module>``: the
    fast tier parses every command with the same parsers; this runs each entry point once."""
    seen: dict[str, Command] = {}
    for c in COMMANDS:
        args = _subprocess_args(c)
        if args:
            seen.setdefault(args[2], c)
    return list(seen.values())


@pytest.mark.full
@pytest.mark.parametrize("cmd", _one_per_module(), ids=str)
def test_documented_command_runs_print_config(cmd):
    proc = subprocess.run(_subprocess_args(cmd), cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


PYTHON_BLOCK = re.compile(r"^```python\s*\n(.*?)^```", re.S | re.M)
TOURS = [(page.relative_to(ROOT).as_posix(), m[1]) for page in PAGES
         for m in PYTHON_BLOCK.finditer(page.read_text())
         if "import " in m[1] and "runs/" not in m[1] and "runs\"" not in m[1]]


def test_self_contained_python_blocks_are_found():
    assert any(page == "README.md" for page, _ in TOURS)


@pytest.mark.full
@pytest.mark.parametrize("page,code", TOURS, ids=[p for p, _ in TOURS])
def test_self_contained_python_block_runs(page, code):
    """The tours (patch a timm model, ...) run as written: random weights, one image."""
    exec(compile(code, page, "exec"), {})


@pytest.mark.full
def test_docs_site_builds_strictly(tmp_path):
    # mkdocs comes with the dev extra: a missing one fails here rather than skipping
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d",
                           str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]


def _methods_row(setting, p=None, diff=None, **extra):
    """One paired-sweep row for the methods report tests; with ``p``, a paired test against
    the reference (a difference ``diff`` with a +-1 interval)."""
    row = {"setting": setting, "model": "m", "data": "d", "n_images": 100, "top1": 90.0,
           "low": 80.0, "high": 95.0, "gflops": 0.08}
    if p is not None:
        row.update(mcnemar_p=p, diff=diff, diff_low=diff - 1, diff_high=diff + 1)
    return {**row, **extra}


def _methods_ctx(tmp_path, **files):
    """Writes each ``name=rows`` as ``<name>.jsonl`` JSON lines; a report context there."""
    import json

    for name, rows in files.items():
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "docs").mkdir(exist_ok=True)
    return report.Ctx(tmp_path, tmp_path / "docs" / "methods.md")


def test_methods_compare_adjusts_over_the_whole_table_and_shows_refusals(tmp_path):
    """Two budgets' files make one Holm family: p = 0.01 and 0.04 and 0.5 become 0.03, 0.08 and
    0.5 (three tests), so only the first is a verdict; a refused method gets its reason. The
    rows carry no r, as files written before rows recorded it: the schedule is rebuilt."""

    def row(setting, p=None, diff=None):
        return _methods_row(setting, p, diff, model="vit_digits", data="mnist5k")

    g = "schedule=constant_flops gflops=0.0854"
    a = [row(f"matching=bipartite {g}"), row(f"matching=greedy {g}", 0.01, 2.0),
         row(f"matching=kmeans {g}", 0.04, -2.0)]
    b = [row(f"matching=bipartite {g}"), row(f"matching=random {g} seed=1", 0.5, 0.5),
         {"setting": f"matching=local_bipartite {g}", "model": "m", "data": "d",
          "refused": "matching 'local_bipartite' reads token grid positions; more"}]
    ctx = _methods_ctx(tmp_path, a=a, b=b)
    table = report.methods_compare(ctx, "a.jsonl", "b.jsonl")
    lines = {ln.split("|")[2].strip(): ln for ln in table.splitlines() if ln.startswith("| 0.")}
    assert "| 0.03 | reference better |" in lines["`matching=greedy`"]
    assert "| 0.08 | not distinguishable here |" in lines["`matching=kmeans`"]
    assert "| 0.5 | not distinguishable here |" in lines["`matching=random seed=1`"]
    assert "refused: matching 'local_bipartite' reads token grid positions |" \
        in lines["`matching=local_bipartite`"]
    assert "Holm over the 3 comparisons" in table


def test_methods_compare_reads_schedules_budgets_and_speeds_from_files(tmp_path):
    """A row's own r list and budget are shown (no schedule rebuilt), the achieved GFLOPs
    against the budget in percent, and img/s from a speed file matched by model and setting."""
    rows = [_methods_row("matching=bipartite schedule=list r=[4,4,2,0]", gflops=0.102,
                         budget=0.1, r=[4, 4, 2, 0]),
            _methods_row("matching=atc schedule=stages gflops=0.1", 0.5, 10.0, gflops=0.095,
                         budget=0.1, r=[0, 6, 0, 0]),
            # 12.5% over its budget
            _methods_row("matching=kmedoids schedule=stages gflops=0.1", 0.001, -9.0,
                         gflops=0.1125, budget=0.1, r=[0, 3, 0, 0])]
    speed = [{"model": "m", "setting": "matching=atc schedule=stages gflops=0.1",
              "img_per_s": 1234.4}]
    ctx = _methods_ctx(tmp_path, x=rows, x_speed=speed)
    table = report.methods_compare(ctx, "x.jsonl", "x_speed.jsonl")
    lines = {ln.split("|")[2].strip(): ln for ln in table.splitlines() if ln.startswith("| 0.")}
    assert "| list r=4,4,2,0 | 0.1020 | +2.0% | - |" in lines["`matching=bipartite` (reference)"]
    assert "| stages r=0,6,0,0 | 0.0950 | -5.0% | 1234 |" in lines["`matching=atc`"]
    assert "x_speed.jsonl" in table
    rows[1].update(tuned_option="linkage", tuned_values=["complete", "single"],
                   val_top1=[81.25, None])
    table = report.methods_compare(_methods_ctx(tmp_path, x=rows), "x.jsonl")
    assert "| `matching=atc` (val: complete 81.2, single refused) |" in table
    # 12.5% over its budget: shown, left out of the Holm family, never a verdict
    assert lines["`matching=kmedoids`"].endswith(
        "| 0.001 | - | unreachable: +12.5% over the budget |")
    assert "Holm over the 1 comparisons" in table


def test_methods_compare_holds_a_padded_row_to_its_per_image_mean(tmp_path):
    """An ATS row (images keep their own token counts) competes on its mean per-image GFLOPs:
    a padded cap 60% over the budget with a per-image mean 1% under it gets a verdict, and the
    val candidates show their per-image GFLOPs."""
    per_image = {"gflops_image_mean": 0.099, "gflops_image_std": 0.01,
                 "gflops_image_min": 0.08, "gflops_image_max": 0.12}
    rows = [_methods_row("matching=bipartite schedule=constant_flops gflops=0.1", budget=0.1,
                         r=[4, 4]),
            _methods_row("matching=ats schedule=list r=[0,9]", 0.001, 5.0, gflops=0.16,
                         budget=0.1, r=[0, 9], **per_image, tuned_option="schedule",
                         tuned_values=["from 1 cap 9"], val_gflops_image=[0.1012],
                         val_top1=[88.0])]
    table = report.methods_compare(_methods_ctx(tmp_path, x=rows), "x.jsonl")
    line = next(ln for ln in table.splitlines() if "matching=ats" in ln)
    assert "(val: from 1 cap 9 (0.1012 GFLOPs) 88.0)" in line
    assert "| 0.1600 | 0.0990 [0.0800, 0.1200] | -1.0% |" in line
    assert line.endswith("| 0.001 | reference better |")


def test_methods_summary_counts_verdicts_per_task_and_way(tmp_path):
    """Per file: better / worse / not distinguishable after Holm within the task and way's
    files (p 0.001 and 0.02 over two tests: 0.002 and 0.02, both below 0.05), and the way read
    from the file name."""
    row = _methods_row
    own = [row("matching=bipartite", budget=0.08),
           row("matching=atc schedule=stages", 0.001, -3.0, top1=93.0, budget=0.08),
           row("matching=kmedoids schedule=stages", 0.02, 2.0, top1=88.0, budget=0.08),
           {"setting": "matching=x", "model": "m", "data": "d", "refused": "no grid"}]
    table = report.methods_summary(_methods_ctx(tmp_path, t_b20_own=own), "t_b20_own.jsonl")
    line = next(ln for ln in table.splitlines() if ln.startswith("| m |"))
    assert line == ("| m | (b) own schedule | 0.0800 | 90.0 | `matching=atc` (stages) | 1 | 0 | "
                    "1 | `matching=atc` (stages) 93.0 |")


def test_searched_ats_files_are_way_c_rows(tmp_path):
    """``_searched_ats`` files (ATS under way (c)'s schedule) are way (c): in the summary they
    join the ``_searched`` file of their budget in one row and one Holm family (p 0.001 and
    0.02 over two tests: 0.002 and 0.02), ATS marked (avg); their table shows ATS's per-image
    GFLOPs, held to the budget by their mean, and the shared reference once."""
    row = _methods_row
    s = "schedule=list r=[4,4]"
    per_image = {"gflops_image_mean": 0.05, "gflops_image_std": 0.01,
                 "gflops_image_min": 0.04, "gflops_image_max": 0.07}
    ref = row(f"matching=bipartite {s}", budget=0.08, r=[4, 4])
    searched = [ref, row(f"matching=evit {s}", 0.02, 2.0, top1=88.0, budget=0.08, r=[4, 4])]
    ats = [ref, row(f"matching=ats {s}", 0.001, -3.0, top1=93.0, budget=0.08, r=[4, 4],
                    **per_image)]
    ctx = _methods_ctx(tmp_path, t_b15_searched=searched, t_b15_searched_ats=ats)
    files = ("t_b15_searched.jsonl", "t_b15_searched_ats.jsonl")
    lines = [ln for ln in report.methods_summary(ctx, *files).splitlines()
             if ln.startswith("| m |")]
    assert lines == ["| m | (c) searched schedule | 0.0800 | 90.0 | `matching=ats` (avg) | 1 | 0 "
                     "| 0 | `matching=ats` (avg) 93.0 |"]
    table = report.methods_compare(ctx, *files)
    assert "per-image GFLOPs mean [min, max]" in table
    assert sum("(reference)" in ln for ln in table.splitlines()) == 1
    line = next(ln for ln in table.splitlines() if "matching=ats" in ln)
    assert line.startswith("| 0.0800 | `matching=ats` (avg) | list r=4 | 0.0800 | "
                           "0.0500 [0.0400, 0.0700] | -37.5% |")
    assert line.endswith("| 0.002 | this better |")


def test_learned_vs_search_groups_by_task_budget_and_method(tmp_path):
    """Two tasks: one row per (task, budget, method), mean +- sd [min, max] over the seeds,
    a missing wall time shown as '-'."""
    def row(task, method, seed, test, wall):
        return {"task": task, "model": f"vit_{task}", "method": method, "budget": "b20",
                "budget_gflops": 0.08, "seed": seed, "gflops": 0.0799, "top1_val": test + 1,
                "top1_test": test, "wall_s": wall}

    rows = [row("dots", "diffrate", 0, 90.0, 100.0), row("dots", "diffrate", 1, 92.0, None),
            row("clutter", "optuna", 0, 80.0, 50.0)]
    ctx = _methods_ctx(tmp_path, cmp=rows)
    text = report.TABLES.get("learned-vs-search")(ctx, "cmp.jsonl")
    lines = [ln for ln in text.splitlines() if ln.startswith("| ") and "---" not in ln][1:]
    assert lines == [
        "| clutter | b20 (0.0800) | Optuna search (bipartite schedules) | 0 | 80.00 +- 0.00 "
        "[80.00, 80.00] | 81.00 +- 0.00 [81.00, 81.00] | 0.0799 | 50 |",
        "| dots | b20 (0.0800) | learned pairs (soft masks) | 0, 1 | 91.00 +- 1.41 "
        "[90.00, 92.00] | 92.00 +- 1.41 [91.00, 93.00] | 0.0799 | 100, - |"]
    assert "vit_clutter on clutter, vit_dots on dots." in text


def test_learned_rate_variants_table(tmp_path):
    import json

    rows = [{"counts": "kept", "tau_end": 1.0, "start": 3.0, "top1_val": 86.6, "gflops": 0.08169,
             "expected_gflops": 0.0824, "repair_steps": 42, "learn_s": 63.3, "pairs": []},
            {"counts": "removed", "tau_end": 0.1, "start": 6.0, "top1_val": 90.0,
             "gflops": 0.08169, "expected_gflops": 0.08213, "repair_steps": 1, "learn_s": 64.7,
             "pairs": []}]
    (tmp_path / "v.json").write_text(json.dumps({"target": 0.0817, "rows": rows}))
    (tmp_path / "docs").mkdir()
    text = report.TABLES.get("learned-rate-variants")(
        report.Ctx(tmp_path, tmp_path / "docs" / "methods.md"), "v.json")
    lines = [ln for ln in text.splitlines() if ln.startswith("| `")]
    assert lines == ["| `kept` | 1 | 3 | 86.6 | 0.0817 | 0.0824 | 42 | 63 |",
                     "| `removed` | 0.1 | 6 | 90.0 | 0.0817 | 0.0821 | 1 | 65 |"]
    assert "Target 0.0817 GFLOPs." in text
