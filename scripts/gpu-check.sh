#!/usr/bin/env bash
# GPU check for one short lease on a machine with CUDA and PyTorch, without TensorRT and without network:
# check the driver, take a kernel library prebuilt on a machine without a GPU (or build one for the local GPU),
# run the gpu test tier against the fp32 reference (neighborhood, block-sparse, PARO), compute-sanitizer memcheck
# on our kernels only, then benchmark (neighborhood, then block-sparse and PARO) and racecheck if time remains.
# Highest value first: correctness, memory errors, speed. The whole run stays inside BUDGET_S under `timeout`;
# each step gets min(its own budget, what is left). docs/gpu-results.md says how to run it.
# Results land in $OUT as they happen, in at most 6 files:
#   gpu-check.log          everything (build errors, pytest -v, sanitizer, benchmark), one combined log
#   summary.txt            one line per step and the verdict
#   pytest-gpu.xml         JUnit of the gpu tests
#   bench_na_gpu.jsonl     one JSON line per neighborhood benchmark record, appended as each finishes
#   bench_sparse_gpu.jsonl the same for block-sparse and PARO
#   libattnx_kernels.so    only when this run compiled it (reuse it: ATTN_EXPORT_KERNELS_LIB)
#
# The kernel library, in this order:
#   $ATTN_EXPORT_KERNELS_LIB           used as given;
#   $PREBUILT (build/native/libattnx_kernels.so, made where there is no GPU with
#       `attn-export plugins build --arch 90 --build-dir build/native`) with its .stamp beside it, used when the
#       stamp lists this GPU's architecture and the kernel sources still hash as it records (no compile: the CuTe
#       units take ~2 minutes each);
#   else built here: CMake >= 3.24 (plugins/CMakeLists.txt), or nvcc with the same flags when CMake is missing or
#       older; it needs the CUTLASS/CuTe headers, and the GPU machine has no network: prepare them where there is,
#       `cmake -DDEST=build/cutlass -P plugins/cmake/fetch_cutlass.cmake`, and carry build/cutlass (or CUTLASS_DIR).
# Driver: the library links the CUDA runtime statically; a CUDA 13.x runtime needs driver >= 580, 12.x >= 525
# (MIN_DRIVER overrides). nvidia-smi is asked first: an older driver stops the run before anything else.
# Correctness failures stop early: no benchmark; the time goes to memcheck on the failing tests.
#
#   OUT=/tmp/out scripts/gpu-check.sh     # PYTHON (python3), SANITIZE=0, QUICK=1 (head_dim 128), PREBUILT
#   budget (s): BUDGET_S = 300 with a usable library, 300 + BUILD_S when it must be built
#   step budgets (s): BUILD_S=150 TESTS_S=90 MEMCHECK_S=45 BENCH_S=75 (neighborhood) SPARSE_BENCH_S=60 (block-sparse
#   and PARO), each with RESERVE_S=10 kept for the summary; racecheck only with >= RACECHECK_MIN_S=45 s left;
#   TEST_TIMEOUT_S=30 per test (pytest-timeout's thread method, when installed: a hung test ends pytest after
#   TEST_TIMEOUT_S instead of eating the test budget; memcheck and racecheck then get the time)
#   dry run without a GPU: GPU_TESTS (pytest target) and BENCH_ARGS (e.g. "--simulate 0.2") override steps.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-out}"
BUILD="${BUILD:-$PWD/build/gpu-check}"
PY="${PYTHON:-python3}"
CUTLASS_DIR="${CUTLASS_DIR:-$PWD/build/cutlass}"
PREBUILT="${PREBUILT:-$PWD/build/native/libattnx_kernels.so}"
LOG="$OUT/gpu-check.log"
SUMMARY="$OUT/summary.txt"
# Step budgets (tests/test_gpu_check_script.py reads these defaults: they must fit the default BUDGET_S).
BUILD_S="${BUILD_S:-150}"
TESTS_S="${TESTS_S:-90}"
MEMCHECK_S="${MEMCHECK_S:-45}"
BENCH_S="${BENCH_S:-75}"
SPARSE_BENCH_S="${SPARSE_BENCH_S:-60}"
RESERVE_S="${RESERVE_S:-10}"
RACECHECK_MIN_S="${RACECHECK_MIN_S:-45}"
TEST_TIMEOUT_S="${TEST_TIMEOUT_S:-30}"
BASE_BUDGET_S=300

# The first GPU as nvidia-smi describes it: "name, compute capability, driver version".
gpu_line() { nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader 2>/dev/null | head -1; }
# Its compute capability without the dot ("90"), or "native" when nvidia-smi does not say.
gpu_arch() {
  local cc
  cc="$(gpu_line | awk -F', *' '{print $2}' | tr -d '. ')"
  [[ "$cc" =~ ^[0-9]+$ ]] && echo "$cc" || echo native
}
# Why the prebuilt library cannot serve this GPU and tree, or nothing when it can.
prebuilt_problem() {
  local stamp="$PREBUILT.stamp" arch="$1"
  [[ -f "$PREBUILT" ]] || { echo "no prebuilt library at $PREBUILT"; return; }
  [[ -f "$stamp" ]] || { echo "$PREBUILT has no .stamp (build it with attn-export plugins build)"; return; }
  local built
  built="$(awk '$1 == "arch" {print $2}' "$stamp")"
  if [[ "$arch" == native ]] || ! tr ';' '\n' <<<"$built" | sed 's/-.*//' | grep -qx "$arch"; then
    echo "$PREBUILT is built for sm_${built//;/,sm_}, this GPU is ${arch/#native/unknown}"
    return
  fi
  awk '$1 == "sha256" {print $2 "  " $3}' "$stamp" | sha256sum --check --quiet --status 2>/dev/null ||
    echo "$PREBUILT is stale: the kernel sources changed since it was built"
}

# ---- outer shell: the whole run under `timeout`, then the verdict even if the budget ran out ----
if [[ -z "${GPU_CHECK_INNER:-}" ]]; then
  mkdir -p "$OUT" "$BUILD"
  : >"$LOG"
  : >"$SUMMARY"
  # Which library the run uses decides its default budget: compiling costs BUILD_S more.
  if [[ -n "${ATTN_EXPORT_KERNELS_LIB:-}" && -f "${ATTN_EXPORT_KERNELS_LIB}" ]]; then
    KERNELS_FROM=given
  elif [[ -z "$(prebuilt_problem "$(gpu_arch)")" ]]; then
    KERNELS_FROM=prebuilt
  else
    KERNELS_FROM=build
  fi
  [[ $KERNELS_FROM == build ]] && BUDGET_S="${BUDGET_S:-$(( BASE_BUDGET_S + BUILD_S ))}" || BUDGET_S="${BUDGET_S:-$BASE_BUDGET_S}"
  export BUDGET_S KERNELS_FROM
  GPU_CHECK_INNER=1 GPU_CHECK_START="$(date +%s)" timeout -k 5 "$BUDGET_S" bash "$0" "$@"
  rc=$?
  if [[ $rc == 124 || $rc == 137 ]]; then
    echo "TIMEOUT: the ${BUDGET_S} s budget ran out; every result written so far is kept" | tee -a "$SUMMARY" "$LOG"
  fi
  echo "== summary ($OUT: $(ls "$OUT" | tr '\n' ' '))"
  cat "$SUMMARY"
  exit $rc
fi

# ---- inner run ----
start="$GPU_CHECK_START"
status=0
elapsed() { echo $(( $(date +%s) - start )); }
left() { echo $(( BUDGET_S - $(elapsed) )); }
stamp() { echo "[$(elapsed) s] $*" | tee -a "$LOG"; }
note() { echo "$*" | tee -a "$SUMMARY" "$LOG"; }
# Runs a command with its output both in FILE (for parsing) and, as it comes, in the combined log.
logged() {
  local file="$1"
  shift
  PYTHONUNBUFFERED=1 "$@" 2>&1 | tee "$file" >>"$LOG"
  return "${PIPESTATUS[0]}"
}
# Seconds a step may take: min(its budget, what is left minus a reserve for the summary).
# Never 0: `timeout 0` would mean no limit at all.
budget() { local b="$1" l; l=$(( $(left) - RESERVE_S )); (( l < b )) && b=$l; (( b < 1 )) && b=1; echo "$b"; }

stamp "budget: ${BUDGET_S} s in all; build <=${BUILD_S} (only without a usable library), tests <=${TESTS_S}," \
      "memcheck <=${MEMCHECK_S}, benchmark <=${BENCH_S} + ${SPARSE_BENCH_S}, racecheck only with >=${RACECHECK_MIN_S} s left;" \
      "python: $PY"
gpu="$(gpu_line)"
stamp "device: ${gpu:-unknown (nvidia-smi gave nothing)}"
arch="$(gpu_arch)"
stamp "architecture: $arch"

# 0. The driver, first: the CUDA runtime linked into the library needs driver >= 580 (13.x) or 525 (12.x).
case "$KERNELS_FROM" in
  prebuilt) cuda="$(awk '$1 == "cuda" {print $2}' "$PREBUILT.stamp")" ;;
  build) cuda="$(nvcc --version 2>/dev/null | grep -oE 'release [0-9]+\.[0-9]+' | awk '{print $2}')" ;;
  *) cuda="" ;;
esac
case "${cuda%%.*}" in 13) need=580 ;; 12) need=525 ;; *) need="" ;; esac
need="${MIN_DRIVER:-$need}"
driver="$(echo "$gpu" | awk -F', *' '{print $3}')"
if [[ -z "$need" || ! "${driver%%.*}" =~ ^[0-9]+$ ]]; then
  note "driver: not checked (driver ${driver:-unknown}, CUDA runtime ${cuda:-unknown})"
elif (( ${driver%%.*} < need )); then
  note "driver: FAILED, $driver is older than $need, which the CUDA $cuda runtime linked into libattnx_kernels.so" \
       "needs (build the library with an older CUDA toolkit, or update the driver)"
  exit 3
else
  note "driver: ok ($driver >= $need for the CUDA $cuda runtime)"
fi

# 1. Kernels for this GPU: given, prebuilt (no compile) or built here.
build_kernels() {
  local t="$1" cmake_version
  cmake_version="$(cmake --version 2>/dev/null | head -1 | grep -oE '[0-9]+\.[0-9]+(\.[0-9]+)?')"
  if [[ -n "$cmake_version" && "$(printf '%s\n' 3.24 "$cmake_version" | sort -V | head -1)" == 3.24 ]]; then
    stamp "cmake $cmake_version"
    timeout "$t" cmake -S plugins -B "$BUILD" -DCMAKE_CUDA_ARCHITECTURES="$arch" -DATTNX_BUILD_TESTS=OFF \
      -DCUTLASS_DIR="$CUTLASS_DIR" >"$BUILD/build.log" 2>&1 &&
      timeout "$t" cmake --build "$BUILD" -j "$(nproc)" --target attnx_kernels >>"$BUILD/build.log" 2>&1
  else  # no CMake, or older than plugins/CMakeLists.txt's 3.24: the same flags by hand
    stamp "cmake ${cmake_version:-absent} (needs >= 3.24): nvcc directly"
    local nvarch
    [[ "$arch" == native ]] && nvarch="-arch=native" || nvarch="-arch=sm_${arch}"
    timeout "$t" nvcc -std=c++17 -O3 "$nvarch" -Xcompiler -fPIC,-fvisibility=hidden -shared -cudart static \
      --expt-relaxed-constexpr -Xlinker --version-script=plugins/kernels/exports.map -isystem "$CUTLASS_DIR/include" \
      plugins/kernels/attnx_abi.cpp plugins/kernels/na_forward.cu plugins/kernels/na_core.cu \
      plugins/kernels/bsa_forward.cu plugins/kernels/paro_forward.cu -o "$BUILD/libattnx_kernels.so" >"$BUILD/build.log" 2>&1
  fi
}
case "$KERNELS_FROM" in
  given) note "build: skipped, using ${ATTN_EXPORT_KERNELS_LIB}" ;;
  prebuilt)
    export ATTN_EXPORT_KERNELS_LIB="$PREBUILT"
    note "build: skipped, prebuilt $PREBUILT (sm_$arch, CUDA $cuda, sources match its stamp)" ;;
  *)
    stamp "no usable prebuilt library: $(prebuilt_problem "$arch")"
    t=$(budget "$BUILD_S")
    stamp "building libattnx_kernels.so for $arch (<= $t s; CUTLASS headers from $CUTLASS_DIR)"
    if [[ ! -f "$CUTLASS_DIR/include/cute/tensor.hpp" ]]; then
      note "build: FAILED, no CUTLASS headers in $CUTLASS_DIR (prepare them where there is network:" \
           "cmake -DDEST=build/cutlass -P plugins/cmake/fetch_cutlass.cmake, and carry build/cutlass;" \
           "or carry a prebuilt library: docs/gpu-results.md)"
      exit 3
    fi
    build_kernels "$t"
    rc=$?
    if [[ $rc != 0 ]]; then
      tail -40 "$BUILD/build.log" >>"$LOG"
      note "build: FAILED (rc $rc$([[ $rc == 124 ]] && echo ', timed out'); last lines in gpu-check.log)"
      exit 1
    fi
    export ATTN_EXPORT_KERNELS_LIB="$BUILD/libattnx_kernels.so"
    cp "$ATTN_EXPORT_KERNELS_LIB" "$OUT/"  # comes back with the results: the next run can use it
    note "build: ok in $(elapsed) s (kept as $OUT/libattnx_kernels.so)" ;;
esac

# 2. Python: attn_export importable without installing anything (no network on the GPU machine): lay the three
# source folders out as the one package they form (pyproject's package-dir mapping) on PYTHONPATH. After the
# build, so that a machine without torch still yields a built library.
if ! "$PY" -c "import attn_export" 2>/dev/null; then
  pkg="$BUILD/pkg"
  rm -rf "$pkg" && mkdir -p "$pkg"
  cp -r exporter "$pkg/attn_export" && cp -r models "$pkg/attn_export/models" && cp -r calib "$pkg/attn_export/calib"
  export PYTHONPATH="$pkg${PYTHONPATH:+:$PYTHONPATH}"
fi
# torch is looked up, not imported (seconds the tests spend anyway); a torch that is found but broken fails them.
if ! "$PY" -c "import importlib.util, sys, attn_export.native
sys.exit(0 if importlib.util.find_spec('torch') else 'no torch for ' + sys.executable)" >>"$LOG" 2>&1; then
  note "setup: FAILED, $PY finds no torch or cannot import attn_export (see gpu-check.log); the kernel library is" \
       "${ATTN_EXPORT_KERNELS_LIB}"
  exit 3
fi

# compute-sanitizer on our kernels only; "unsupported here" (e.g. a sandboxed GPU) is a skip, not a failure.
# Only the sanitizer's own --error-exitcode (9) means it found errors: on the early-stop path the target
# is a test that already failed, and its exit code alone says nothing about memory or races.
sanitize() {
  local tool="$1" t="$2" tmp rc found
  shift 2
  if [[ "${SANITIZE:-1}" != 1 ]]; then note "$tool: skipped (SANITIZE=0)"; return 0; fi
  if ! command -v compute-sanitizer >/dev/null; then note "$tool: skipped (compute-sanitizer not installed)"; return 0; fi
  if (( t < 15 )); then note "$tool: skipped (no time left)"; return 0; fi
  stamp "compute-sanitizer --tool $tool on $* (<= $t s)"
  tmp="$BUILD/sanitizer-$tool.txt"
  # Every kernel of ours lives in namespace attnx: the filter keeps torch's kernels out.
  logged "$tmp" timeout -k 5 "$t" compute-sanitizer --tool "$tool" --kernel-name kns=attnx --error-exitcode 9 "$@"
  rc=$?
  if grep -qiE "device not supported|not supported on this|unsupported (device|gpu|platform)" "$tmp"; then
    note "$tool: SKIPPED (sanitizer unsupported here: $(grep -m1 -iE 'not supported|unsupported' "$tmp" | sed 's/^=* *//' | cut -c1-100))"
    return 0
  fi
  if [[ $rc == 124 || $rc == 137 ]]; then
    note "$tool: inconclusive (stopped after $t s)"
    return 0
  fi
  found="$(grep -m1 -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$tmp" | sed 's/^=* *//')"
  if [[ $rc == 9 ]]; then
    note "$tool: FAILED (${found:-rc 9, no summary})"
    status=1
  elif [[ $rc == 0 ]]; then
    note "$tool: clean (${found:-no summary})"
  elif [[ -z "$found" ]]; then  # no finding and no summary: the sanitizer itself did not finish
    note "$tool: inconclusive (rc $rc, no sanitizer summary; see gpu-check.log)"
  else
    note "$tool: clean (target failed, rc $rc; $found)"
  fi
}

# 3. Correctness: kernels vs the fp32 reference (fresh random inputs, NaN-poisoned outputs).
tests="${GPU_TESTS:-tests/test_gpu_kernels.py tests/test_gpu_sparse_kernels.py tests/test_gpu_core_ring.py}"
read -ra test_paths <<<"$tests"
t=$(budget "$TESTS_S")
per_test=()
if "$PY" -c "import pytest_timeout" 2>/dev/null; then
  # The thread method: a kernel that never finishes blocks in C, where the signal method's alarm never gets to run;
  # the thread method ends pytest instead, so a hung test costs TEST_TIMEOUT_S, not the whole test budget.
  per_test=(--timeout="$TEST_TIMEOUT_S" --timeout-method=thread)
  per_test_note="per-test timeout $TEST_TIMEOUT_S s, ending pytest"
else
  per_test_note="pytest-timeout absent: the run as a whole is limited"
fi
stamp "pytest -m gpu $tests (<= $t s, --maxfail 5, $per_test_note)"
test_start="$(date +%s)"
# pytest -v prints each result as it finishes; unbuffered and through tee, the log has them even if killed.
logged "$BUILD/pytest.txt" timeout -k 5 "$t" "$PY" -m pytest -m gpu "${test_paths[@]}" -v -p no:cacheprovider --maxfail=5 -rfE \
  "${per_test[@]}" --junitxml="$OUT/pytest-gpu.xml"
rc=$?
result="$(grep -E '^=+ .*(passed|failed|skipped|error|no tests ran).* in [0-9.]+s' "$BUILD/pytest.txt" | tail -1 | tr -d '=' | xargs)"
passed=$(echo "$result" | grep -oE '[0-9]+ passed' | grep -oE '[0-9]+' || echo 0)
mapfile -t failing < <(grep -oE '^[^ ]+::[^ ]+ (FAILED|ERROR)' "$BUILD/pytest.txt" | awk '{print $1}' | head -2)
if [[ -z "$result" ]]; then
  last="$(grep -oE '^[^ ]+::[^ ]+' "$BUILD/pytest.txt" | tail -1)"
  note "tests: FAILED, pytest stopped after $(( $(date +%s) - test_start )) s without a summary (hung test? last" \
       "started: ${last:-none})"
  correct=0
elif [[ $rc != 0 || ${passed:-0} == 0 ]]; then
  note "tests: FAILED ($result)$([[ ${passed:-0} == 0 ]] && echo '; no gpu test passed: a run that only skips proves nothing')"
  correct=0
else
  note "tests: ok ($result)"
  correct=1
fi

if [[ $correct == 0 ]]; then
  # 4a. Early stop: no benchmark; the remaining time goes to the sanitizer on what failed.
  status=1
  note "early stop: correctness failed, no benchmark"
  if (( ${#failing[@]} )); then
    target=("$PY" -m pytest -x -q -p no:cacheprovider "${failing[@]}")
  else  # nothing failed by name (all skipped, or a hang): one small case per kernel path
    target=("$PY" scripts/gpu_sanitize_cases.py)
  fi
  sanitize memcheck "$(budget 150)" "${target[@]}"
  if (( $(left) >= RACECHECK_MIN_S )); then
    sanitize racecheck "$(budget 90)" "${target[@]}"
  else
    note "racecheck: skipped ($(left) s left)"
  fi
  note "verdict: FAILED after $(elapsed) s"
  exit 1
fi

# 4. memcheck on one small case per kernel path.
sanitize memcheck "$(budget "$MEMCHECK_S")" "$PY" scripts/gpu_sanitize_cases.py

# 5. Benchmark: each record is appended to the JSONL the moment it exists.
t=$(budget "$BENCH_S")
stamp "benchmark (<= $t s)"
bench_args=(--jsonl "$OUT/bench_na_gpu.jsonl" --deadline-s "$(( t > 20 ? t - 15 : t ))")
[[ "${QUICK:-0}" == 1 ]] && bench_args+=(--quick)
# shellcheck disable=SC2206
bench_args+=(${BENCH_ARGS:-})
logged "$BUILD/bench.txt" timeout -k 5 "$t" "$PY" bench/bench_na_gpu.py "${bench_args[@]}"
rc=$?
rows=$(grep -c '"kind": "case"' "$OUT/bench_na_gpu.jsonl" 2>/dev/null)
rows=${rows:-0}
bench_done=1
if [[ $rc == 124 || $rc == 137 ]]; then
  bench_done=0
  note "benchmark: stopped after $t s (time budget); $rows case rows kept in bench_na_gpu.jsonl"
elif [[ $rc != 0 ]]; then
  note "benchmark: FAILED (rc $rc; $rows case rows in bench_na_gpu.jsonl; see gpu-check.log)"
  status=1
else
  note "benchmark: ok, $rows case rows"
fi

# 5b. Block-sparse and PARO rows, in what is left (never the racecheck's reserve from an unfinished run).
if (( $(left) >= 25 )); then
  t=$(budget "$SPARSE_BENCH_S")
  stamp "sparse benchmark (<= $t s)"
  sparse_args=(--jsonl "$OUT/bench_sparse_gpu.jsonl" --deadline-s "$(( t > 20 ? t - 15 : t ))")
  [[ "${QUICK:-0}" == 1 ]] && sparse_args+=(--quick)
  # shellcheck disable=SC2206
  sparse_args+=(${SPARSE_BENCH_ARGS:-})
  logged "$BUILD/bench_sparse.txt" timeout -k 5 "$t" "$PY" bench/bench_sparse_gpu.py "${sparse_args[@]}"
  rc=$?
  sparse_rows=$(grep -c '"kind": "case"' "$OUT/bench_sparse_gpu.jsonl" 2>/dev/null)
  sparse_rows=${sparse_rows:-0}
  if [[ $rc == 124 || $rc == 137 ]]; then
    bench_done=0
    note "sparse benchmark: stopped after $t s (time budget); $sparse_rows case rows kept in bench_sparse_gpu.jsonl"
  elif [[ $rc != 0 ]]; then
    note "sparse benchmark: FAILED (rc $rc; $sparse_rows case rows in bench_sparse_gpu.jsonl; see gpu-check.log)"
    status=1
  else
    note "sparse benchmark: ok, $sparse_rows case rows"
  fi
else
  bench_done=0
  note "sparse benchmark: skipped ($(left) s left)"
fi

# 6. racecheck, only if time remains.
if (( $(left) >= RACECHECK_MIN_S )); then
  sanitize racecheck "$(budget 90)" "$PY" scripts/gpu_sanitize_cases.py
else
  note "racecheck: skipped ($(left) s left)"
fi

# The tables of the rows each benchmark kept (also when one was stopped before printing its own).
"$PY" bench/bench_na_gpu.py --table-from "$OUT/bench_na_gpu.jsonl" 2>&1 | tee -a "$LOG"
[[ -f "$OUT/bench_sparse_gpu.jsonl" ]] && "$PY" bench/bench_sparse_gpu.py --table-from "$OUT/bench_sparse_gpu.jsonl" 2>&1 | tee -a "$LOG"
verdict=$([[ $status == 0 ]] && echo ok || echo FAILED)
[[ $status == 0 && $bench_done == 0 ]] && verdict="ok (benchmark incomplete)"
note "verdict: $verdict after $(elapsed) s"
exit $status
