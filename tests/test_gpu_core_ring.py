"""GPU tier: the core's 3-stage cp.async ring (sm_90, head_dim <= 64: core_plan.h's core_stages) against the
2-stage ring it replaced there, through the same kernel library. The rings load the same kv tiles into different
shared-memory slots and compute in the same order, so the outputs must be bitwise equal: neighborhood,
block-sparse (128-query tiles, up to 14 kv tiles per query tile) and PARO (int8 QK, quantized P; a full layout,
7 kv tiles, and a diagonal one, 1 kv tile: fewer tiles than stages). The GPU tier's tolerances against the fp32
references are checked for the default ring by tests/test_gpu_sparse_kernels.py and tests/test_gpu_kernels.py.

The library reads ATTNX_CORE_STAGES once per process, so each ring runs in its own process: this file is also the
script that computes the outputs (`python tests/test_gpu_core_ring.py OUT.pt`). Each process also records the core
kernels it launched (torch.profiler), so that the test proves which ring ran instead of comparing a ring with
itself (a library without sm_90 code, for instance, takes 2 stages in both).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
# The core's instances by ring, as the profiler names them (demangled: "...Policy<...>, 3>(", or mangled "ELi3EEEv")
STAGES = re.compile(r"Policy<[^<>]*>, (\d)>|ELi(\d)EEEv")
CASES = {"neighborhood k7", "block-sparse 128", "paro int8", "paro int8 diagonal"}


def outputs() -> dict[str, torch.Tensor]:
    """The calls, on inputs made on the CPU from fixed seeds (the same in every process)."""
    sys.path.insert(0, str(HERE))
    from attn_export.models.block_layout import from_block_mask
    from attn_export.models.paro import grid_permutation

    from native_tools import gpu_kernels

    kernels = gpu_kernels()
    gen = torch.Generator().manual_seed(29)

    def randn(*shape):
        return torch.randn(*shape, generator=gen).to(torch.float16).cuda()

    def blocks(n_q, n_kv, density):
        mask = (torch.rand(1, 2, n_q, n_kv, generator=gen) < density) | torch.eye(n_q, n_kv, dtype=torch.bool)
        return [x.cuda() for x in from_block_mask(mask)]

    out = {}
    q, k, v = (randn(1, 24, 40, 2, 64) for _ in range(3))  # NATTEN layout: 2-D 24 x 40, 2 heads
    assert kernels.select_path(q, (7, 7)) == "core"
    out["neighborhood k7"] = kernels.neighborhood_attention(q, k, v, (7, 7))
    q, k, v = randn(1, 2, 700, 64), randn(1, 2, 900, 64), randn(1, 2, 900, 64)
    count, index = blocks(6, 8, 0.6)  # 128 x 128 blocks
    assert kernels.bsa_select_path(q, k, count, index, 128, 128) == "core"
    out["block-sparse 128"] = kernels.block_sparse_attention(q, k, v, count, index, 128, 128)
    grid, prefix = (3, 12, 12), 13
    n = prefix + 3 * 12 * 12
    q, k, v = (randn(1, 2, n, 64) for _ in range(3))
    perm = torch.stack([grid_permutation(h, grid, prefix) for h in range(2)]).to(torch.int32).cuda()
    kw = dict(block=64, qk_bits=8, pv_bits=8)
    for name, density in (("paro int8", 1.0), ("paro int8 diagonal", 0.0)):
        count, index = blocks(-(-n // 64), -(-n // 64), density)
        assert kernels.paro_select_path(q, count, index, **kw) == "core"
        out[name] = kernels.paro_attention(q, k, v, perm, count, index, **kw)
    return {name: t.cpu() for name, t in out.items()}


def profiled_outputs() -> dict:
    """outputs() and the stage counts of the core kernels it launched (None: the profiler saw no CUDA kernel)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        result = outputs()
        torch.cuda.synchronize()
    names = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    cores = sorted({name for name in names if "attention_core_kernel" in name})
    rings = {ring_of(name) for name in cores} if names else None
    return {"outputs": result, "rings": rings, "cores": cores}


def ring_of(kernel: str) -> int:
    """The stages of a core instance's name (0: a name this test cannot read)."""
    match = STAGES.search(kernel)
    return int(match.group(1) or match.group(2)) if match else 0


def run_both(tmp_path: Path, envs: dict[str, dict]) -> dict[str, dict]:
    """One process per ring, side by side (the gpu tier's per-test timeout is 30 s; each pays torch's start)."""
    procs = {name: subprocess.Popen([sys.executable, __file__, str(tmp_path / f"{name}.pt")], env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for name, env in envs.items()}
    try:
        for name, proc in procs.items():
            log, _ = proc.communicate(timeout=120)
            assert proc.returncode == 0, f"{name}: {log[-3000:]}"
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    return {name: torch.load(tmp_path / f"{name}.pt") for name in envs}


@pytest.mark.gpu
def test_the_two_rings_give_bitwise_equal_outputs(tmp_path):
    from native_tools import gpu_kernels

    gpu_kernels()  # the tier's skip when CUDA or the library is missing
    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("gpu tier: the 3-stage ring runs on sm_90 only; elsewhere both runs take 2 stages")
    env = {k: v for k, v in os.environ.items() if k != "ATTNX_CORE_STAGES"}
    runs = run_both(tmp_path, {"default": env, "two": dict(env, ATTNX_CORE_STAGES="2")})
    default, two = runs["default"], runs["two"]
    if default["rings"] is None or two["rings"] is None:
        pytest.skip("gpu tier: torch.profiler recorded no CUDA kernel (CUPTI missing?): which ring ran is unknown")
    assert default["rings"] == {3}, f"the default run's core kernels: {default['cores']}"
    assert two["rings"] == {2}, f"ATTNX_CORE_STAGES=2 run's core kernels: {two['cores']}"
    assert default["outputs"].keys() == two["outputs"].keys() == CASES
    for name in CASES:
        ours = default["outputs"][name]
        assert torch.isfinite(ours).all() and ours.abs().max() > 0, name
        assert torch.equal(ours, two["outputs"][name]), name


if __name__ == "__main__":
    torch.save(profiled_outputs(), sys.argv[1])
