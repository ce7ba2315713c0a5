"""Dry runs of scripts/gpu-check.sh on this CPU machine: a stub nvidia-smi, stub compute-sanitizers (one that
reports "device not supported", as under a GPU sandbox, and ones that run their target and report no error
or one), and stand-in tests and a simulated benchmark
prove the control flow the one GPU lease depends on: the time budget, results kept as they happen
(JSON lines even when the benchmark hangs), the early stop after correctness failures with the
sanitizer pointed at the failing test, and at most 6 files in $OUT."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu-check.sh"

pytestmark = pytest.mark.skipif(not (shutil.which("bash") and shutil.which("timeout")),
                                reason="the dry run needs bash and coreutils timeout")

STUB_TESTS = {
    "pass": "def test_passes():\n    assert True\n\n\ndef test_also_passes():\n    assert 1 + 1 == 2\n",
    "fail": ("import pytest\n\n\ndef test_passes():\n    assert True\n\n\n@pytest.mark.parametrize('dim', [48])\n"
             "def test_wrong(dim):\n    assert dim == 64, 'kernel output differs'\n"),
}


def stub(path: Path, text: str) -> None:
    path.write_text("#!/usr/bin/env bash\n" + text)
    path.chmod(0o755)


# compute-sanitizer stand-ins: unsupported on this device (as under a GPU sandbox), or running the target
# after its own options and reporting no error (exit: the target's) or one (exit: --error-exitcode 9).
RUN_TARGET = 'while [[ $# -gt 0 && "$1" != --error-exitcode ]]; do shift; done\nshift 2\n"$@"\nrc=$?\n'
SANITIZERS = {
    "unsupported": 'echo "========= Error: Device not supported. Please refer to the documentation."\nexit 1\n',
    "clean": RUN_TARGET + 'echo "========= ERROR SUMMARY: 0 errors"\nexit $rc\n',
    "finds": RUN_TARGET + 'echo "========= ERROR SUMMARY: 1 error"\nexit 9\n',
}


@pytest.fixture
def dry_run(tmp_path):
    """Runs the script with stubs; returns (exit code, stdout, $OUT, seconds)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_lib = tmp_path / "libattnx_kernels.so"
    fake_lib.write_bytes(b"")  # the build is not what a dry run proves; the gpu tests skip before loading it

    def run(nvidia_smi="NVIDIA Stub H200, 9.0, 580.00", tests=None, sanitizer="unsupported", **env):
        stub(bin_dir / "compute-sanitizer", 'echo "stub compute-sanitizer $*"\n' + SANITIZERS[sanitizer])
        stub(bin_dir / "nvidia-smi", f'echo "{nvidia_smi}"\n' if nvidia_smi else "exit 0\n")
        out = tmp_path / "out"
        environ = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHON": sys.executable,
                   "OUT": str(out), "BUILD": str(tmp_path / "build"), "ATTN_EXPORT_KERNELS_LIB": str(fake_lib), **env}
        if tests:
            test_file = tmp_path / f"test_stub_{tests}.py"
            test_file.write_text("import pytest\n\npytestmark = pytest.mark.gpu\n\n" + STUB_TESTS[tests])
            environ["GPU_TESTS"] = str(test_file)
        start = time.monotonic()
        result = subprocess.run(["bash", str(SCRIPT)], env=environ, capture_output=True, text=True, timeout=120,
                                check=False)
        return result.returncode, result.stdout + result.stderr, out, time.monotonic() - start

    return run


def summary(out: Path) -> str:
    return (out / "summary.txt").read_text()


def test_skipped_gpu_tier_stops_early_with_sanitizer_skipped(dry_run):
    """No CUDA here: the real gpu tests all skip, which proves nothing: early stop, no benchmark."""
    rc, text, out, _ = dry_run()
    assert rc == 1
    assert "budget: 300 s in all" in text and "architecture: 90" in text
    # The gpu tier of all three ops: neighborhood, block-sparse and PARO.
    assert "pytest -m gpu tests/test_gpu_kernels.py tests/test_gpu_sparse_kernels.py" in text
    lines = summary(out)
    assert "no gpu test passed" in lines and "early stop: correctness failed, no benchmark" in lines
    assert "memcheck: SKIPPED (sanitizer unsupported here" in lines  # not a failure of ours
    assert "benchmark" not in lines.replace("no benchmark", "")
    assert not (out / "bench_na_gpu.jsonl").exists()
    assert "verdict: FAILED" in lines
    assert len(list(out.iterdir())) <= 6


def test_failing_test_gets_the_sanitizer_and_no_benchmark(dry_run):
    rc, text, out, _ = dry_run(nvidia_smi="", tests="fail")
    assert rc == 1
    assert "architecture: native" in text  # nvidia-smi gave no compute capability
    lines = summary(out)
    assert "tests: FAILED (1 failed, 1 passed" in lines and "early stop" in lines
    log = (out / "gpu-check.log").read_text()
    sanitized = [line for line in log.splitlines() if line.startswith("stub compute-sanitizer --tool memcheck")]
    assert sanitized and "--kernel-name kns=attnx" in sanitized[0]  # every kernel of ours, none of torch's
    assert "test_wrong[48]" in sanitized[0]  # the failing test, not the generic cases
    assert not (out / "bench_na_gpu.jsonl").exists()


def test_sanitizer_verdict_is_its_own_exit_code_not_the_failing_target(dry_run):
    """Early stop: the target is a test that fails anyway (pytest exit 1). The sanitizer is FAILED only
    when it found something (its --error-exitcode 9), not because the target it ran failed."""
    rc, text, out, _ = dry_run(tests="fail", sanitizer="clean")
    assert rc == 1
    lines = summary(out)
    assert "memcheck: clean (target failed, rc 1; ERROR SUMMARY: 0 errors)" in lines, lines
    assert "racecheck: clean (target failed, rc 1;" in lines and "memcheck: FAILED" not in lines
    assert "verdict: FAILED" in lines  # the failing test still fails the run

    rc, text, out, _ = dry_run(tests="fail", sanitizer="finds")
    assert rc == 1
    assert "memcheck: FAILED (ERROR SUMMARY: 1 error)" in summary(out)


def test_hanging_benchmark_keeps_its_rows_within_the_budget(dry_run):
    """Tests pass, the (simulated) benchmark hangs on its 4th case: the budget stops it, the three rows
    before it are in the JSONL and the log, their table is printed, and racecheck yields to the clock."""
    rc, text, out, seconds = dry_run(tests="pass", BUDGET_S="20", BENCH_ARGS="--simulate 0.3 --simulate-hang-at 4")
    assert rc == 0, text
    assert seconds < 20 + 5  # the whole run stays inside its budget
    lines = summary(out)
    assert "tests: ok (2 passed" in lines
    assert "benchmark: stopped after" in lines and "3 case rows kept" in lines
    assert "racecheck: skipped" in lines and "verdict: ok (benchmark incomplete)" in lines
    records = [json.loads(line) for line in (out / "bench_na_gpu.jsonl").read_text().splitlines()]
    assert records[0]["kind"] == "meta" and [r["case"] for r in records[1:]] == [
        "2d-64x64-k7", "2d-64x64-k13", "2d-128x128-k13"]
    log = (out / "gpu-check.log").read_text()
    assert log.count('"kind": "case"') == 3  # printed as they finished, before the kill
    assert "3 case rows from" in text  # the table of the kept rows
    assert len(list(out.iterdir())) <= 6


def test_benchmarks_cover_the_three_ops(dry_run):
    """Tests pass; both benchmarks run (simulated): the neighborhood rows, then block-sparse (density
    10/25/50/100%, S = 16k/32k, head_dim 64/128) and PARO (CogVideoX, density 0.3/0.5, INT8/INT4) rows, each in
    its own JSONL; their tables are printed; still at most 6 files."""
    rc, text, out, _ = dry_run(tests="pass", BUDGET_S="120", BENCH_ARGS="--simulate 0.01 --no-flex",
                               SPARSE_BENCH_ARGS="--simulate 0.01")
    assert rc == 0, text
    lines = summary(out)
    assert "benchmark: ok, 14 case rows" in lines and "sparse benchmark: ok, 20 case rows" in lines, lines
    records = [json.loads(line) for line in (out / "bench_sparse_gpu.jsonl").read_text().splitlines()]
    cases = [r for r in records if r["kind"] == "case"]
    assert {r["op"] for r in cases} == {"bsa", "paro"}
    bsa = [r for r in cases if r["op"] == "bsa"]
    assert {(r["seq"], r["head_dim"], r["density"]) for r in bsa} == {
        (s, d, x) for s in (16384, 32768) for d in (64, 128) for x in (0.1, 0.25, 0.5, 1.0)}
    paro = [r for r in cases if r["op"] == "paro"]
    assert {(r["seq"], r["density"], r["bits"]) for r in paro} == {(17776, d, b) for d in (0.3, 0.5) for b in (8, 4)}
    assert "20 case rows from" in text and "verdict: ok after" in lines
    assert len(list(out.iterdir())) <= 6
