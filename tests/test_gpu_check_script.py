"""Dry runs of scripts/gpu-check.sh on this CPU machine: a stub nvidia-smi, stub compute-sanitizers (one that
reports "device not supported", as under a GPU sandbox, and ones that run their target and report no error
or one), stub cmake / nvcc where a build is what is tested, and stand-in tests and a simulated benchmark
prove the control flow the one GPU lease depends on: default step budgets that fit the default budget, the
driver checked first, a prebuilt kernel library taken only when its stamp fits the GPU and the tree (else a
build, with nvcc when CMake is missing or too old), the build before the Python setup, a per-test timeout,
results kept as they happen (JSON lines even when the benchmark hangs), the early stop after correctness
failures with the sanitizer pointed at the failing test, and at most 6 files in $OUT. The native tier runs the
script on the library `attn-export plugins build` made, as it is carried to a GPU machine."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from attn_export import native

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu-check.sh"

pytestmark = pytest.mark.skipif(not (shutil.which("bash") and shutil.which("timeout")),
                                reason="the dry run needs bash and coreutils timeout")

STUB_TESTS = {
    "pass": "def test_passes():\n    assert True\n\n\ndef test_also_passes():\n    assert 1 + 1 == 2\n",
    "fail": ("import pytest\n\n\ndef test_passes():\n    assert True\n\n\n@pytest.mark.parametrize('dim', [48])\n"
             "def test_wrong(dim):\n    assert dim == 64, 'kernel output differs'\n"),
    "hang": ("import time\n\n\ndef test_passes():\n    assert True\n\n\ndef test_hangs():\n    time.sleep(600)\n\n\n"
             "def test_after_the_hang():\n    assert True\n"),
    # The carried library itself: it loads and has this package's ABI (no GPU needed for that call).
    "loads": ("from attn_export import native\n\n\ndef test_library_loads():\n"
              "    assert native.NativeKernels().lib.attnx_abi_version() == native.NativeKernels.ABI_VERSION\n"),
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

    def run(nvidia_smi="NVIDIA Stub H200, 9.0, 580.00", tests=None, sanitizer="unsupported", given_lib=True,
            stubs=None, **env):
        stub(bin_dir / "compute-sanitizer", 'echo "stub compute-sanitizer $*"\n' + SANITIZERS[sanitizer])
        stub(bin_dir / "nvidia-smi", f'echo "{nvidia_smi}"\n' if nvidia_smi else "exit 0\n")
        for name, text in (stubs or {}).items():
            stub(bin_dir / name, text)
        out = tmp_path / "out"
        environ = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHON": sys.executable,
                   "OUT": str(out), "BUILD": str(tmp_path / "build"), "PREBUILT": str(tmp_path / "none.so"), **env}
        if "BUDGET_S" not in env:  # the script's own default decides
            environ.pop("BUDGET_S", None)
        if given_lib:
            environ["ATTN_EXPORT_KERNELS_LIB"] = str(fake_lib)
        else:
            environ.pop("ATTN_EXPORT_KERNELS_LIB", None)
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
    tier = "tests/test_gpu_kernels.py tests/test_gpu_sparse_kernels.py tests/test_gpu_core_ring.py"
    assert f"pytest -m gpu {tier}" in text
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
    rc, text, out, seconds = dry_run(tests="pass", BUDGET_S="30", BENCH_ARGS="--simulate 0.3 --simulate-hang-at 4")
    assert rc == 0, text
    assert seconds < 30 + 5  # the whole run stays inside its budget
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


# ---- budgets, driver, the kernel library (prebuilt, or built with CMake or nvcc), Python setup, hung tests ----

def script_default(name: str) -> int:
    match = re.search(rf'^{name}="\$\{{{name}:-(\d+)\}}"$|^{name}=(\d+)$', SCRIPT.read_text(), flags=re.M)
    assert match, f"gpu-check.sh sets no default for {name}"
    return int(match.group(1) or match.group(2))


def test_default_step_budgets_fit_the_default_budget():
    """Every step gets its whole default budget within the default run (the block-sparse/PARO benchmark used to be
    skipped: 460 s of steps against 300), with and without the build; and the steps run highest value first."""
    steps = sum(script_default(n) for n in ("TESTS_S", "MEMCHECK_S", "BENCH_S", "SPARSE_BENCH_S"))
    base, build, reserve = script_default("BASE_BUDGET_S"), script_default("BUILD_S"), script_default("RESERVE_S")
    assert steps + reserve <= base, f"steps {steps} s + reserve {reserve} s > default budget {base} s"
    text = SCRIPT.read_text()
    assert "BUDGET_S:-$(( BASE_BUDGET_S + BUILD_S ))" in text and build + steps + reserve <= base + build
    markers = ("# 0. The driver", "# 1. Kernels", "# 2. Python", "# 3. Correctness", "# 4. memcheck", "# 5. Benchmark",
               "# 5b. Block-sparse", "# 6. racecheck")
    order = [text.index(marker) for marker in markers]
    assert order == sorted(order)


NVCC = """if [[ "$1" == --version ]]; then echo "Cuda compilation tools, release 13.0, V13.0.88"; exit 0; fi
echo "stub nvcc $*" >>"$STUB_LOG"
while [[ $# -gt 0 && "$1" != -o ]]; do shift; done
echo built >"$2"
"""
CMAKE = """if [[ "$1" == --version ]]; then echo "cmake version {version}"; exit 0; fi
echo "stub cmake $*" >>"$STUB_LOG"
if [[ "$1" == --build ]]; then echo built >"$2/libattnx_kernels.so"; fi
"""
NO_CMAKE = 'echo "cmake: command not found" >&2\nexit 127\n'


def prebuilt(tmp_path, arch="90", stale=False) -> Path:
    """A library and its stamp as `attn-export plugins build --arch ARCH` leaves them (the stamp written by the
    same code, nvcc release 13.0), in tmp_path/prebuilt."""
    folder = tmp_path / "prebuilt"
    folder.mkdir()
    (folder / native.KERNELS_LIB_NAME).write_bytes(b"stand-in")
    nvcc = tmp_path / "nvcc-version"
    stub(nvcc, NVCC)
    os.environ["CUDACXX"], saved = str(nvcc), os.environ.get("CUDACXX")
    try:
        stamp = native.write_kernels_stamp(folder, arch)
    finally:
        os.environ.pop("CUDACXX") if saved is None else os.environ.__setitem__("CUDACXX", saved)
    if stale:
        stamp.write_text(re.sub(r"sha256 [0-9a-f]{8}", "sha256 00000000", stamp.read_text(), count=1))
    return folder / native.KERNELS_LIB_NAME


def fake_cutlass(tmp_path) -> Path:
    (tmp_path / "cutlass" / "include" / "cute").mkdir(parents=True)
    (tmp_path / "cutlass" / "include" / "cute" / "tensor.hpp").write_text("// stand-in\n")
    return tmp_path / "cutlass"


def test_prebuilt_library_is_used_without_compiling(dry_run, tmp_path):
    """The documented route: a library built where there is no GPU, carried with its stamp: no compiler runs, the
    driver is checked against the stamp's CUDA 13 runtime first, the default budget is 300 s."""
    lib = prebuilt(tmp_path)
    compiler = 'echo "the compiler must not run for a usable prebuilt library" >&2\nexit 1\n'
    rc, text, out, _ = dry_run(nvidia_smi="NVIDIA Stub H100, 9.0, 580.95", tests="pass", given_lib=False,
                               stubs={"cmake": compiler, "nvcc": compiler}, PREBUILT=str(lib),
                               BENCH_ARGS="--simulate 0.01 --no-flex", SPARSE_BENCH_ARGS="--simulate 0.01")
    assert rc == 0, text
    lines = summary(out)
    assert "driver: ok (580.95 >= 580 for the CUDA 13.0 runtime)" in lines
    assert f"build: skipped, prebuilt {lib} (sm_90, CUDA 13.0, sources match its stamp)" in lines
    assert "budget: 300 s in all" in text and "tests: ok (2 passed" in lines and "sparse benchmark: ok" in lines
    assert "must not run" not in text and not (out / native.KERNELS_LIB_NAME).exists()


STALE = ("90", True, "is stale: the kernel sources changed")
OTHER_ARCH = ("80", False, "is built for sm_80, this GPU is 90")


@pytest.mark.parametrize("prebuilt_case, cmake, builder", [
    (STALE, "3.22.1", "nvcc"), (OTHER_ARCH, None, "nvcc"), (STALE, "3.27.9", "cmake")])
def test_unusable_prebuilt_library_is_rebuilt_with_cmake_or_nvcc(dry_run, tmp_path, prebuilt_case, cmake, builder):
    """A stale library or one for another architecture is not used: the script builds one (CMake when it is 3.24 or
    newer, else nvcc with the same flags), spends 300 + BUILD_S s by default, and keeps the library in $OUT."""
    arch, stale, why = prebuilt_case
    lib = prebuilt(tmp_path, arch, stale)
    log = tmp_path / "stub.log"
    rc, text, out, _ = dry_run(nvidia_smi="NVIDIA Stub H100, 9.0, 580.95", tests="pass", given_lib=False,
                               PREBUILT=str(lib),
                               stubs={"nvcc": NVCC, "cmake": CMAKE.format(version=cmake) if cmake else NO_CMAKE},
                               STUB_LOG=str(log), CUTLASS_DIR=str(fake_cutlass(tmp_path)),
                               BENCH_ARGS="--simulate 0.01 --no-flex", SPARSE_BENCH_ARGS="--simulate 0.01")
    assert rc == 0, text
    assert why in text and f"budget: {300 + script_default('BUILD_S')} s in all" in text
    calls = log.read_text()
    assert f"stub {builder} " in calls and f"stub {'cmake' if builder == 'nvcc' else 'nvcc'} " not in calls
    if builder == "nvcc":
        assert "-arch=sm_90" in calls and "-cudart static" in calls and "(needs >= 3.24): nvcc directly" in text
    else:
        assert "-DCMAKE_CUDA_ARCHITECTURES=90" in calls
    assert "driver: ok (580.95 >= 580 for the CUDA 13.0 runtime)" in summary(out)
    assert (out / native.KERNELS_LIB_NAME).read_text() == "built\n"
    assert len(list(out.iterdir())) <= 6


def test_old_driver_stops_the_run_first(dry_run, tmp_path):
    """A CUDA 13 runtime needs driver 580+: with 535 nothing is built, imported or run (exit 3)."""
    rc, text, out, seconds = dry_run(nvidia_smi="NVIDIA Stub A100, 8.0, 535.104.05", tests="pass", given_lib=False,
                                     PREBUILT=str(prebuilt(tmp_path, "80")))
    assert rc == 3
    lines = summary(out)
    assert "driver: FAILED, 535.104.05 is older than 580" in lines and "tests:" not in lines and seconds < 30


def test_missing_torch_still_yields_the_built_library(dry_run, tmp_path):
    """The build comes before the Python setup: a Python without torch (here: without its site-packages) fails the
    run (exit 3) with the library built and kept in $OUT."""
    python = tmp_path / "python-without-site-packages"
    stub(python, f'exec "{sys.executable}" -S "$@"\n')
    rc, text, out, _ = dry_run(tests="pass", given_lib=False, stubs={"nvcc": NVCC, "cmake": NO_CMAKE},
                               STUB_LOG=str(tmp_path / "stub.log"), CUTLASS_DIR=str(fake_cutlass(tmp_path)),
                               PYTHON=str(python))
    assert rc == 3, text
    lines = summary(out)
    assert "build: ok" in lines and "setup: FAILED" in lines and "finds no torch" in lines and "tests:" not in lines
    assert (out / native.KERNELS_LIB_NAME).is_file()
    assert "no torch for" in (out / "gpu-check.log").read_text()


@pytest.mark.skipif(importlib.util.find_spec("pytest_timeout") is None, reason="pytest-timeout is not installed")
def test_a_hung_test_costs_its_timeout_not_the_test_budget(dry_run):
    """A test that never returns (as a kernel that never finishes: blocked in C, where no alarm signal runs) ends
    pytest after TEST_TIMEOUT_S; the run goes on to the early stop's sanitizer instead of waiting out 90 s."""
    rc, text, out, seconds = dry_run(tests="hang", TEST_TIMEOUT_S="3")
    assert rc == 1
    lines = summary(out)
    assert "per-test timeout 3 s, ending pytest" in text
    assert "tests: FAILED, pytest stopped after" in lines and "last started: " in lines and "test_hangs" in lines, lines
    assert "early stop: correctness failed" in lines and "memcheck:" in lines
    assert seconds < 60  # not the 90 s test budget


@pytest.mark.native
def test_the_library_plugins_build_made_runs_the_script(dry_run, tmp_path):
    """Native tier: the library and stamp of `attn-export plugins build --arch 90` ($ATTN_EXPORT_BUILD_DIR or the
    build cache), as docs/gpu-results.md carries them to a GPU machine: taken without compiling, and it loads."""
    lib = native.default_build_dir() / native.KERNELS_LIB_NAME
    stamp = lib.with_name(native.KERNELS_STAMP_NAME)
    if not (lib.is_file() and stamp.is_file()):
        pytest.skip(f"native tier: no built library with its stamp in {lib.parent} (attn-export plugins build)")
    if "arch 90\n" not in stamp.read_text():
        pytest.skip(f"native tier: {lib} is not built for sm_90 (attn-export plugins build --arch 90)")
    rc, text, out, _ = dry_run(nvidia_smi="NVIDIA Stub H100, 9.0, 580.95", tests="loads", given_lib=False,
                               PREBUILT=str(lib), SANITIZE="0", BENCH_ARGS="--simulate 0.01 --no-flex",
                               SPARSE_BENCH_ARGS="--simulate 0.01")
    lines = summary(out)
    if "is stale" in text:
        pytest.fail(f"{lib} was built from other kernel sources: rebuild it (attn-export plugins build)")
    assert rc == 0, text
    assert f"build: skipped, prebuilt {lib}" in lines and "tests: ok (1 passed" in lines, lines
