#!/usr/bin/env bash
# GPU check for a machine with CUDA 13 and PyTorch (cu130), without TensorRT: build the kernels for
# the local GPU (or use $ATTN_EXPORT_KERNELS_LIB), run the gpu test tier against the fp32 reference,
# optionally compute-sanitizer on small cases, then benchmark. Results go to $OUT (default ./gpu-out);
# the last thing printed is the benchmark table. Target: under 6 minutes on an H100.
#
#   OUT=/tmp/out scripts/gpu-check.sh            # SANITIZE=0 skips compute-sanitizer, QUICK=1 head_dim 128 only
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-out}"
BUILD="${BUILD:-$PWD/build/gpu-check}"
mkdir -p "$OUT" "$BUILD"
start=$(date +%s)
status=0
stamp() { echo "[$(( $(date +%s) - start )) s] $*"; }

stamp "device: $(nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader | head -1)"
arch="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d '. ')"

# attn_export importable without installing anything (no network on the GPU machine): lay the three
# source folders out as the one package they form (pyproject's package-dir mapping) on PYTHONPATH.
if ! python -c "import attn_export" 2>/dev/null; then
  pkg="$BUILD/pkg"
  rm -rf "$pkg" && mkdir -p "$pkg"
  cp -r exporter "$pkg/attn_export" && cp -r models "$pkg/attn_export/models" && cp -r calib "$pkg/attn_export/calib"
  export PYTHONPATH="$pkg${PYTHONPATH:+:$PYTHONPATH}"
  python -c "import attn_export.native, attn_export.models" || { echo "cannot import attn_export from $pkg"; exit 3; }
fi

# 1. Kernels for this GPU.
if [[ -n "${ATTN_EXPORT_KERNELS_LIB:-}" && -f "${ATTN_EXPORT_KERNELS_LIB}" ]]; then
  stamp "using prebuilt ${ATTN_EXPORT_KERNELS_LIB}"
else
  stamp "building libattnx_kernels.so for sm_${arch}"
  if command -v cmake >/dev/null; then
    cmake -S plugins -B "$BUILD" -DCMAKE_CUDA_ARCHITECTURES="$arch" -DATTNX_BUILD_TESTS=OFF >"$OUT/build.log" 2>&1 &&
      cmake --build "$BUILD" -j "$(nproc)" --target attnx_kernels >>"$OUT/build.log" 2>&1
  else  # no CMake on the image: the same flags by hand
    nvcc -std=c++17 -O3 -arch="sm_${arch}" -Xcompiler -fPIC,-fvisibility=hidden -shared -cudart static \
      --expt-relaxed-constexpr -Xlinker --version-script=plugins/kernels/exports.map \
      plugins/kernels/na_forward.cu -o "$BUILD/libattnx_kernels.so" >"$OUT/build.log" 2>&1
  fi || { tail -30 "$OUT/build.log"; echo "kernel build FAILED (full log $OUT/build.log)"; exit 1; }
  export ATTN_EXPORT_KERNELS_LIB="$BUILD/libattnx_kernels.so"
fi
stamp "kernels: $ATTN_EXPORT_KERNELS_LIB"

# 2. Correctness: kernels vs the fp32 reference (fresh random inputs, NaN-poisoned outputs).
stamp "pytest -m gpu"
python -m pytest -m gpu tests/test_gpu_kernels.py -q -p no:cacheprovider --junitxml="$OUT/pytest-gpu.xml" \
  >"$OUT/pytest-gpu.log" 2>&1 || status=1
tail -15 "$OUT/pytest-gpu.log"
# A GPU check whose tests all skipped proved nothing.
grep -qE "[0-9]+ passed" "$OUT/pytest-gpu.log" || { status=1; echo "no gpu test passed (see the skip reasons above)"; }

# 3. compute-sanitizer memcheck and racecheck on one small case per kernel path.
if [[ "${SANITIZE:-1}" == 1 ]] && command -v compute-sanitizer >/dev/null; then
  for tool in memcheck racecheck; do
    stamp "compute-sanitizer --tool $tool"
    timeout 120 compute-sanitizer --tool "$tool" --error-exitcode 9 python scripts/gpu_sanitize_cases.py \
      >"$OUT/sanitizer-$tool.log" 2>&1 || { status=1; tail -20 "$OUT/sanitizer-$tool.log"; }
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$OUT/sanitizer-$tool.log" || true
  done
fi

# 4. Benchmark; its table is printed last.
stamp "benchmark"
bench_args=(--json "$OUT/bench_na_gpu.json" --budget-s "${FLEX_BUDGET_S:-180}")
[[ "${QUICK:-0}" == 1 ]] && bench_args+=(--quick)
python bench/bench_na_gpu.py "${bench_args[@]}" >"$OUT/bench.log" 2>"$OUT/bench.err" || status=1
stamp "done (status $status)"
echo "pytest: $(tail -1 "$OUT/pytest-gpu.log")"
[[ -s "$OUT/bench.log" ]] || { echo "benchmark produced no table:"; tail -5 "$OUT/bench.err"; }
cat "$OUT/bench.log"
exit $status
