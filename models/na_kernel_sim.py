"""CPU replay of the neighborhood kernels' algorithm: the first-generation kernel (plugins/kernels/na_fused.cuh)
and the fused core's neighborhood tile policy (attn_core.cuh + attn_policies.cuh's NaPolicy, the same tiles with
64 slots), whose interior rule -- a kv tile inside the window of every query of the tile needs no element mask,
decided from the first and last query of each axis -- is checked here on every tile it calls interior, and whose
per-row element masks (na_index.h's slot_keep_mask, 64 bits per row and tile) are checked bit for bit against the
element mask; a warp whose 16 rows keep every slot skips the mask (any window size), counted in SimStats.

Same normalization (three spatial axes, missing leading axes of length 1), same tile shape, same query
tiles per dilation group, same kv box and row-major kv tile order, same element masks, and the same
online softmax in base 2 with fp32 accumulation; with round_p the probabilities are rounded to the input
dtype before P.V, as the core's mma.sync does, and exp2 results below 2^-126 are 0 as in the core (the generic
kernel keeps fp32 probabilities and subnormals). Tests compare it
with the reference op, so the algorithm is proven before a GPU runs it. It is slow (Python loop over tiles):
small shapes only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from attn_export.models.bsa_kernel_sim import exp2_ftz
from attn_export.models.neighborhood import NAParams

MAX_RANK = 3
LOG2E = 1.4426950408889634


def ceil_div(a: int, b: int) -> int:
    return (a + b - 1) // b


def window(ip: int, n_g: int, k: int, s: int, causal: bool) -> tuple[int, int]:
    """Half-open key range (group coordinates) of query ip; mirrors attnx::window."""
    if causal:
        leader = min((ip // s) * s + s - 1, n_g - 1)
        return max(leader - k + 1, 0), min(ip + 1, n_g)
    left, right = k // 2, k // 2 + k % 2 - 1
    leader = min((ip // s) * s + s // 2, n_g - 1)
    center = max(min(leader, n_g - 1 - right), left)
    return center - left, center - left + k


def tile_kv_range(first: int, last: int, n_g: int, k: int, s: int, causal: bool) -> tuple[int, int]:
    return window(first, n_g, k, s, causal)[0], window(last, n_g, k, s, causal)[1]


def tile_interior(first, glen, tile, kk, ss, cc, kv_first, kv_end, tile_tokens) -> bool:
    """Mirrors NaPolicy::set_tile: every slot of the kv tile at kv_first is a real key inside the window of
    every query of the query tile at first (windows are monotone in the query index: the first and last valid
    query of each axis decide)."""
    if tile_tokens != 64:
        return False
    for a in range(MAX_RANK):
        last_q = min(first[a] + tile[a], glen[a]) - 1
        lo = window(last_q, glen[a], kk[a], ss[a], cc[a])[0]
        hi = window(first[a], glen[a], kk[a], ss[a], cc[a])[1]
        kv_last = kv_first[a] + tile[a] - 1
        if not (kv_first[a] >= lo and kv_last < hi and kv_last < kv_end[a]):
            return False
    return True


FULL_MASK = (1 << 64) - 1
WARP_ROWS = 16  # query slots per warp of the core (4 warps x 16 rows)


def slot_keep_mask(tile, origin, kv_end, q_begin, q_end) -> int:
    """Mirrors attnx::slot_keep_mask: bit c is set iff kv slot c is a real key inside the query's window on
    every axis."""
    mask, period = FULL_MASK, 1
    for a in reversed(range(MAX_RANK)):
        lo = max(q_begin[a], origin[a]) - origin[a]
        hi = min(min(q_end[a], kv_end[a]) - origin[a], tile[a])
        span = period * tile[a]
        run = _bit_run(lo * period, hi * period)
        mask &= run if span >= 64 else run * (FULL_MASK // ((1 << span) - 1))
        period = span
    return mask & _bit_run(0, period)


def _bit_run(lo: int, hi: int) -> int:
    lo, hi = max(lo, 0), min(hi, 64)
    return ((1 << hi) - 1) & ~((1 << lo) - 1) if hi > lo else 0


def warp_interior(masks: list[int]) -> list[bool]:
    """Per warp: every query of its 16 slots keeps every slot of the kv tile (the core's warp vote)."""
    return [all(m == FULL_MASK for m in masks[w:w + WARP_ROWS]) for w in range(0, len(masks), WARP_ROWS)]


def row_windows(first, glen, tile, kk, ss, cc, local) -> list[tuple[list[int], list[int]]]:
    """Per query slot: its window per axis, a padding slot taking the last real position's (NaPolicy::set_rows)."""
    out = []
    for loc in local:
        pos = [min(first[a] + loc[a], glen[a] - 1) for a in range(MAX_RANK)]
        w = [window(pos[a], glen[a], kk[a], ss[a], cc[a]) for a in range(MAX_RANK)]
        out.append(([x[0] for x in w], [x[1] for x in w]))
    return out


def choose_tile_shape(n: list[int], d: list[int], tile_tokens: int) -> list[int]:
    """Mirrors attnx::choose_tile_shape: double axes innermost first while they have room."""
    rank = len(n)
    shape, cap = [1] * rank, [ceil_div(n[a], d[a]) for a in range(rank)]
    tokens, grew = 1, True
    while grew and tokens * 2 <= tile_tokens:
        grew = False
        for a in reversed(range(rank)):
            if tokens * 2 > tile_tokens:
                break
            if shape[a] < cap[a]:
                shape[a] *= 2
                tokens *= 2
                grew = True
    return shape


@dataclass
class SimStats:
    query_tiles: int = 0  # non-empty query tiles
    kv_tiles: int = 0  # kv tiles visited, summed over query tiles
    kv_slots_in_window: int = 0  # (query, key) pairs that were inside a window
    interior_tiles: int = 0  # kv tiles inside every window of the whole query tile
    warp_tiles: int = 0  # (warp, kv tile) pairs: 4 per kv tile of a 64-slot tile
    interior_warp_tiles: int = 0  # of those, the ones the core runs without an element mask (its warp vote)


def simulate(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kernel_size,
    stride=1,
    dilation=1,
    is_causal=False,
    scale: float | None = None,
    rpb: torch.Tensor | None = None,
    tile_tokens: int = 64,
    round_p: bool = False,
    stats: SimStats | None = None,
) -> torch.Tensor:
    """Neighborhood attention computed tile by tile as the CUDA kernel does; returns q's dtype."""
    batch, *spatial, heads, dim = q.shape
    n, kk, ss, dd, cc, tile, tiles_per_group = _padded_geometry(spatial, kernel_size, stride, dilation, is_causal,
                                                                tile_tokens)
    scale_log2 = (scale if scale is not None else dim**-0.5) * LOG2E
    stats = stats if stats is not None else SimStats()

    shape3 = (batch, *n, heads, dim)
    qf, kf, vf = (x.reshape(shape3) for x in (q, k, v))
    bias = rpb.reshape(heads, *[2 * x - 1 for x in kk]).float() if rpb is not None else None
    out = torch.full(shape3, float("nan"), dtype=torch.float32)
    local = [(r // (tile[1] * tile[2]), (r // tile[2]) % tile[1], r % tile[2]) for r in range(math.prod(tile))]

    for t0 in range(dd[0] * tiles_per_group[0]):
        for t1 in range(dd[1] * tiles_per_group[1]):
            for t2 in range(dd[2] * tiles_per_group[2]):
                t = (t0, t1, t2)
                group = [t[a] // tiles_per_group[a] for a in range(MAX_RANK)]
                first = [(t[a] % tiles_per_group[a]) * tile[a] for a in range(MAX_RANK)]
                glen = [ceil_div(n[a] - group[a], dd[a]) for a in range(MAX_RANK)]
                if any(first[a] >= glen[a] for a in range(MAX_RANK)):
                    continue  # an empty tile of a shorter dilation group
                stats.query_tiles += 1
                _one_tile(qf, kf, vf, bias, out, local, first, group, glen, kk, ss, dd, cc, tile,
                          scale_log2, round_p, q.dtype, stats)
    return out.reshape(q.shape).to(q.dtype)


def _check_keep_masks(first, glen, tile, kk, ss, cc, local, kv_first, kv_end, mask, stats):
    """The core's per-row keep masks (slot_keep_mask) are the element mask, bit for bit, and a warp whose
    masks are all full skips the element path: count it."""
    windows = row_windows(first, glen, tile, kk, ss, cc, local)
    masks = [slot_keep_mask(tile, kv_first, kv_end, lo, hi) for lo, hi in windows]
    for r, m in enumerate(masks):
        expected = sum(1 << c for c in range(len(local)) if bool(mask[r, c]) or not _real_query(first, glen, local[r]))
        if _real_query(first, glen, local[r]):
            assert m == expected, f"keep mask of row {r} of tile {first}, kv tile {kv_first}: {m:#x} != {expected:#x}"
    if len(local) == 64:
        stats.warp_tiles += 4
        stats.interior_warp_tiles += sum(warp_interior(masks))


def _real_query(first, glen, loc) -> bool:
    return all(first[a] + loc[a] < glen[a] for a in range(MAX_RANK))


def _slots(local, base, group, glen, dd, limit=None):
    """Token coordinates and validity of each tile slot, as the kernel's slot_offset computes them."""
    pos = [[base[a] + loc[a] for a in range(MAX_RANK)] for loc in local]
    valid = [all(p[a] < (limit[a] if limit else glen[a]) for a in range(MAX_RANK)) for p in pos]
    token = [tuple(group[a] + dd[a] * min(p[a], glen[a] - 1) for a in range(MAX_RANK)) for p in pos]
    return pos, valid, token


def _one_tile(qf, kf, vf, bias, out, local, first, group, glen, kk, ss, dd, cc, tile, scale_log2,
              round_p, dtype, stats):
    q_pos, q_valid, q_tok = _slots(local, first, group, glen, dd)
    windows = [[window(p[a], glen[a], kk[a], ss[a], cc[a]) for a in range(MAX_RANK)] for p in q_pos]
    box = [tile_kv_range(first[a], min(first[a] + tile[a], glen[a]) - 1, glen[a], kk[a], ss[a], cc[a])
           for a in range(MAX_RANK)]
    kv_tiles = [ceil_div(box[a][1] - box[a][0], tile[a]) for a in range(MAX_RANK)]
    q_at = torch.tensor(q_pos)  # [rows, 3]
    begin = torch.tensor([[w[0] for w in ws] for ws in windows])
    end = torch.tensor([[w[1] for w in ws] for ws in windows])
    kk_t = torch.tensor(kk)
    rel_stride = torch.tensor([(2 * kk[1] - 1) * (2 * kk[2] - 1), 2 * kk[2] - 1, 1])
    q_rows = torch.stack([qf[:, i, j, m] for (i, j, m) in q_tok], dim=2).float()  # [B, H, rows, D]
    q_rows = q_rows * torch.tensor(q_valid, dtype=torch.float32)[:, None]
    acc = torch.zeros(q_rows.shape)
    row_max = torch.full(q_rows.shape[:3], float("-inf"))
    row_sum = torch.zeros(q_rows.shape[:3])

    for kt in range(math.prod(kv_tiles)):  # row-major, axis 2 fastest, as in the kernel
        idx = (kt // (kv_tiles[1] * kv_tiles[2]), (kt // kv_tiles[2]) % kv_tiles[1], kt % kv_tiles[2])
        kv_first = [box[a][0] + idx[a] * tile[a] for a in range(MAX_RANK)]
        kv_pos, kv_valid, kv_tok = _slots(local, kv_first, group, glen, dd, limit=[b[1] for b in box])
        stats.kv_tiles += 1
        kv_at = torch.tensor(kv_pos)[None]  # [1, rows, 3]
        inside = ((kv_at >= begin[:, None]) & (kv_at < end[:, None])).all(dim=-1)
        mask = inside & torch.tensor(q_valid)[:, None] & torch.tensor(kv_valid)[None]
        rel = ((kv_at - q_at[:, None] + kk_t - 1) * rel_stride).sum(dim=-1)
        stats.kv_slots_in_window += int(mask.sum())
        _check_keep_masks(first, glen, tile, kk, ss, cc, local, kv_first, [b[1] for b in box], mask, stats)
        if tile_interior(first, glen, tile, kk, ss, cc, kv_first, [b[1] for b in box], len(local)):
            # The core skips the mask here: it must keep every valid query's every key.
            assert bool(mask[torch.tensor(q_valid)].all()), f"interior tile {kv_first} of {first} needs a mask"
            stats.interior_tiles += 1
        valid_kv = torch.tensor(kv_valid, dtype=torch.float32)[:, None]
        k_rows = torch.stack([kf[:, i, j, m] for (i, j, m) in kv_tok], dim=2).float() * valid_kv
        v_rows = torch.stack([vf[:, i, j, m] for (i, j, m) in kv_tok], dim=2).float() * valid_kv
        logits = (q_rows @ k_rows.transpose(-1, -2)) * scale_log2
        if bias is not None:
            flat = bias.reshape(bias.shape[0], -1)
            logits = logits + flat[:, rel.clamp(0, flat.shape[1] - 1)][None] * LOG2E
        logits = logits.masked_fill(~mask, float("-inf"))
        new_max = torch.maximum(row_max, logits.amax(dim=-1))
        base = torch.where(new_max == float("-inf"), torch.zeros_like(new_max), new_max)
        exp2 = exp2_ftz if round_p else torch.exp2  # the core flushes results below 2^-126 to 0; na_fused.cuh does not
        probs = exp2(logits - base[..., None])
        alpha = exp2(row_max - base)
        row_sum = row_sum * alpha + probs.sum(dim=-1)
        row_max = new_max
        if round_p:  # the core's mma.sync consumes P in the input dtype
            probs = probs.to(dtype).float()
            v_rows = v_rows.to(dtype).float()
        acc = acc * alpha[..., None] + probs @ v_rows

    result = acc / row_sum[..., None]
    for r, (tok, valid) in enumerate(zip(q_tok, q_valid)):
        if valid:
            out[:, tok[0], tok[1], tok[2]] = result[:, :, r]


def _padded_geometry(spatial, kernel_size, stride, dilation, is_causal, tile_tokens: int):
    """The call's per-axis sizes, kernels, strides, dilations and causality padded to MAX_RANK axes (leading
    1s, as the kernel sees them), its tile shape and the tiles per dilation group on each axis."""
    params = NAParams.from_args(len(spatial), kernel_size, stride, dilation, is_causal)
    params.validate(list(spatial))
    pad = MAX_RANK - params.rank
    n = [1] * pad + list(spatial)
    dd = [1] * pad + list(params.dilation)
    tile = choose_tile_shape(n, dd, tile_tokens)
    return (n, [1] * pad + list(params.kernel_size), [1] * pad + list(params.stride), dd,
            [False] * pad + list(params.is_causal), tile,
            [ceil_div(ceil_div(n[a], dd[a]), tile[a]) for a in range(MAX_RANK)])


def tile_schedule(spatial, kernel_size, stride=1, dilation=1, is_causal=False, tile_tokens: int = 64) -> SimStats:
    """The core's tile schedule of one (batch, head) without computing anything: query tiles, kv tiles
    visited and how many of them are interior (no element mask), as simulate() walks them. Fast enough for
    the benchmark shapes (bench/kernel_report.py's time model uses it)."""
    n, kk, ss, dd, cc, tile, per_group = _padded_geometry(spatial, kernel_size, stride, dilation, is_causal,
                                                          tile_tokens)
    local = [(r // (tile[1] * tile[2]), (r // tile[2]) % tile[1], r % tile[2]) for r in range(math.prod(tile))]
    stats = SimStats()
    for t in _product([range(dd[a] * per_group[a]) for a in range(MAX_RANK)]):
        group = [t[a] // per_group[a] for a in range(MAX_RANK)]
        first = [(t[a] % per_group[a]) * tile[a] for a in range(MAX_RANK)]
        glen = [ceil_div(n[a] - group[a], dd[a]) for a in range(MAX_RANK)]
        if any(first[a] >= glen[a] for a in range(MAX_RANK)):
            continue
        stats.query_tiles += 1
        box = [tile_kv_range(first[a], min(first[a] + tile[a], glen[a]) - 1, glen[a], kk[a], ss[a], cc[a])
               for a in range(MAX_RANK)]
        starts = [range(box[a][0], box[a][1], tile[a]) for a in range(MAX_RANK)]
        windows = row_windows(first, glen, tile, kk, ss, cc, local) if math.prod(tile) == 64 else []
        for kv_first in _product(starts):
            stats.kv_tiles += 1
            kv_end = [b[1] for b in box]
            stats.interior_tiles += tile_interior(first, glen, tile, kk, ss, cc, list(kv_first), kv_end,
                                                  math.prod(tile))
            if windows:
                masks = [slot_keep_mask(tile, kv_first, kv_end, lo, hi) for lo, hi in windows]
                stats.warp_tiles += 4
                stats.interior_warp_tiles += sum(warp_interior(masks))
    return stats


def _product(ranges):
    import itertools

    return itertools.product(*ranges)
