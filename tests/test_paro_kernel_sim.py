"""PARO as the native code computes it (the quantization pre-pass and the fused core's PARO tile policy),
replayed on the CPU (attn_export.models.paro_kernel_sim), against the reference op (models/paro.py) on random
grids, prefixes, per-head orders and layouts: rows gathered through perm_idx and scattered back, the listed
blocks of the permuted sequence visited in order and exactly once, the partial tail block masked, QK scales per
row and column group, and P quantized per tile against the running max of the online softmax.

Tolerances (docs/ops/paro_attention.md, Native kernels and Tolerances): qk_bits = pv_bits = 16: atol 1e-5 (the
same math in another order); quantized QK with 16-bit PV: atol 1e-5 too (the pre-pass rounds exactly as the
reference); quantized PV: cosine >= 0.999 and relative L2 <= 1e-2 at INT8 (measured worst over 10 seeds: 0.99998 /
0.0063), and the documented INT4 PV figures: cosine >= 0.99, relative L2 <= 0.15 (measured worst: 0.9945 / 0.105):
the per-tile P scale sees the running row max instead of the final one, and 7 levels make that visible."""

from __future__ import annotations

import math
import random

import pytest
import torch

from attn_export.models import paro_kernel_sim as sim
from attn_export.models.block_layout import from_block_mask
from attn_export.models.paro import grid_permutation, paro_attention


def random_case(seed: int, bits=(8, 8), smooth_k=True, dim=None):
    rng = random.Random(seed)
    grid = (rng.randint(1, 3), rng.randint(3, 9), rng.randint(3, 9))
    prefix = rng.choice([0, 0, 5, 13])
    n = prefix + math.prod(grid)
    batch, heads, dim = rng.randint(1, 2), rng.randint(1, 2), dim or rng.choice([8, 16])
    nb = -(-n // 64)
    lead = rng.choice([1, batch])
    mask = torch.rand(lead, heads, nb, nb, generator=torch.Generator().manual_seed(seed)) < rng.choice([0.3, 0.6, 1])
    mask |= torch.eye(nb, dtype=torch.bool)
    count, index = from_block_mask(mask, max_blocks=nb + rng.randint(0, 1))
    perm = torch.stack([grid_permutation(rng.randrange(6), grid, prefix) for _ in range(heads)]).to(torch.int32)
    gen = torch.Generator().manual_seed(seed + 1)
    q, k, v = (torch.randn(batch, heads, n, dim, generator=gen) for _ in range(3))
    k = k + rng.choice([0.0, 2.0])  # an offset that K smoothing removes
    kw = dict(block=64, qk_bits=bits[0], pv_bits=bits[1], q_group=rng.choice([4, 32, 50]),
              k_group=rng.choice([8, 64, 100]), smooth_k=smooth_k, scale=rng.choice([None, 0.3]))
    return (q, k, v, perm, count, index), kw


def agreement(out, ref):
    out, ref = out.double().flatten(), ref.double().flatten()
    cosine = float(torch.nn.functional.cosine_similarity(out, ref, dim=0))
    return cosine, float((out - ref).norm() / ref.norm())


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("qk_bits", [16, 8, 4])
def test_unquantized_p_matches_the_reference(seed, qk_bits):
    args, kw = random_case(seed, bits=(qk_bits, 16), smooth_k=seed % 2 == 0)
    ref = paro_attention(*args, **kw)
    stats = sim.SimStats()
    out = sim.simulate(*args, **kw, stats=stats, track_pairs=True)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    # Every listed (permuted query, permuted key) pair, exactly once.
    q, count, index = args[0], args[4], args[5]
    batch, heads, n, _ = q.shape
    nb = -(-n // 64)
    expected = set()
    for b in range(batch):
        for h in range(heads):
            for row in range(nb):
                blocks = sim.block_row(count, index, b, h, row, nb)
                keys = [key for blk in blocks for key in range(blk * 64, min(blk * 64 + 64, n))]
                for query in range(row * 64, min(row * 64 + 64, n)):
                    expected.update((b, h, query, key) for key in keys)
    assert set(stats.pairs) == expected and set(stats.pairs.values()) == {1}
    assert stats.masked_tiles <= stats.kv_tiles and (n % 64 != 0 or stats.masked_tiles == 0)


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("qk_bits", [16, 8])
def test_int8_p_within_paro_tolerance(seed, qk_bits):
    args, kw = random_case(seed, bits=(qk_bits, 8))
    stats = sim.SimStats()
    cosine, rel = agreement(sim.simulate(*args, **kw, stats=stats), paro_attention(*args, **kw))
    assert cosine >= 0.999 and rel <= 1e-2, (cosine, rel)
    assert stats.p_scales and all(0 < s <= 1 / 127 + 1e-9 for s in stats.p_scales)  # p <= 1 under the running max


@pytest.mark.parametrize("seed", range(10))
def test_int4_documented_figures(seed):
    args, kw = random_case(seed, bits=(4, 4))
    cosine, rel = agreement(sim.simulate(*args, **kw), paro_attention(*args, **kw))
    assert cosine >= 0.99 and rel <= 0.15, (cosine, rel)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_keep_integer_operands_exact(dtype):
    """The kernel stores the pre-pass's integers in the input type: |x| <= 127 is exact in fp16 and bf16, so
    half inputs quantize to the same operands as their fp32 values."""
    args, kw = random_case(3, bits=(8, 8), dim=32)
    low = [x.to(dtype) for x in args[:3]] + list(args[3:])
    ref = paro_attention(*[x.float() for x in low[:3]], *low[3:], **kw)
    cosine, rel = agreement(sim.simulate(*low, **kw).float(), ref)
    assert cosine >= 0.999 and rel <= 1e-2, (cosine, rel)
    assert torch.equal(torch.tensor(127.0).to(dtype).float(), torch.tensor(127.0))


def test_the_core_takes_block_64_only():
    args, kw = random_case(0)
    with pytest.raises(ValueError, match="block == 64"):
        sim.simulate(*args, **{**kw, "block": 32})


def two_tiles_apart(gap: float, dim: int = 16):
    """One query block listing kv blocks 0 and 1 in that order: every logit of block 0 is 0, every logit of block 1
    is -gap in base 2, so the later tile's largest probability is 2^-gap of the earlier one's."""
    n = 128
    q = torch.zeros(1, 1, n, dim)
    q[..., 0] = 1.0
    k = torch.zeros(1, 1, n, dim)
    k[:, :, 64:, 0] = -gap / sim.LOG2E  # natural-log logits; the kernel works in base 2
    # V near its channel maxima: quantized values near qmax, so the accumulator is large (~2^20 at INT8) too.
    v = 1.0 + 0.1 * torch.rand(1, 1, n, dim, generator=torch.Generator().manual_seed(5))
    perm = torch.arange(n, dtype=torch.int32)[None]
    count = torch.tensor([[[2, 1]]], dtype=torch.int32)
    index = torch.tensor([[[[0, 1], [1, -1]]]], dtype=torch.int32)
    return (q, k, v, perm, count, index), dict(block=64, qk_bits=16, smooth_k=False, scale=1.0)


@pytest.mark.parametrize("gap", [110, 120])
@pytest.mark.parametrize("pv_bits", [8, 4])
def test_quantized_p_stays_finite_when_a_later_tile_is_far_below(gap, pv_bits):
    """The rescale alpha * p_scale_prev / p_scale overflowed fp32 (inf/NaN output) when a later tile's largest
    probability was about 2^-105 of an earlier one's: the tile max is floored at 2^-30 (kernel, simulator and
    reference alike), so the factor stays <= 2^30 and such a tile quantizes to zeros."""
    args, kw = two_tiles_apart(gap)
    stats = sim.SimStats()
    out = sim.simulate(*args, **kw, pv_bits=pv_bits, stats=stats)
    assert torch.isfinite(out).all(), f"gap {gap}: {int((~torch.isfinite(out)).sum())} non-finite outputs"
    assert stats.p_scales[1] == pytest.approx(2.0**-30 / sim.qmax(pv_bits), rel=1e-6)  # the far tile: the floor
    torch.testing.assert_close(out, paro_attention(*args, **kw, pv_bits=pv_bits), atol=1e-5, rtol=0)


def test_invalid_permutation_is_clamped_like_kv_index():
    """perm_idx entries outside [0, N) are read clamped into range, as kv_index entries are (the kernels never
    address memory outside q, k, v and out): the result is that of the clamped indices. Which of two queries
    written to one position wins is unspecified, so the case repeats no clamped index."""
    args, kw = random_case(2, bits=(8, 8))
    q, k, v, perm, count, index = args
    n = q.shape[2]
    bad = perm.clone()
    bad[:, 0], bad[:, 1] = -7, n + 3  # the clamped values 0 and N-1: moved there from elsewhere
    for h in range(perm.shape[0]):
        rest = [x for x in perm[h].tolist() if x not in (0, n - 1)]
        bad[h, 2:] = torch.tensor(rest, dtype=torch.int32)
    clamped = bad.clamp(0, n - 1)
    assert sorted(clamped[0].tolist()) == list(range(n))
    out = sim.simulate(q, k, v, bad, count, index, **kw)
    torch.testing.assert_close(out, sim.simulate(q, k, v, clamped, count, index, **kw), atol=0, rtol=0)


def test_int_dots_are_the_float_dots_at_the_extremes():
    """The s8 MMA path (int8 Q and K, int32 accumulation, then fp32) gives the fp32 path's logits bit for bit
    (test_unquantized_p_matches_the_reference runs the simulator through int_dots): at head_dim 128 even
    all-(+-127) rows stay below 2^24, where fp32 holds every integer."""
    gen = torch.Generator().manual_seed(29)
    for dim in (32, 64, 128):
        a = torch.randint(-127, 128, (64, dim), generator=gen).float()
        b = torch.randint(-127, 128, (64, dim), generator=gen).float()
        a[0], b[0], b[1] = 127.0, 127.0, -127.0  # the largest dots: +-127^2 * dim
        dots = sim.int_dots(a, b)
        exact = a.double() @ b.double().T
        assert dots.dtype == torch.float32 and torch.equal(dots.double(), exact)
        assert float(dots[0, 0]) == 127 * 127 * dim and float(dots[0, 1]) == -127 * 127 * dim
    big = torch.full((1, 1041), 127.0)  # 127^2 * 1041 > 2^24: fp32 would round
    with pytest.raises(ValueError, match="2\\^24"):
        sim.int_dots(big, big)
    with pytest.raises(ValueError, match="integer values"):
        sim.int_dots(torch.full((1, 4), 0.5), torch.ones(1, 4))
