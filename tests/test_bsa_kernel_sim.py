"""The fused core's block-sparse tile policy, replayed on the CPU (attn_export.models.bsa_kernel_sim), against
the reference op (models/block_sparse.py) on random configurations: the virtual key sequence of each query
block's listed blocks, the 64-slot tiles in list order, the tile_masked rule (a tile it calls interior holds
only real keys), the online base-2 softmax, and rows without a block. Tolerances: fp32 inputs atol 1e-5;
fp16/bf16 inputs (P rounded to the input type before P.V, as the kernel does) within the GPU tier's 1e-2 / 5e-2
of the fp32 reference."""

from __future__ import annotations

import random

import pytest
import torch

from attn_export.models import bsa_kernel_sim as sim
from attn_export.models.block_sparse import block_sparse_attention, num_blocks

from helpers import random_layout


def random_config(seed: int, dim=None, block_q=None):
    rng = random.Random(seed)
    batch, heads = rng.randint(1, 2), rng.randint(1, 2)
    dim = dim or rng.choice([8, 16])
    block_q = block_q or rng.choice([64, 128])
    block_kv = rng.choice([1, 7, 16, 32, 48, 64, 100, 128])
    sq, skv = rng.randint(1, 260), rng.randint(1, 300)
    lead_b, lead_h = rng.choice([1, batch]), rng.choice([1, heads])
    count, index = random_layout(rng, lead_b, lead_h, num_blocks(sq, block_q), num_blocks(skv, block_kv),
                                 rng.choice([0.0, 0.3, 0.6, 1.0]))
    if rng.random() < 0.5:  # kv_count and kv_index broadcast independently
        count = count.expand(batch, heads, -1).contiguous() if count.shape[:2] == (1, 1) else count
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, sq, dim, generator=gen)
    k = torch.randn(batch, heads, skv, dim, generator=gen)
    v = torch.randn(batch, heads, skv, dim, generator=gen)
    return q, k, v, count, index, block_q, block_kv, rng.choice([None, 0.3])


def expected_pairs(kv_count, kv_index, batch, heads, sq, skv, block_q, block_kv) -> set:
    """Every (b, h, query, key) that the layout lists: the pairs the kernel must visit exactly once."""
    pairs = set()
    for b in range(batch):
        for h in range(heads):
            for row in range(num_blocks(sq, block_q)):
                blocks = sim.block_row(kv_count, kv_index, b, h, row, max(num_blocks(skv, block_kv), 1))
                keys = [key for blk in blocks for key in range(blk * block_kv, min((blk + 1) * block_kv, skv))]
                for query in range(row * block_q, min((row + 1) * block_q, sq)):
                    pairs.update((b, h, query, key) for key in keys)
    return pairs


@pytest.mark.parametrize("seed", range(30))
def test_simulated_core_matches_reference(seed):
    q, k, v, count, index, block_q, block_kv, scale = random_config(seed)
    ref = block_sparse_attention(q, k, v, count, index, block_q, block_kv, scale=scale)
    stats = sim.SimStats()
    out = sim.simulate(q, k, v, count, index, block_q, block_kv, scale=scale, stats=stats, track_pairs=True)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    # Every listed (query, key) pair visited exactly once: no duplicate, none skipped.
    assert set(stats.pairs) == expected_pairs(count, index, q.shape[0], q.shape[1], q.shape[2], k.shape[2],
                                               block_q, block_kv)
    assert set(stats.pairs.values()) <= {1}


@pytest.mark.parametrize("dtype, atol", [(torch.float16, 1e-2), (torch.bfloat16, 5e-2)])
@pytest.mark.parametrize("seed", range(4))
def test_rounding_p_to_the_input_type_stays_within_the_gpu_tolerance(dtype, atol, seed):
    q, k, v, count, index, block_q, block_kv, scale = random_config(100 + seed, dim=32)
    ref = block_sparse_attention(q, k, v, count, index, block_q, block_kv, scale=scale)
    out = sim.simulate(q.to(dtype), k.to(dtype), v.to(dtype), count, index, block_q, block_kv, scale=scale)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref, atol=atol, rtol=0)


def test_key_steps_of_the_128_query_tiles_at_head_dim_128():
    # core_split: 32-key online-softmax steps for block_q % 128 == 0 at head_dim 128, whole 64-key tiles otherwise.
    assert [sim.key_step_of(bq, d) for bq, d in [(128, 128), (256, 128), (64, 128), (192, 128), (128, 64)]] == \
        [32, 32, 64, 64, 64]
    differ = 0
    for seed in range(6):
        q, k, v, count, index, _, block_kv, scale = random_config(200 + seed, dim=128, block_q=128)
        ref = block_sparse_attention(q, k, v, count, index, 128, block_kv, scale=scale)
        out = sim.simulate(q, k, v, count, index, 128, block_kv, scale=scale)  # steps of 32 keys
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
        half = sim.simulate(q.half(), k.half(), v.half(), count, index, 128, block_kv, scale=scale)
        whole = sim.simulate(q.half(), k.half(), v.half(), count, index, 128, block_kv, scale=scale, key_step=64)
        torch.testing.assert_close(half.float(), ref, atol=1e-2, rtol=0)
        # the step changes only the rounding of P (its exp2 base), not what is computed
        torch.testing.assert_close(half.float(), whole.float(), atol=1e-2, rtol=0)
        differ += not torch.equal(half, whole)
    assert differ, "key_step=32 replayed exactly as 64: the steps are not replayed"


def test_aligned_blocks_are_never_masked():
    """block_kv a multiple of 64 and seq_kv of block_kv: every tile is interior (no element mask at all)."""
    from attn_export.models import block_layout

    q, k, v = (torch.randn(1, 2, 256, 16) for _ in range(3))
    mask = torch.rand(1, 2, 2, 4, generator=torch.Generator().manual_seed(1)) < 0.6
    mask[..., 0] = True
    count, index = block_layout.from_block_mask(mask)
    stats = sim.SimStats()
    out = sim.simulate(q, k, v, count, index, 128, 64, stats=stats)
    assert stats.kv_tiles > 0 and stats.masked_tiles == 0
    torch.testing.assert_close(out, block_sparse_attention(q, k, v, count, index, 128, 64), atol=1e-5, rtol=0)


def test_small_kv_blocks_share_a_tile_and_the_partial_tail_is_masked():
    """block_kv 16: four listed blocks fill one 64-key tile; the tail block of seq_kv 70 needs the mask."""
    keys = sim.VirtualKeys([0, 2, 3, 1], 16, 70)
    assert [keys.key(v) for v in (0, 16, 32, 48, 63)] == [0, 32, 48, 16, 31] and not keys.tile_masked(0)
    tail = sim.VirtualKeys([4, 0], 16, 70)  # block 4 holds keys 64..69 only
    assert tail.key(5) == 69 and tail.key(6) == -1 and tail.tile_masked(0)
    assert sim.VirtualKeys([0, 1, 2], 16, 70).tile_masked(0)  # 48 slots: the tile runs past the list


def test_rows_without_blocks_are_zero_and_block_q_must_fill_tiles():
    q, k, v = (torch.randn(1, 1, 100, 8) for _ in range(3))
    count = torch.zeros(1, 1, 2, dtype=torch.int32)
    index = torch.full((1, 1, 2, 1), -1, dtype=torch.int32)
    assert torch.equal(sim.simulate(q, k, v, count, index, 64, 64), torch.zeros_like(q))
    with pytest.raises(ValueError, match="multiples of 64"):
        sim.simulate(q, k, v, count, index, 32, 64)


def test_core_exp2_is_exp2_with_results_below_the_smallest_normal_flushed():
    """attn_core.cuh's exp2_ftz (ex2.approx.ftz) as the simulators replay it: exp2's value from 2^-126 up, 0 below
    (exp2f would return the subnormal)."""
    x = torch.tensor([3.0, 0.0, -1.0, -125.5, -126.0, -126.25, -140.0, -149.0, float("-inf")])
    y = sim.exp2_ftz(x)
    assert torch.equal(y[:5], torch.exp2(x[:5])) and bool((y[:5] >= sim.FTZ_BELOW).all())
    assert bool((torch.exp2(x[5:8]) > 0).all()) and torch.equal(y[5:], torch.zeros(4))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_flushed_probabilities_change_nothing_visible(dtype):
    """Logits spread over hundreds of base-2 units, so that many probabilities fall below 2^-126 (0 in the core,
    subnormal in exp2f; bf16 P keeps fp32's exponent range, so there they would survive the rounding): the
    replay still matches the reference op to fp32 precision (fp32) or the usual bf16 rounding of P."""
    gen = torch.Generator().manual_seed(7)
    q = torch.randn(1, 2, 128, 16, generator=gen) * 12
    k = torch.randn(1, 2, 150, 16, generator=gen) * 12
    v = torch.randn(1, 2, 150, 16, generator=gen)
    count = torch.full((1, 1, 2), 3, dtype=torch.int32)
    index = torch.arange(3, dtype=torch.int32).expand(1, 1, 2, 3).contiguous()
    logits = (q @ k.transpose(-1, -2)) * 16**-0.5 * sim.LOG2E
    gaps = logits.amax(dim=-1, keepdim=True) - logits
    assert float((gaps > 126).float().mean()) > 0.1  # the flush is exercised, not idle
    q, k, v = (x.to(dtype) for x in (q, k, v))
    ref = block_sparse_attention(q.float(), k.float(), v.float(), count, index, 64, 64)
    out = sim.simulate(q, k, v, count, index, 64, 64).float()
    torch.testing.assert_close(out, ref, atol=1e-5 if dtype == torch.float32 else 2e-2, rtol=0)


def test_fma32_rounds_once():
    """The replay of the core's folded exponent, fma(score, scale, -max): one rounding, where a multiply then an
    add rounds twice (here the product's last bit, 2^-24, is lost by the separate multiply)."""
    a = torch.tensor([1 + 2**-12], dtype=torch.float32)
    c = torch.tensor([-(1 + 2**-11)], dtype=torch.float32)
    assert float(a * float(a) + c) == 0.0
    assert float(sim.fma32(a, float(a), c)) == 2**-24
