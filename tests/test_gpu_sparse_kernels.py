"""GPU tier: the block-sparse and PARO kernels (fused core and generic fallback, through the C ABI) against
the fp32 PyTorch references, and the core against its CPU simulator.

Tolerances (docs/architecture.md, Test tiers; rtol 0): fp32 1e-4, fp16 1e-2, bf16 5e-2 for block-sparse and for
PARO without quantization; PARO with quantized P: cosine >= 0.999 and relative L2 <= 1e-2 at INT8
(docs/ops/paro_attention.md, Native kernels), cosine >= 0.99 and relative L2 <= 0.15 at INT4 (the simulator's
documented figures), and within 1e-2 of the simulator, which replays the core's own rounding. Fresh random
inputs; outputs poisoned with NaN.
Runs where CUDA and the kernel library are present (scripts/gpu-check.sh); skips elsewhere, saying why.
"""

from __future__ import annotations

import math
import random

import pytest
import torch

from attn_export.models import bsa_kernel_sim, paro_kernel_sim
from attn_export.models.block_layout import from_block_mask
from attn_export.models.block_sparse import block_sparse_attention, num_blocks
from attn_export.models.paro import grid_permutation, paro_attention

from native_tools import gpu_kernels

pytestmark = pytest.mark.gpu
TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}


@pytest.fixture(scope="module")
def kernels():
    return gpu_kernels()


def layout(rng: random.Random, lead_b, lead_h, n_qb, n_kvb, density, diagonal=False):
    mask = torch.rand(lead_b, lead_h, n_qb, n_kvb, generator=torch.Generator().manual_seed(rng.randint(0, 10**6)))
    mask = mask < density
    if diagonal:
        mask |= torch.eye(n_qb, n_kvb, dtype=torch.bool)
    return from_block_mask(mask, max_blocks=int(mask.sum(-1).max()) + rng.randint(0, 2))


def bsa_case(seed: int, dtype, dim, block_q=None):
    rng = random.Random(seed)
    batch, heads = rng.randint(1, 2), rng.randint(1, 3)
    block_q = block_q or rng.choice([64, 128, 16, 40])  # 16 / 40: the generic kernel
    block_kv = rng.choice([16, 64, 100, 128])
    sq, skv = rng.randint(1, 700), rng.randint(1, 900)
    count, index = layout(rng, rng.choice([1, batch]), rng.choice([1, heads]), num_blocks(sq, block_q),
                          num_blocks(skv, block_kv), rng.choice([0.0, 0.3, 1.0]))
    gen = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(batch, heads, sq, dim, generator=gen, device="cuda").to(dtype)
    k = torch.randn(batch, heads, skv, dim, generator=gen, device="cuda").to(dtype)
    v = torch.randn(batch, heads, skv, dim, generator=gen, device="cuda").to(dtype)
    return q, k, v, count.cuda(), index.cuda(), block_q, block_kv, rng.choice([None, 0.3])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("dim", [32, 64, 128, 48])
@pytest.mark.parametrize("seed", range(6))
def test_block_sparse_random_configs(kernels, dtype, dim, seed):
    q, k, v, count, index, block_q, block_kv, scale = bsa_case(seed, dtype, dim)
    out = torch.full_like(q, float("nan"))
    kernels.block_sparse_attention(q, k, v, count, index, block_q, block_kv, scale=scale, out=out)
    torch.cuda.synchronize()
    ref = block_sparse_attention(q.float().cpu(), k.float().cpu(), v.float().cpu(), count.cpu(), index.cpu(),
                                 block_q, block_kv, scale=scale)
    assert torch.isfinite(out).all(), "the kernel left unwritten (NaN) outputs"
    torch.testing.assert_close(out.float().cpu(), ref, atol=TOLERANCE[dtype], rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_block_sparse_core_path_and_its_simulator(kernels, dtype):
    q, k, v, count, index, block_q, block_kv, _ = bsa_case(3, dtype, 64, block_q=128)
    assert kernels.bsa_select_path(q, k, count, index, block_q, block_kv) == "core"
    assert kernels.bsa_select_path(q.float(), k.float(), count, index, block_q, block_kv) == "generic"
    assert kernels.bsa_select_path(q, k, count, index, 32, block_kv) == "generic"
    out = kernels.block_sparse_attention(q, k, v, count, index, block_q, block_kv).float().cpu()
    simulated = bsa_kernel_sim.simulate(q.cpu(), k.cpu(), v.cpu(), count.cpu(), index.cpu(), block_q, block_kv)
    torch.testing.assert_close(out, simulated.float(), atol=TOLERANCE[dtype], rtol=0)


# (seq_q, seq_kv, block_kv, density): a partial last query tile (rows past seq_q), kv blocks that do not fill a
# 64-key tile (16, 100: masked kv tiles, the per-tile keep bits), a partial tail block, empty rows (density 0).
WIDE_CASES = [(300, 700, 16, 0.3), (700, 250, 100, 1.0), (129, 900, 64, 0.0), (513, 513, 128, 0.6)]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("dim", [32, 64, 128])  # 128: two 32-key steps per kv tile (attn_core.cuh's core_split)
@pytest.mark.parametrize("block_q", [128, 256])
def test_block_sparse_whole_128_query_blocks(kernels, dtype, dim, block_q):
    # The core's 128-query tiles (core_plan.h's bsa_row_tiles, on sm_90; elsewhere the same calls take 64-query
    # tiles, whole-tile softmax steps) against the fp32 reference and the simulator (which replays the key steps).
    key_step = None if torch.cuda.get_device_capability()[0] == 9 else bsa_kernel_sim.TILE
    for seed, (sq, skv, block_kv, density) in enumerate(WIDE_CASES):
        scale = (None, 0.3)[seed % 2]
        rng = random.Random(seed * 7 + block_q)
        count, index = layout(rng, 1, 2, num_blocks(sq, block_q), num_blocks(skv, block_kv), density)
        gen = torch.Generator(device="cuda").manual_seed(seed)
        q, k, v = (torch.randn(2, 2, n, dim, generator=gen, device="cuda").to(dtype) for n in (sq, skv, skv))
        count, index = count.cuda(), index.cuda()
        assert kernels.bsa_select_path(q, k, count, index, block_q, block_kv) == "core"
        out = torch.full_like(q, float("nan"))
        kernels.block_sparse_attention(q, k, v, count, index, block_q, block_kv, scale=scale, out=out)
        torch.cuda.synchronize()
        assert torch.isfinite(out).all(), "the kernel left unwritten (NaN) outputs"
        cpu = [x.cpu() for x in (q, k, v, count, index)]
        ref = block_sparse_attention(*[x.float() for x in cpu[:3]], *cpu[3:], block_q, block_kv, scale=scale)
        torch.testing.assert_close(out.float().cpu(), ref, atol=TOLERANCE[dtype], rtol=0)
        simulated = bsa_kernel_sim.simulate(*cpu, block_q, block_kv, scale=scale, key_step=key_step)
        torch.testing.assert_close(out.float().cpu(), simulated.float(), atol=TOLERANCE[dtype], rtol=0)


def paro_case(seed: int, dtype, dim, bits, block=64):
    rng = random.Random(seed)
    grid = (rng.randint(1, 3), rng.randint(4, 12), rng.randint(4, 12))
    prefix = rng.choice([0, 13])
    n = prefix + math.prod(grid)
    batch, heads = rng.randint(1, 2), rng.randint(1, 3)
    nb = -(-n // block)
    count, index = layout(rng, rng.choice([1, batch]), heads, nb, nb, rng.choice([0.3, 0.6, 1.0]), diagonal=True)
    perm = torch.stack([grid_permutation(rng.randrange(6), grid, prefix) for _ in range(heads)]).to(torch.int32)
    gen = torch.Generator(device="cuda").manual_seed(seed)
    q, k, v = (torch.randn(batch, heads, n, dim, generator=gen, device="cuda").to(dtype) for _ in range(3))
    kw = dict(block=block, qk_bits=bits[0], pv_bits=bits[1], q_group=rng.choice([32, 50]),
              k_group=rng.choice([64, 100]), smooth_k=True, scale=rng.choice([None, 0.3]))
    return (q, k, v, perm.cuda(), count.cuda(), index.cuda()), kw


def agreement(out, ref):
    out, ref = out.double().flatten(), ref.double().flatten()
    return float(torch.nn.functional.cosine_similarity(out, ref, dim=0)), float((out - ref).norm() / ref.norm())


def run_paro(kernels, args, kw):
    out = torch.full_like(args[0], float("nan"))
    kernels.paro_attention(*args, **kw, out=out)
    torch.cuda.synchronize()
    assert torch.isfinite(out).all(), "the kernel left unwritten (NaN) outputs"
    cpu = [a.cpu() for a in args]
    ref = paro_attention(*[x.float() for x in cpu[:3]], *cpu[3:], **kw)
    return out.float().cpu(), ref, cpu


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("block", [64, 32])  # 32: the generic kernel
@pytest.mark.parametrize("seed", range(4))
def test_paro_without_quantization(kernels, dtype, block, seed):
    args, kw = paro_case(seed, dtype, 64, (16, 16), block)
    out, ref, _ = run_paro(kernels, args, kw)
    torch.testing.assert_close(out, ref, atol=TOLERANCE[dtype], rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("bits", [(8, 8), (8, 16), (4, 4), (16, 8)], ids=str)
@pytest.mark.parametrize("seed", range(3))
def test_paro_quantized(kernels, dtype, bits, seed):
    args, kw = paro_case(10 + seed, dtype, 64, bits)
    out, ref, cpu = run_paro(kernels, args, kw)
    cosine, rel = agreement(out, ref)
    if bits[1] == 4:
        assert cosine >= 0.99 and rel <= 0.15, (cosine, rel)
    else:
        assert cosine >= 0.999 and rel <= 1e-2, (cosine, rel)
    if dtype != torch.float32:  # the core: its own rounding, replayed
        simulated = paro_kernel_sim.simulate(*[x.float() for x in cpu[:3]], *cpu[3:], **kw)
        torch.testing.assert_close(out, simulated, atol=1e-2, rtol=0)


@pytest.mark.parametrize("dim", [32, 128])  # 64: test_paro_quantized; each head_dim has its own int8 tile layout
@pytest.mark.parametrize("bits", [(8, 8), (8, 16), (4, 4)], ids=str)
def test_paro_int8_qk_core_at_every_head_dim(kernels, dim, bits):
    """qk_bits < 16 runs S = Q K^T on the s8 MMA (int8 Q and K from the pre-pass): the same integers as the
    simulator's int_dots at every head_dim's tile geometry."""
    args, kw = paro_case(40 + dim, torch.float16, dim, bits)
    out, ref, cpu = run_paro(kernels, args, kw)
    cosine, rel = agreement(out, ref)
    assert (cosine >= 0.99 and rel <= 0.15) if bits[1] == 4 else (cosine >= 0.999 and rel <= 1e-2), (cosine, rel)
    simulated = paro_kernel_sim.simulate(*[x.float() for x in cpu[:3]], *cpu[3:], **kw)
    torch.testing.assert_close(out, simulated, atol=1e-2, rtol=0)


def test_paro_paths_and_workspace(kernels):
    args, kw = paro_case(0, torch.float16, 64, (8, 8))
    q, _, _, _, count, index = args
    assert kernels.paro_select_path(q, count, index, **{k: kw[k] for k in ("block", "qk_bits", "pv_bits")}) == "core"
    assert kernels.paro_select_path(q.float(), count, index, block=64) == "generic"
    p = kernels.paro_params(q, count, index, **{k: v for k, v in kw.items() if k != "scale"})
    assert kernels.lib.attnx_paro_workspace_size(p) > 3 * q.numel() * 2


def test_empty_batch_and_invalid_layout(kernels):
    q = torch.randn(0, 2, 64, 32, device="cuda", dtype=torch.float16)
    count = torch.ones(1, 2, 1, dtype=torch.int32, device="cuda")
    index = torch.zeros(1, 2, 1, 1, dtype=torch.int32, device="cuda")
    assert kernels.block_sparse_attention(q, q, q, count, index, 64, 64).shape == q.shape
    q = torch.randn(1, 2, 130, 32, device="cuda", dtype=torch.float16)
    with pytest.raises(Exception, match="query-block rows"):
        kernels.block_sparse_attention(q, q, q, count, index, 64, 64)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)  # the core; the generic kernel
@pytest.mark.parametrize("gap", [110, 120])
def test_paro_quantized_p_stays_finite_when_a_later_tile_is_far_below(kernels, dtype, gap):
    """Kv block 1 listed after block 0, its logits `gap` (base 2) below: the online rescale by the P scales
    overflowed fp32 (inf/NaN) before the tile max was floored at 2^-30 (docs/ops/paro_attention.md)."""
    n, dim = 128, 64
    q, k = torch.zeros(1, 1, n, dim), torch.zeros(1, 1, n, dim)
    q[..., 0], k[:, :, 64:, 0] = 1.0, -gap / paro_kernel_sim.LOG2E
    v = 1.0 + 0.1 * torch.rand(1, 1, n, dim, generator=torch.Generator().manual_seed(gap))
    layout_ = (torch.tensor([[[2, 1]]], dtype=torch.int32), torch.tensor([[[[0, 1], [1, -1]]]], dtype=torch.int32))
    args = (*(x.to(dtype).cuda() for x in (q, k, v)), torch.arange(n, dtype=torch.int32)[None].cuda(),
            *(x.cuda() for x in layout_))
    kw = dict(block=64, qk_bits=16, pv_bits=8, q_group=32, k_group=64, smooth_k=False, scale=1.0)
    out, ref, _ = run_paro(kernels, args, kw)  # asserts every output finite
    torch.testing.assert_close(out, ref, atol=TOLERANCE[dtype], rtol=0)


@pytest.mark.parametrize("dtype, bits", [(torch.float16, (8, 8)), (torch.float16, (16, 16)), (torch.float32, (8, 8))],
                         ids=str)
def test_paro_invalid_permutation_is_read_clamped(kernels, dtype, bits):
    """perm_idx entries outside [0, N) are read clamped, as kv_index entries are: the output equals that of the
    clamped indices (no position repeats here), and nothing is accessed out of bounds (memcheck runs this file's
    failures)."""
    args, kw = paro_case(3, dtype, 64, bits)
    q, k, v, perm, count, index = args
    n = q.shape[2]
    bad = perm.cpu().clone()
    bad[:, 0], bad[:, 1] = -7, n + 3
    for h in range(bad.shape[0]):
        bad[h, 2:] = torch.tensor([x for x in perm[h].tolist() if x not in (0, n - 1)], dtype=torch.int32)
    outs = [kernels.paro_attention(q, k, v, p.cuda(), count, index, **kw) for p in (bad, bad.clamp(0, n - 1))]
    torch.cuda.synchronize()
    assert torch.isfinite(outs[0]).all() and torch.equal(outs[0], outs[1])
