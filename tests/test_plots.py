"""tome_lab.plots on small fabricated results tables: valid non-blank images, plotted values."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tome_lab import plots, results, stats

DEPTH = 6


def _results_table() -> pd.DataFrame:
    """Three matchings x four r, as ``results.load`` lays them out (accuracy in whole images)."""
    rows = []
    drops = {"bipartite": 1, "pruning": 3, "random": 5}
    for m, drop in drops.items():
        for r in (0, 2, 4, 6):
            correct = 980 - drop * r * r // 2
            rows.append({"sweep": "matching", "name": f"matching={m}__r={r}", "status": "ok",
                         "tome.matching": m, "tome.r": r, "gflops": 0.128 - 0.011 * r,
                         "gflops_base": 0.128, "top1": correct / 10, "n_images": 1000,
                         "img_per_s": 400.0 + 30 * r + drop,
                         "tokens": tuple(max(3, 66 - r * (i + 1)) for i in range(DEPTH))})
    rows.append({"sweep": "matching", "name": "broken", "status": "failed",
                 "tome.matching": "greedy", "tome.r": 4})
    return pd.DataFrame(rows)


def _search_table(n: int = 24) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(n):
        s = rng.integers(0, 6, DEPTH)
        rows.append({"method": "search", "schedule": tuple(int(v) for v in s),
                     "gflops": round(0.128 - 0.002 * s.sum(), 6),
                     "top1": int(980 - (s ** 2).sum() // 3 + rng.integers(-3, 4)) / 10,
                     "n_images": 1000})
    for r in range(0, 6):
        rows.append({"method": "constant", "schedule": (r,) * DEPTH,
                     "gflops": round(0.128 - 0.002 * DEPTH * r, 6), "top1": (980 - 3 * r) / 10,
                     "n_images": 1000})
    return pd.DataFrame(rows)


def _assert_image(path, min_ink: float = 0.02) -> np.ndarray:
    with Image.open(path) as im:
        im.verify()  # a valid PNG
    with Image.open(path) as im:
        px = np.asarray(im.convert("RGB"), dtype=float)
    assert px.shape[0] > 100 and px.shape[1] > 100
    ink = (np.abs(px - 255).sum(-1) > 30).mean()  # share of pixels that are not white
    assert ink > min_ink, f"{path} looks blank ({ink:.3%} ink)"
    assert len(np.unique(px.reshape(-1, 3), axis=0)) > 20  # more than a frame and text
    return px


def _brute_front(df, x, y):
    keep = []
    for _, a in df.iterrows():
        dominated = any(b[x] <= a[x] and b[y] >= a[y] and (b[x] < a[x] or b[y] > a[y])
                        for _, b in df.iterrows())
        keep.append(not dominated)
    return df[keep].sort_values(x)


def _line(ax, name):
    found = [ln for ln in ax.lines if ln.get_label() == name]
    assert found, f"no line {name!r}: {[ln.get_label() for ln in ax.lines]}"
    return found[0]


def test_tradeoff_writes_an_image_with_the_front_and_wilson_bars(tmp_path):
    df = _results_table()
    fig = plots.tradeoff(df, x="gflops", y="top1", hue="tome.matching")
    ax = fig.axes[0]
    ok = df[df.status == "ok"]
    front = _brute_front(ok, "gflops", "top1")
    step = _line(ax, "Pareto front")
    np.testing.assert_allclose(step.get_xdata(), front.gflops)
    np.testing.assert_allclose(step.get_ydata(), front.top1)
    assert step.get_drawstyle() == "steps-post"
    # error bars of the bipartite group equal the Wilson interval of its counts
    bip = ok[ok["tome.matching"] == "bipartite"]
    container = next(c for c in ax.containers if c.get_label() == "tome.matching = bipartite")
    segs = container.lines[2][0].get_segments()
    for seg, (_, row) in zip(segs, bip.iterrows(), strict=True):
        ci = stats.wilson_percent(row.top1, 1000)
        assert seg[0][1] == pytest.approx(ci.low) and seg[1][1] == pytest.approx(ci.high)
    # the unmerged model (r = 0 rows) is starred
    star = next(c for c in ax.collections if c.get_label() == "unmerged")
    assert len(star.get_offsets()) == 3
    assert "GFLOPs" in ax.get_xlabel() and "%" in ax.get_ylabel()
    _assert_image(plots.save(fig, tmp_path / "tradeoff.png", command="make it"))


def test_speed_axis_front_prefers_more_images_per_second(tmp_path):
    df = _results_table()
    fig = plots.tradeoff(df, x="img_per_s", y="top1", hue=None, intervals=False)
    ok = df[df.status == "ok"]
    neg = ok.assign(cost=-ok.img_per_s)
    front = _brute_front(neg, "cost", "top1").sort_values("img_per_s")
    step = _line(fig.axes[0], "Pareto front")
    np.testing.assert_allclose(step.get_xdata(), front.img_per_s)
    assert fig.axes[0].get_xlabel() == "throughput (img/s)"
    _assert_image(plots.save(fig, tmp_path / "speed.png"))


def test_search_vs_baselines(tmp_path):
    df = _search_table()
    fig = plots.search_vs_baselines(df)
    ax = fig.axes[0]
    searched = df[df.method == "search"]
    step = _line(ax, "search: Pareto front")
    np.testing.assert_allclose(step.get_xdata(), _brute_front(searched, "gflops", "top1").gflops)
    const = next(c for c in ax.containers if c.get_label() == "constant")
    np.testing.assert_allclose(const.lines[0].get_xdata(),
                               np.sort(df[df.method == "constant"].gflops))
    _assert_image(plots.save(fig, tmp_path / "search.png"))


def test_r_heatmap_rows_are_the_front_sorted_by_gflops(tmp_path):
    df = _search_table()
    fig = plots.r_heatmap(df)
    mesh = fig.axes[0].collections[0]
    front = _brute_front(df, "gflops", "top1")
    expected = np.array([list(s) for s in front.schedule])
    np.testing.assert_array_equal(np.asarray(mesh.get_array()).reshape(expected.shape),
                                  expected)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels[0].startswith(f"{front.gflops.iloc[0]:.4g} GFLOPs")
    _assert_image(plots.save(fig, tmp_path / "heatmap.png"))
    every = plots.r_heatmap(df, pareto_only=False)
    assert np.asarray(every.axes[0].collections[0].get_array()).size == len(df) * DEPTH


def test_r_heatmap_rejects_ragged_or_scalar_schedules():
    df = _search_table(4)
    ragged = df.assign(schedule=[(1, 2)] + list(df.schedule[1:]))
    with pytest.raises(ValueError, match="different depths"):
        plots.r_heatmap(ragged, pareto_only=False)
    with pytest.raises(ValueError, match="per-layer list"):
        plots.r_heatmap(df.assign(schedule=4), pareto_only=False)


def test_tokens_per_layer(tmp_path):
    df = _results_table()
    df = df[(df.status == "ok") & (df["tome.matching"] == "bipartite")]
    fig = plots.tokens_per_layer(df)
    for (_, row) in df.iterrows():
        line = _line(fig.axes[0], row["name"])
        np.testing.assert_array_equal(line.get_ydata(), row.tokens)
        np.testing.assert_array_equal(line.get_xdata(), np.arange(1, DEPTH + 1))
    _assert_image(plots.save(fig, tmp_path / "tokens.png"))


def test_ablation_points_in_the_given_order(tmp_path):
    df = _results_table()
    df = df[(df.status == "ok") & (df["tome.r"] == 4)]
    order = ["random", "bipartite", "pruning"]
    fig = plots.ablation(df, x="tome.matching", order=order)
    ax = fig.axes[0]
    xs = ax.containers[0].lines[0].get_xdata()
    np.testing.assert_allclose(xs, df.set_index("tome.matching").loc[order, "top1"])
    assert [t.get_text() for t in ax.get_yticklabels()] == order
    _assert_image(plots.save(fig, tmp_path / "ablation.png"))
    with pytest.raises(ValueError, match="not in the table"):
        plots.ablation(df, x="tome.matching", order=["kmeans"])


def test_save_records_the_command_in_png_and_pdf(tmp_path):
    fig = plots.tradeoff(_results_table())
    png = plots.save(fig, tmp_path / "a.png", command="python -m tome_lab.plots runs/x")
    with Image.open(png) as im:
        assert im.text["Description"] == "python -m tome_lab.plots runs/x"
        assert im.text["Software"] == "tome_lab.plots"
    pdf = plots.save(fig, tmp_path / "a.pdf", command="python -m tome_lab.plots runs/x")
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF") and b"python -m tome_lab.plots runs/x" in data
    with pytest.raises(ValueError, match=r"\.png, \.pdf"):
        plots.save(fig, tmp_path / "a.jpg")


def test_missing_column_names_the_columns_there_are():
    with pytest.raises(KeyError, match="no column 'gflop'.*top1"):
        plots.tradeoff(_results_table(), x="gflop")
    with pytest.raises(ValueError, match="empty"):
        plots.tradeoff(_results_table().iloc[:0])


def _write_store(folder):
    """A results store as the ablation runner writes it (one folder per point)."""
    for i, row in _results_table().iterrows():
        if row.status != "ok":
            continue
        record = {"schema": 1, "status": "ok", "key": f"k{i}", "name": row["name"],
                  "config": {"tome": {"matching": row["tome.matching"], "r": int(row["tome.r"])}},
                  "metrics": {k: (list(row[k]) if k == "tokens" else row[k]) for k in
                              ("top1", "n_images", "gflops", "gflops_base", "img_per_s",
                               "tokens")},
                  "env": {}, "finished": f"2026-01-01T00:00:{i:02d}"}
        results.write_json_atomic(folder / f"{row['name']}-k{i}" / results.RESULT, record)


def test_command_line_from_a_results_folder(tmp_path, capsys):
    _write_store(tmp_path / "runs" / "matching")
    out = tmp_path / "m.png"
    argv = [str(tmp_path / "runs" / "matching"), "--x", "gflops", "--y", "top1", "--hue",
            "tome.matching", "-o", str(out)]
    assert plots.main(argv) == 0
    _assert_image(out)
    with Image.open(out) as im:
        assert im.text["Description"].startswith("python -m tome_lab.plots ")
        assert "--hue tome.matching" in im.text["Description"]
    assert plots.main([str(tmp_path / "runs"), "--preset", "tokens", "-o",
                       str(tmp_path / "t.pdf")]) == 0
    assert (tmp_path / "t.pdf").read_bytes().startswith(b"%PDF")


def test_command_line_heatmap_preset_from_a_json_table(tmp_path):
    table = tmp_path / "search.json"
    table.write_text(json.dumps(_search_table().to_dict("records"), default=list))
    assert plots.main([str(table), "--preset", "heatmap", "-o", str(tmp_path / "h.png")]) == 0
    _assert_image(tmp_path / "h.png")
    assert plots.main([str(table), "--preset", "search", "-o", str(tmp_path / "s.png")]) == 0


@pytest.mark.parametrize("argv, message", [
    (["{runs}", "--x", "gflop", "-o", "{out}"], "no column 'gflop'"),
    (["{tmp}/nowhere", "-o", "{out}"], "no such results folder"),
    (["{runs}", "--preset", "tokens", "--x", "gflops", "-o", "{out}"], "takes no --x"),
    (["{runs}"], "-o OUTPUT"),
    (["{runs}", "-o", "{tmp}/x.jpg"], ".png, .pdf"),
    (["{runs}", "--preset", "nonsense", "-o", "{out}"], "invalid choice"),
])
def test_command_line_bad_input_exits_2(tmp_path, capsys, argv, message):
    _write_store(tmp_path / "runs")
    argv = [a.format(runs=tmp_path / "runs", out=tmp_path / "o.png", tmp=tmp_path)
            for a in argv]
    assert plots.main(argv) == 2
    assert message in capsys.readouterr().err


def test_list_presets(capsys):
    assert plots.main(["--list-presets"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in plots.PRESETS)


def test_search_family_from_a_baseline_label_column():
    df = _search_table()
    labels = [None if m == "search" else f"{m} r={s[0]}" for m, s in zip(df.method, df.schedule,
                                                                          strict=True)]
    fig = plots.search_vs_baselines(df.drop(columns="method").assign(baseline=labels))
    names = {c.get_label() for c in fig.axes[0].containers}
    assert names == {"constant", f"search ({(df.method == 'search').sum()} schedules)"}


def test_command_line_heatmap_of_an_explicit_list_column(tmp_path):
    df = _search_table().rename(columns={"schedule": "tome.r"})
    table = tmp_path / "lists.json"
    table.write_text(json.dumps(df.to_dict("records"), default=list))
    out = tmp_path / "h.png"
    assert plots.main([str(table), "--preset", "heatmap", "--schedule", "tome.r", "--all",
                       "-o", str(out)]) == 0
    _assert_image(out)
    assert plots.main([str(table), "--preset", "pareto", "--schedule", "tome.r", "-o",
                       str(out)]) == 2


def test_one_line_per_method_from_paired_sweep_files_with_a_query(tmp_path, capsys):
    """Paired-sweep rows get a ``method`` column (the setting without its schedule words);
    ``--lines`` joins each method's points in order of GFLOPs; ``--query`` filters rows."""
    rows = []
    for g, acc in ((0.08, (85.0, 66.0, 50.0)), (0.11, (92.0, 90.0, 60.0))):
        for m, a in zip(("matching=bipartite", "matching=atc linkage=average",
                         "matching=random seed=1"), acc, strict=True):
            rows.append({"setting": f"{m} schedule=constant_flops gflops={g}", "top1": a,
                         "gflops": g, "n_images": 1000})
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[::-1]))  # x out of order
    df = plots.read_table([str(path)])
    assert sorted(set(df["method"])) == ["matching=atc linkage=average", "matching=bipartite",
                                         "matching=random seed=1"]
    fig = plots.tradeoff(df.query("not method.str.contains('seed')", engine="python"),
                         hue="method", lines=True, frontier=False)
    drawn = {c.get_label(): c.lines[0] for c in fig.axes[0].containers}  # errorbar's data line
    assert sorted(drawn) == ["method = matching=atc linkage=average",
                             "method = matching=bipartite"]
    for ln in drawn.values():  # each method a line through its two budgets, in GFLOPs order
        assert list(ln.get_xdata()) == [0.08, 0.11] and ln.get_linestyle() == "-"
    assert list(drawn["method = matching=bipartite"].get_ydata()) == [85.0, 92.0]
    out = tmp_path / "m.png"
    assert plots.main([str(path), "--hue", "method", "--lines", "--query",
                       "not method.str.contains('seed')", "-o", str(out)]) == 0
    assert out.exists()
    assert plots.main([str(path), "--query", "nonsense ==", "-o", str(out)]) == 2
    assert "--query 'nonsense ==' failed" in capsys.readouterr().err
    assert results.setting_method("matching=atc linkage=single schedule=stages gflops=0.1 "
                                  "keep_rate=0.7 at=[3,6]") == "matching=atc linkage=single"
