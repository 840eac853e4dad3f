"""The bench's plumbing (not its timings: those are benchmarks, see benchmarks/README.md)."""

from __future__ import annotations

import json

import pytest

from tome_lab import bench


def test_bench_rows_and_outputs(tmp_path, capsys):
    out = tmp_path / "rows.json"
    csv = tmp_path / "rows.csv"
    rc = bench.main(["--model", "deit_tiny_patch16_224", "--r", "0,16", "--batch-size", "2",
                     "--repeats", "1", "--warmup", "0", "--no-progress", "--json", str(out),
                     "--csv", str(csv), "--threads", "2"])
    assert rc == 0
    rows = json.loads(out.read_text())
    assert [r["setting"] for r in rows] == ["timm", "bipartite r=0", "bipartite r=16"]
    assert rows[0]["speedup"] == 1.0 and rows[0]["flop_ratio"] == 1.0
    assert rows[2]["gflops"] == pytest.approx(0.627, abs=0.01)
    assert rows[2]["flop_ratio"] > 1.9
    assert csv.read_text().startswith("model,setting")
    assert "bipartite r=16" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--matching", "nope"], ["--r", "-3"], ["--dtype", "fp8"],
                                  ["--model", "no_such_model"]])
def test_bench_bad_input_exits_2(argv):
    with pytest.raises(SystemExit) as e:
        raise SystemExit(bench.main(argv + ["--repeats", "1", "--no-progress"]))
    assert e.value.code == 2
