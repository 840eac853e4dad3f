"""The bench's plumbing (not its timings: those are benchmarks, see benchmarks/README.md)."""

from __future__ import annotations

import json

import pytest

from tome_lab import bench
from tome_lab.config import BenchConfig, BenchRunConfig, EvalConfig, ModelConfig

TINY = ["--model", "vit_digits", "--batch-size", "2", "--repeats", "1", "--warmup", "0",
        "--no-progress", "--threads", "1"]


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


def test_compiled_columns_beside_eager():
    """With eval.compile every setting, timm included, is also timed compiled, and its speed-up
    is taken against compiled timm."""
    cfg = BenchRunConfig(model=ModelConfig(name="vit_digits", pretrained=False),
                         eval=EvalConfig(speed_batches=1, speed_warmup=1, threads=1,
                                         compile=True, compile_backend="eager"),
                         bench=BenchConfig(r=(4,), batch_size=2, progress=False))
    rows = bench.run_bench(cfg)
    assert [r["setting"] for r in rows] == ["timm", "bipartite r=4"]
    assert rows[0]["speedup_compiled"] == 1.0 and rows[1]["img_per_s_compiled"] > 0
    assert "compiled" in bench.format_table(rows)


@pytest.mark.full  # two fresh processes
def test_peak_memory_grows_with_the_batch():
    """The CPU probe measures one forward in a fresh process: 8x the batch, more memory."""
    def peak(batch):
        cfg = BenchRunConfig(model=ModelConfig(name="vit_digits", pretrained=False),
                             eval=EvalConfig(threads=1),
                             bench=BenchConfig(r=(0,), batch_size=batch, memory=True))
        return bench._peak_rss_mib(cfg, bench.Setting(None, 0))

    small, big = peak(8), peak(64)
    # vit_digits at batch 64 holds (64, 4, 66, 66) fp32 attention maps (4.3 MB) and wider
    # activations; the smaller batch must need less
    assert 0 <= small < big


@pytest.mark.parametrize("argv,message", [
    (["--matching", "nope"], "unknown matching"), (["--r", "-3"], "bench.r"),
    (["--dtype", "fp8"], "unknown dtype"), (["--model", "no_such_model"], "unknown timm model"),
    (["--tome.r", "8"], "bench.r")])
def test_bench_bad_input_exits_2(argv, message, capsys):
    assert bench.main([*TINY, *argv]) == 2
    assert message in capsys.readouterr().err
