"""The kernel launch plan (plugins/kernels/na_launch.h) on the CPU: on every supported architecture the
chosen path and tile fit the per-block shared-memory limit counting the kernel's static __shared__
array too (a plan of dynamic memory only launched and failed on some head_dim / GPU pairs), the static
size the plan counts is what ptxas compiled, and grids stay within CUDA's gridDim.y/z limits."""

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
TENSOR_CORE, GENERIC = 1, 2
ELEM_BYTES = {FLOAT32: 4, FLOAT16: 2, BFLOAT16: 2}
MAX_GRID_YZ = 65535


@pytest.fixture(scope="module")
def launch_dump(tmp_path_factory):
    return build_dump(tmp_path_factory, "na_launch_dump")


def test_plan_fits_every_architecture(launch_dump):
    requests = [(arch, dtype, dim, aligned) for arch in SMEM_LIMIT for dtype in ELEM_BYTES
                for dim in range(1, 257) for aligned in (1, 0)]
    rows = ask(launch_dump, [f"C {dtype} {dim} {arch // 10} {SMEM_LIMIT[arch]} {aligned}"
                             for arch, dtype, dim, aligned in requests])
    for (arch, dtype, dim, aligned), (path, tile, dynamic, static) in zip(requests, rows, strict=True):
        where = f"sm_{arch} dtype={dtype} head_dim={dim} aligned={aligned}"
        assert path in (TENSOR_CORE, GENERIC), f"{where}: no kernel fits"
        assert static == 8 * tile, f"{where}: the row-offset array is 8 bytes per tile slot"
        assert dynamic + static <= SMEM_LIMIT[arch], f"{where}: {dynamic} + {static} bytes exceed the limit"
        eligible = dtype != FLOAT32 and dim in (32, 64, 128) and aligned
        assert path == GENERIC or eligible, f"{where}: tensor cores need fp16/bf16, head_dim 32/64/128, alignment"
        if eligible and path == GENERIC:  # only when the tensor-core block does not fit this GPU
            unlimited = ask(launch_dump, [f"C {dtype} {dim} {arch // 10} {10**9} 1"])[0]
            assert unlimited[0] == TENSOR_CORE and unlimited[2] + unlimited[3] > SMEM_LIMIT[arch], where


@pytest.mark.parametrize("arch, dim", [(86, 97), (89, 97), (120, 97), (80, 199), (87, 199)])
def test_tiles_where_the_static_array_decides(launch_dump, arch, dim):
    """fp16 at these head_dims: tile 64 needs at most the limit in dynamic memory but not with the
    512 static bytes added; the plan must take tile 32 (the old plan took 64 and the launch failed)."""
    (path, tile, _, _), = ask(launch_dump, [f"C {FLOAT16} {dim} {arch // 10} {SMEM_LIMIT[arch]} 1"])
    (static64,), = ask(launch_dump, ["S 2 64 0"])
    assert (path, tile) == (GENERIC, 32)
    bigger = ask(launch_dump, [f"C {FLOAT16} {dim} {arch // 10} {SMEM_LIMIT[arch] + static64} 1"])[0]
    assert bigger[1] == 64 and bigger[2] <= SMEM_LIMIT[arch] < bigger[2] + static64


KERNEL = re.compile(r"na_fused_kernelI(f|6__half|13__nv_bfloat16)Li(\d+)ELb([01])E")


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
    # fp32, fp16, bf16: 3 generic tiles each (the WMMA path is no longer launched: the core in na_core.cu replaced it)
    assert len(compiled) == 9, compiled
    elem = {"f": 4, "6__half": 2, "13__nv_bfloat16": 2}
    keys = sorted(compiled)
    planned = ask(launch_dump, [f"S {elem[t]} {tile} {tc}" for t, tile, tc in keys])
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
