"""The tiled CPU path of neighborhood attention (and the gather path it falls back to) against the brute-force
oracle, with tile shapes forced at random so that every edge is hit: sizes not a multiple of the tile, dilation
groups of unequal length, causal windows, strides, rpb; plus the tile plan's invariants and the cost rule."""

from __future__ import annotations

import math
import random

import pytest
import torch

import attn_export.models.neighborhood as na
from attn_export.models import neighborhood_attention
from attn_export.models.neighborhood import NAParams, choose_tile, tile_plan

from oracle import axis_neighbors, make_inputs, neighborhood_attention_reference, random_config

N_RANDOM = 200


def tiled_case(seed: int):
    """A random configuration (tests/oracle.py) and a random tile per axis, 1 to 9 queries per dilation group."""
    rng = random.Random(10_000 + seed)
    cfg = random_config(rng)
    tile = tuple(rng.randint(1, 9) for _ in cfg["spatial"])
    return cfg, tile


def params_of(cfg) -> NAParams:
    return NAParams.from_args(len(cfg["spatial"]), cfg["kernel"], cfg["stride"], cfg["dilation"], cfg["causal"])


def reference(cfg, q, k, v, rpb, scale=None):
    return neighborhood_attention_reference(q, k, v, cfg["kernel"], cfg["stride"], cfg["dilation"], cfg["causal"],
                                            scale=scale, rpb=rpb)


@pytest.mark.parametrize("seed", range(N_RANDOM))
def test_tiled_path_matches_reference_with_random_tiles(seed):
    cfg, tile = tiled_case(seed)
    q, k, v, rpb = make_inputs(cfg, seed)
    got = na._forward_tiled(q, k, v, params_of(cfg), 0.37, rpb, tile)
    torch.testing.assert_close(got.double(), reference(cfg, q, k, v, rpb, 0.37), atol=1e-5, rtol=0,
                               msg=lambda m: f"{cfg} tile={tile}: {m}")


def test_random_tiles_cover_the_edges():
    cases = [tiled_case(s) for s in range(N_RANDOM)]

    def count(pred):
        return sum(any(pred(cfg, a, t) for a, t in enumerate(tile)) for cfg, tile in cases)

    # the tile does not divide the longest dilation group
    assert count(lambda c, a, t: math.ceil(c["spatial"][a] / c["dilation"][a]) % t) >= 100
    # dilation groups of unequal length
    assert count(lambda c, a, t: c["spatial"][a] % c["dilation"][a]) >= 40
    assert count(lambda c, a, t: c["causal"][a]) >= 40
    assert count(lambda c, a, t: c["stride"][a] > 1) >= 40
    assert count(lambda c, a, t: t > math.ceil(c["spatial"][a] / c["dilation"][a])) >= 20  # tile past the group
    assert sum(cfg["rpb"] for cfg, _ in cases) >= 40
    assert sum(cfg["batch"] > 1 for cfg, _ in cases) >= 40


@pytest.mark.parametrize("seed", range(40))
def test_gather_path_matches_reference(seed, monkeypatch):
    """The path the cost rule keeps for boxes far larger than the windows, forced on."""
    monkeypatch.setattr(na, "choose_tile", lambda *args: None)
    cfg = random_config(random.Random(20_000 + seed))
    q, k, v, rpb = make_inputs(cfg, seed)
    got = neighborhood_attention(q, k, v, cfg["kernel"], cfg["stride"], cfg["dilation"], cfg["causal"], rpb=rpb)
    torch.testing.assert_close(got.double(), reference(cfg, q, k, v, rpb), atol=1e-5, rtol=0, msg=str(cfg))


@pytest.mark.parametrize("seed", range(30))
def test_tile_plan_holds_every_token_once_and_every_window_in_its_box(seed):
    cfg, tile = tiled_case(seed)
    spatial, params = tuple(cfg["spatial"]), params_of(cfg)
    plan = tile_plan(spatial, params, tile, True)
    n_tokens = math.prod(spatial)
    rows = plan.query.reshape(-1)
    assert torch.equal(rows[plan.row], torch.arange(n_tokens))  # each token's result is read from its own row
    inside = plan.bias[:, 0].reshape(-1, plan.key.shape[1]) == 0 if plan.bias is not None else None
    coords = list(zip(*(t.tolist() for t in torch.unravel_index(torch.arange(n_tokens), spatial))))
    for token in random.Random(seed).sample(range(n_tokens), min(n_tokens, 12)):
        row = int(plan.row[token])
        keys = plan.key[row // plan.query.shape[1]]
        seen = {int(j) for j, ok in zip(keys, inside[row] if inside is not None else [True] * len(keys)) if ok}
        per_axis = [axis_neighbors(coords[token][a], spatial[a], *(x[a] for x in (cfg["kernel"], cfg["stride"],
                                   cfg["dilation"], cfg["causal"]))) for a in range(len(spatial))]
        want = {int(torch.tensor(c) @ torch.tensor([math.prod(spatial[a + 1:]) for a in range(len(spatial))]))
                for c in _product(per_axis)}
        assert seen == want, (cfg, tile, token)


def _product(per_axis):
    out = [()]
    for keys in per_axis:
        out = [c + (j,) for c in out for j in keys]
    return out


def test_gradients_through_tiles_match_reference():
    cfg = dict(spatial=[7, 9], kernel=[3, 4], stride=[2, 1], dilation=[2, 1], causal=[False, False],
               heads=2, dim=4, batch=2, rpb=True)
    inputs = [t.double().requires_grad_(True) for t in make_inputs(cfg, 5)]
    got = torch.autograd.grad(na._forward_tiled(*inputs[:3], params_of(cfg), 0.5, inputs[3], (3, 2)).square().sum(),
                              inputs)
    want = torch.autograd.grad(reference(cfg, *inputs[:3], inputs[3], 0.5).square().sum(), inputs)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-9, rtol=1e-7)


def test_one_tile_per_chunk_and_half_precision(monkeypatch):
    cfg = dict(spatial=[11, 10], kernel=[5, 3], stride=[1, 3], dilation=[2, 1], causal=[False, True],
               heads=3, dim=8, batch=2, rpb=False)
    q, k, v, _ = make_inputs(cfg, 2)
    want = reference(cfg, q, k, v, None)
    monkeypatch.setattr(na, "_CHUNK_BYTES", 1)
    torch.testing.assert_close(na._forward_tiled(q, k, v, params_of(cfg), 8**-0.5, None, (2, 4)).double(), want,
                               atol=1e-5, rtol=0)
    half = na._forward_tiled(q.half(), k.half(), v.half(), params_of(cfg), 8**-0.5, None, (4, 4))
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.double(), want, atol=1e-2, rtol=0)


@pytest.mark.parametrize("spatial, kernel", [((4096,), 7), ((64, 64), 7), ((32, 32), 13), ((16, 16, 16), 3),
                                             ((8, 32, 32), 7), ((20_000,), 9)])
def test_cost_rule_tiles_every_benchmarked_shape(spatial, kernel):
    tile = choose_tile(spatial, NAParams.from_args(len(spatial), kernel), 32)
    assert tile is not None and 16 <= math.prod(tile) <= 256, tile


def test_cost_rule_gathers_only_where_tiles_cost_more():
    """Three queries: a tile's fixed cost exceeds gathering 2 keys each; 4096 queries never gather."""
    assert choose_tile((3,), NAParams.from_args(1, 2), 32) is None
    assert choose_tile((4096,), NAParams.from_args(1, 2), 32) is not None


def test_scratch_buffers_are_per_thread():
    """Calls that record no gradient copy rows into per-thread scratch buffers: threads never share one."""
    from concurrent.futures import ThreadPoolExecutor

    inputs = [torch.randn(2, 24, 20, 2, 8, generator=torch.Generator().manual_seed(s)) for s in range(6)]
    want = [neighborhood_attention(x, x, x, 5, dilation=2) for x in inputs]
    with ThreadPoolExecutor(3) as pool:
        for _ in range(3):
            got = list(pool.map(lambda x: neighborhood_attention(x, x, x, 5, dilation=2), inputs))
            for g, w in zip(got, want):
                assert torch.equal(g, w)


def test_inference_mode_calls_and_gradient_calls_share_the_caches():
    """A plan cached during inference_mode (and the scratch buffers) must also serve a call recording gradients."""
    cfg = dict(spatial=[19, 17], kernel=[5, 3], stride=[1, 1], dilation=[1, 2], causal=[False, False],
               heads=2, dim=8, batch=1, rpb=True)
    q, k, v, rpb = make_inputs(cfg, 9)
    args = (cfg["kernel"], cfg["stride"], cfg["dilation"], cfg["causal"])
    with torch.inference_mode():
        first = neighborhood_attention(q, k, v, *args, rpb=rpb)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v, rpb)]
    out = neighborhood_attention(*leaves[:3], *args, rpb=leaves[3])
    out.square().sum().backward()
    assert torch.equal(out.detach(), first) and all(t.grad is not None for t in leaves)
