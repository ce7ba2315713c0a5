"""The CUDA kernel's algorithm, replayed on the CPU (attn_export.models.na_kernel_sim), against the
reference op on random configurations: the tiling, kv tile order, masks and online softmax are right
before any GPU runs them."""

from __future__ import annotations

import math
import random

import pytest
import torch

from attn_export.models import na_kernel_sim as sim
from attn_export.models.neighborhood import NAParams, neighborhood_attention, neighborhood_index


def random_config(rng: random.Random):
    rank = rng.randint(1, 3)
    kernel, stride, dilation, causal, spatial = [], [], [], [], []
    for _ in range(rank):
        k = rng.randint(2, 5 if rank == 3 else 7)
        d = rng.choice([1, 1, 2])
        kernel.append(k)
        stride.append(rng.randint(1, k))
        dilation.append(d)
        causal.append(rng.random() < 0.3)
        spatial.append(rng.randint(k * d, k * d + (4 if rank == 3 else 9)))
    use_rpb = not any(causal) and rng.random() < 0.4
    return spatial, dict(kernel_size=kernel, stride=stride, dilation=dilation, is_causal=causal), use_rpb


def make_inputs(spatial, kw, use_rpb, heads=2, dim=8, batch=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, *spatial, heads, dim, generator=gen) for _ in range(3))
    rpb = torch.randn(heads, *[2 * x - 1 for x in kw["kernel_size"]], generator=gen) if use_rpb else None
    return q, k, v, rpb


@pytest.mark.parametrize("seed", range(40))
def test_simulated_kernel_matches_reference(seed):
    rng = random.Random(seed)
    spatial, kw, use_rpb = random_config(rng)
    q, k, v, rpb = make_inputs(spatial, kw, use_rpb, seed=seed)
    scale = rng.choice([None, 0.3])
    ref = neighborhood_attention(q, k, v, scale=scale, rpb=rpb, **kw)
    stats = sim.SimStats()
    out = sim.simulate(q, k, v, scale=scale, rpb=rpb, tile_tokens=rng.choice([16, 64]), stats=stats, **kw)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0, msg=lambda m: f"{spatial} {kw} rpb={use_rpb}: {m}")
    # Every (query, key) pair of every window is visited exactly once: no duplicate, none skipped.
    params = NAParams.from_args(len(spatial), **kw)
    _, _, valid = neighborhood_index(spatial, params)
    expected_pairs = math.prod(spatial) * params.window_size if valid is None else int(valid.sum())
    assert stats.kv_slots_in_window == expected_pairs


@pytest.mark.parametrize("dtype, atol", [(torch.float16, 1e-2), (torch.bfloat16, 5e-2)])
@pytest.mark.parametrize("seed", range(6))
def test_core_p_rounding_stays_within_the_gpu_tolerance(dtype, atol, seed):
    """The core rounds P to the input dtype for its P.V MMA: still inside the gpu tier's tolerance against fp32
    (docs/architecture.md, Test tiers)."""
    spatial, kw, use_rpb = random_config(random.Random(100 + seed))
    q, k, v, rpb = make_inputs(spatial, kw, use_rpb, dim=32, seed=seed)
    ref = neighborhood_attention(q, k, v, rpb=rpb, **kw)
    low = [x.to(dtype) for x in (q, k, v)]
    out = sim.simulate(*low, rpb=None if rpb is None else rpb.to(dtype), round_p=True, **kw)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref, atol=atol, rtol=0)


@pytest.mark.parametrize("seed", range(40, 60))
def test_core_interior_tiles_are_sound_on_random_configs(seed):
    """simulate() asserts on every tile the core's interior rule lets through unmasked that no pair of it is
    outside a window; large windows must actually produce interior tiles."""
    spatial, kw, use_rpb = random_config(random.Random(seed))
    kw["kernel_size"] = [max(k, 4) for k in kw["kernel_size"]]
    room = {1: 40, 2: 8, 3: 2}[len(spatial)]  # Python loops over tiles: keep 2-D and 3-D small
    spatial = [max(n, k * d + room) for n, k, d in zip(spatial, kw["kernel_size"], kw["dilation"], strict=True)]
    q, k, v, _ = make_inputs(spatial, kw, False, heads=1, batch=1, seed=seed)
    stats = sim.SimStats()
    out = sim.simulate(q, k, v, stats=stats, **kw)
    torch.testing.assert_close(out, neighborhood_attention(q, k, v, **kw), atol=1e-5, rtol=0)


def test_core_skips_the_mask_on_large_windows():
    q, k, v, _ = make_inputs([256], dict(kernel_size=[129]), False, batch=1, heads=1)
    stats = sim.SimStats()
    sim.simulate(q, k, v, kernel_size=129, stats=stats)
    assert stats.interior_tiles >= stats.query_tiles  # at least one unmasked tile per query tile


def test_blocked_windows_need_no_masking_inside_tiles():
    """stride == kernel (blocked attention) with a tile-aligned window: every visited kv slot counts."""
    q, k, v, _ = make_inputs([16, 16], dict(kernel_size=[8, 8]), False, batch=1)
    stats = sim.SimStats()
    sim.simulate(q, k, v, kernel_size=8, stride=8, tile_tokens=64, stats=stats)
    assert stats.kv_tiles * 64 * 64 == stats.kv_slots_in_window  # 64 queries x 64 keys, all inside
    assert stats.query_tiles == 4 and stats.kv_tiles == 4
    assert stats.interior_tiles == 4  # the core masks none of them


def test_visits_only_the_tiles_a_query_tile_touches():
    """A 1-D sequence with a small kernel: each query tile visits its own kv tile and one neighbour,
    not all of them (cost linear in length, not quadratic)."""
    q, k, v, _ = make_inputs([1024], dict(kernel_size=[9]), False, batch=1, heads=1)
    stats = sim.SimStats()
    sim.simulate(q, k, v, kernel_size=9, tile_tokens=64, stats=stats)
    assert stats.query_tiles == 16
    assert stats.kv_tiles <= 2 * stats.query_tiles


def test_warps_skip_the_mask_where_the_whole_tile_cannot():
    """1-D, kernel 100, 64-query tiles: away from the borders (where windows shift and coincide) no kv tile lies
    inside all 64 windows of a query tile (that needs k >= 127), but many lie inside the 16 windows of one warp
    (k >= 79): the core's warp vote skips their element mask. simulate() checks each row's bit mask against
    the element mask and the result against the reference op."""
    q, k, v, _ = make_inputs([400], dict(kernel_size=[100]), False, heads=1, dim=8, batch=1)
    stats = sim.SimStats()
    out = sim.simulate(q, k, v, kernel_size=100, stats=stats)
    torch.testing.assert_close(out, neighborhood_attention(q, k, v, kernel_size=100), atol=1e-5, rtol=0)
    assert stats.interior_tiles <= 1  # the border tile only
    assert 4 * stats.interior_tiles + 8 <= stats.interior_warp_tiles < stats.warp_tiles == 4 * stats.kv_tiles
    schedule = sim.tile_schedule([400], 100)
    assert (schedule.kv_tiles, schedule.interior_warp_tiles) == (stats.kv_tiles, stats.interior_warp_tiles)


@pytest.mark.parametrize("spatial, kernel, stride", [((20, 24), (5, 7), (1, 2)), ((6, 8, 10), (3, 4, 5), (1, 1, 5))])
def test_tile_schedule_counts_what_simulate_visits(spatial, kernel, stride):
    q, k, v, _ = make_inputs(list(spatial), dict(kernel_size=list(kernel)), False, heads=1, dim=4, batch=1)
    stats = sim.SimStats()
    sim.simulate(q, k, v, kernel_size=kernel, stride=stride, stats=stats)
    schedule = sim.tile_schedule(spatial, kernel, stride)
    assert (schedule.query_tiles, schedule.kv_tiles, schedule.interior_tiles, schedule.interior_warp_tiles) == \
        (stats.query_tiles, stats.kv_tiles, stats.interior_tiles, stats.interior_warp_tiles)
