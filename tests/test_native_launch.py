"""The kernel launch plan (plugins/kernels/na_launch.h) on the CPU: on every supported architecture the
generic kernel's tile fits the per-block shared-memory limit counting the kernel's static __shared__
array too (a plan of dynamic memory only launched and failed on some head_dim / GPU pairs), the static
size the plan counts is what ptxas compiled, every call gets a path that attnx_na_forward launches (the core
or the generic kernel; select_path reports the same na_path), and grids stay within CUDA's gridDim.y/z limits."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from native_tools import PLUGINS, ask, build_dump

pytestmark = pytest.mark.native

# Opt-in shared memory per block (cudaDevAttrMaxSharedMemoryPerBlockOptin) by compute capability.
SMEM_LIMIT = {80: 166912, 86: 101376, 87: 166912, 89: 101376, 90: 232448, 100: 232448, 120: 101376}
FLOAT32, FLOAT16, BFLOAT16 = 0, 1, 2
GENERIC, CORE = 2, 3  # attnx_na_path
ELEM_BYTES = {FLOAT32: 4, FLOAT16: 2, BFLOAT16: 2}
MAX_GRID_YZ = 65535


@pytest.fixture(scope="module")
def launch_dump(tmp_path_factory):
    return build_dump(tmp_path_factory, "na_launch_dump")


def test_plan_fits_every_architecture(launch_dump):
    requests = [(arch, dtype, dim) for arch in SMEM_LIMIT for dtype in ELEM_BYTES for dim in range(1, 257)]
    rows = ask(launch_dump, [f"C {dtype} {dim} {SMEM_LIMIT[arch]}" for arch, dtype, dim in requests])
    for (arch, dtype, dim), (path, tile, dynamic, static) in zip(requests, rows, strict=True):
        where = f"sm_{arch} dtype={dtype} head_dim={dim}"
        assert path == GENERIC and tile in (64, 32, 16), f"{where}: no tile fits"
        assert static == 8 * tile, f"{where}: the row-offset array is 8 bytes per tile slot"
        assert dynamic + static <= SMEM_LIMIT[arch], f"{where}: {dynamic} + {static} bytes exceed the limit"


@pytest.mark.parametrize("arch, dim", [(86, 97), (89, 97), (120, 97), (80, 199), (87, 199)])
def test_tiles_where_the_static_array_decides(launch_dump, arch, dim):
    """fp16 at these head_dims: tile 64 needs at most the limit in dynamic memory but not with the
    512 static bytes added; the plan must take tile 32 (the old plan took 64 and the launch failed)."""
    (path, tile, _, _), = ask(launch_dump, [f"C {FLOAT16} {dim} {SMEM_LIMIT[arch]}"])
    (static64,), = ask(launch_dump, ["S 2 64"])
    assert (path, tile) == (GENERIC, 32)
    bigger = ask(launch_dump, [f"C {FLOAT16} {dim} {SMEM_LIMIT[arch] + static64}"])[0]
    assert bigger[1] == 64 and bigger[2] <= SMEM_LIMIT[arch] < bigger[2] + static64


# Calls with a bias whose table (prod(2k-1) floats) is too big to stage next to the core's tiles: replayed
# from review (H100 3-D k19 hd64, 2-D k111 hd64/128; A100 3-D k15 hd128). They used to get the tensor-core
# path, which nothing launches (attnx_na_forward returned UNSUPPORTED while select_path named it).
BIG_TABLES = [(90, 3, 19, 64), (90, 2, 111, 64), (90, 2, 111, 128), (80, 3, 15, 128), (86, 3, 13, 64)]


def na_call(dtype, dim, rank, k, has_rpb, arch, aligned=1):
    kernel = " ".join(str(k if a < rank else 1) for a in range(3))
    return f"P {dtype} {dim} {rank} {kernel} {int(has_rpb)} {arch // 10} {SMEM_LIMIT[arch]} {aligned}"


@pytest.mark.parametrize("arch, rank, k, dim", BIG_TABLES)
@pytest.mark.parametrize("dtype", [FLOAT16, BFLOAT16])
def test_bias_table_too_big_for_shared_memory_runs_the_generic_kernel(launch_dump, arch, rank, k, dim, dtype):
    """The call runs (generic kernel, its bias read from global memory) and select_path names that kernel;
    the same call without a bias, or with a small table, still takes the core."""
    (path,), (without_bias,), (small_table,) = ask(launch_dump, [
        na_call(dtype, dim, rank, k, True, arch), na_call(dtype, dim, rank, k, False, arch),
        na_call(dtype, dim, rank, 7, True, arch)])
    assert path == GENERIC, f"sm_{arch} {rank}-D k{k} hd{dim} with rpb: path {path}, expected the generic kernel"
    assert (without_bias, small_table) == (CORE, CORE)


def test_every_call_gets_a_path_that_is_launched(launch_dump):
    """Over dtypes, head_dims, ranks, kernel sizes, bias, alignment and architectures, na_path returns only
    the core or the generic kernel (the two paths attnx_na_forward launches), never NONE within the limits."""
    calls = [(dtype, dim, rank, k, rpb, arch, aligned) for arch in SMEM_LIMIT for dtype in ELEM_BYTES
             for dim in (8, 32, 64, 96, 128, 256) for rank in (1, 2, 3) for k in (3, 15, 61, 111)
             for rpb in (0, 1) for aligned in (0, 1)]
    paths = ask(launch_dump, [na_call(*c) for c in calls])
    for call, (path,) in zip(calls, paths, strict=True):
        assert path in (CORE, GENERIC), f"{call}: path {path}"
        dtype, dim, _, _, _, _, aligned = call
        assert path == GENERIC or (dtype != FLOAT32 and dim in (32, 64, 128) and aligned), call


KERNEL = re.compile(r"na_fused_kernelI(f|6__half|13__nv_bfloat16)Li(\d+)EE")


def test_plan_counts_the_static_shared_memory_ptxas_compiled(launch_dump, tmp_path):
    """Every na_fused_kernel instantiation's static shared memory (ptxas --resource-usage) equals the
    plan's static_bytes(); a new __shared__ array in the kernel fails here until the plan counts it."""
    nvcc = shutil.which("nvcc")
    if not nvcc:
        pytest.skip("native tier: nvcc not on PATH (install the CUDA toolkit)")
    cmd = [nvcc, "-std=c++17", "-arch=sm_80", "--expt-relaxed-constexpr", f"-I{PLUGINS / 'kernels'}",
           "--resource-usage", "-cubin", "-o", str(tmp_path / "na.cubin"), str(PLUGINS / "kernels" / "na_forward.cu")]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    compiled, current = {}, None
    for line in (result.stdout + result.stderr).splitlines():
        if "Function properties for" in line:
            match = KERNEL.search(line)
            current = None if match is None else match.groups()
        elif current and (smem := re.search(r"(\d+) bytes smem", line)):
            compiled[current] = int(smem.group(1))
            current = None
    # fp32, fp16, bf16: 3 tiles each (the first generation's WMMA path is gone: the core in na_core.cu replaced it)
    assert len(compiled) == 9, compiled
    elem = {"f": 4, "6__half": 2, "13__nv_bfloat16": 2}
    keys = sorted(compiled)
    planned = ask(launch_dump, [f"S {elem[t]} {tile}" for t, tile in keys])
    for key, (static,) in zip(keys, planned, strict=True):
        assert compiled[key] == static, f"na_fused_kernel<{key}>: ptxas {compiled[key]} bytes, plan {static}"


@pytest.mark.parametrize("batch, heads", [(2, 8), (0, 4), (1, 70000), (70000, 3), (131071, 65536), (65535, 65535)])
def test_grid_chunks_cover_batch_and_heads_within_limits(launch_dump, batch, heads):
    (row,) = ask(launch_dump, [f"G {batch} {heads}"])
    chunks = [tuple(row[i:i + 4]) for i in range(0, len(row), 4)]
    covered = 0
    for b0, nb, h0, nh in chunks:
        assert 1 <= nb <= MAX_GRID_YZ and 1 <= nh <= MAX_GRID_YZ
        assert 0 <= b0 and b0 + nb <= batch and 0 <= h0 and h0 + nh <= heads
        covered += nb * nh
    assert covered == batch * heads  # disjoint (sorted, non-overlapping starts) and complete
    assert len({(b0, h0) for b0, _, h0, _ in chunks}) == len(chunks)
    assert len(chunks) == -(-batch // MAX_GRID_YZ) * -(-heads // MAX_GRID_YZ)
