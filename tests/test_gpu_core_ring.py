"""GPU tier: the core's 3-stage cp.async ring (sm_90, head_dim <= 64: core_plan.h's core_stages) against the
2-stage ring it replaced there, through the same kernel library. The rings load the same kv tiles into different
shared-memory slots and compute in the same order, so the outputs must be bitwise equal, for neighborhood,
block-sparse (128-query tiles) and PARO (int8 QK, quantized P) calls with many kv tiles per query tile, and must
stay within the GPU tier's tolerances of the fp32 references (tests/test_gpu_sparse_kernels.py and
tests/test_gpu_kernels.py check those for the default ring).

The library reads ATTNX_CORE_STAGES once per process, so each ring runs in its own process: this file is also
the script that computes the outputs (`python tests/test_gpu_core_ring.py OUT.pt`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent


def outputs() -> dict[str, torch.Tensor]:
    """The three calls, on inputs made on the CPU from fixed seeds (the same in every process)."""
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
    count, index = blocks(6, 8, 0.6)  # 128 x 128 blocks: up to 16 kv tiles per query tile
    assert kernels.bsa_select_path(q, k, count, index, 128, 128) == "core"
    out["block-sparse 128"] = kernels.block_sparse_attention(q, k, v, count, index, 128, 128)
    grid, prefix = (3, 12, 12), 13
    n = prefix + 3 * 12 * 12
    q, k, v = (randn(1, 2, n, 64) for _ in range(3))
    perm = torch.stack([grid_permutation(h, grid, prefix) for h in range(2)]).to(torch.int32).cuda()
    count, index = blocks(-(-n // 64), -(-n // 64), 1.0)
    assert kernels.paro_select_path(q, count, index, block=64, qk_bits=8, pv_bits=8) == "core"
    out["paro int8"] = kernels.paro_attention(q, k, v, perm, count, index, block=64, qk_bits=8, pv_bits=8)
    return {name: t.cpu() for name, t in out.items()}


def run_both(tmp_path: Path, envs: dict[str, dict]) -> dict[str, dict[str, torch.Tensor]]:
    """One process per ring, run side by side (the gpu tier's per-test timeout is 30 s; each pays torch's start)."""
    procs = {name: subprocess.Popen([sys.executable, __file__, str(tmp_path / f"{name}.pt")], env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for name, env in envs.items()}
    for name, proc in procs.items():
        log, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"{name}: {log[-3000:]}"
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
    assert default.keys() == two.keys() == {"neighborhood k7", "block-sparse 128", "paro int8"}
    for name in default:
        assert torch.isfinite(default[name]).all() and default[name].abs().max() > 0, name
        assert torch.equal(default[name], two[name]), name


if __name__ == "__main__":
    torch.save(outputs(), sys.argv[1])
