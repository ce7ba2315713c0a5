"""`attn-export bench`: percentiles and throughput per runtime and batch next to PyTorch eager, bench.json, what is
absent skipped with a reason, and bad input as one line (exit 2) with nothing written."""

from __future__ import annotations

import json
import sys

import pytest

from attn_export import bench

from helpers import SMALL, assert_one_line_error, run


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "out"
    assert run(SMALL, "-o", out).exit_code == 0
    return out


def test_bench_prints_percentiles_and_writes_bench_json(exported, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    result = run("bench", exported, "--batch", "1", "--batch", "3", "--iters", "4", "--warmup", "1")
    assert result.exit_code == 0, result.output
    assert "p50 ms" in result.output and "p99 ms" in result.output and "samples/s" in result.output
    data = json.loads((exported / "bench.json").read_text())
    assert data["model"] == SMALL and data["iters"] == 4 and data["precision"] == "fp32"
    timed = {(r["runtime"], r["batch"]): r for r in data["rows"] if r["status"] == "ok"}
    assert set(timed) == {("pytorch-cpu", 1), ("onnxruntime-cpu", 1), ("pytorch-cpu", 3), ("onnxruntime-cpu", 3)}
    for (_, batch), row in timed.items():
        assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
        assert row["throughput"] == pytest.approx(batch * 1e3 / row["mean_ms"])
        eager = timed[("pytorch-cpu", batch)]["p50_ms"]
        assert row["vs_eager"] == pytest.approx(eager / row["p50_ms"])
    skipped = {r["runtime"]: r["reason"] for r in data["rows"] if r["status"] == "skipped"}
    assert "no model.engine" in skipped["tensorrt"]
    assert all(reason for reason in skipped.values())
    for runtime, reason in skipped.items():
        assert reason in result.output, runtime


def test_runtime_selection_and_an_fp16_export(tmp_path):
    out = tmp_path / "out"
    assert run(SMALL, "-o", out, "--dtype", "fp16", "--no-check").exit_code == 0
    (out / "report.json").unlink(missing_ok=True)  # no report: shapes and model come from the flags and the file
    result = run("bench", out, "--runtime", "ort", "--iters", "2", "--warmup", "0")
    assert_one_line_error(result, 2, "no size for the dynamic axes [0, 1] of input 'tokens'")
    assert not (out / "bench.json").exists()
    assert run(SMALL, "-o", out, "--dtype", "fp16").exit_code == 0
    result = run("bench", out, "--runtime", "ort", "--iters", "2", "--warmup", "0")
    assert result.exit_code == 0, result.output
    data = json.loads((out / "bench.json").read_text())
    assert data["precision"] == "fp16"
    assert {r["runtime"] for r in data["rows"]} == {"onnxruntime-cpu", "onnxruntime-cuda", "onnxruntime-trt"}


@pytest.mark.parametrize("args, fragment", [
    (["--runtime", "tf"], "--runtime tf is not one of ort, trt, torch"),
    (["--batch", "0"], "--batch 0 must be at least 1"),
    (["--iters", "0"], "--iters 0 must be at least 1"),
    (["--onnx", "model.int8.onnx"], "model.int8.onnx does not exist"),
])
def test_bad_bench_input(exported, args, fragment):
    before = (exported / "bench.json").read_text() if (exported / "bench.json").exists() else None
    assert_one_line_error(run("bench", exported, *args), 2, fragment)
    after = (exported / "bench.json").read_text() if (exported / "bench.json").exists() else None
    assert before == after


def test_static_batch_and_missing_folder(tmp_path):
    assert_one_line_error(run("bench", tmp_path / "nowhere"), 2, "is not a folder")
    assert run(SMALL, "-o", tmp_path / "out", "--static-batch").exit_code == 0
    assert_one_line_error(run("bench", tmp_path / "out", "--batch", "2"), 2,
                          "model.onnx has a static batch of 1 (input 'tokens'); --batch 2 cannot run it")
    assert not (tmp_path / "out" / "bench.json").exists()


def test_percentiles():
    stats = bench.percentiles([0.001 * i for i in range(1, 101)])
    assert stats["p50_ms"] == pytest.approx(50.5) and stats["p90_ms"] == pytest.approx(90.1)
    assert stats["p99_ms"] == pytest.approx(99.01) and stats["mean_ms"] == pytest.approx(50.5)
