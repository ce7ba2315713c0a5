"""CPU replay of the fused-attention core with the block-sparse tile policy (plugins/kernels/attn_core.cuh,
attn_policies.cuh's BsaPolicy, block_layout.h's VirtualKeys).

Same tiles: a query tile is 64 rows of one query block (block_q a multiple of 64); it reads its row's listed
blocks as one virtual key sequence of count * block_kv slots (slot v is key block[v // block_kv] * block_kv + v %
block_kv when below seq_kv), in 64-slot tiles in list order; only tiles holding a slot without a key are masked
(the kernel's tile_masked rule, which the replay checks against the element mask). Where block_q is a multiple of
128 the kernel runs 128-query tiles (core_plan.h's bsa_row_tiles): every row of one is computed as in a 64-query
tile (the same kv tiles in the same order, per-row softmax state), except that at head_dim 128 each 64-key tile is
taken in two 32-key steps of the online softmax (attn_core.cuh's core_split); `key_step` replays that (by default
as the kernel picks it on sm_90, the only device that runs 128-query tiles). Same arithmetic: raw dot products in
fp32, logits times scale * log2(e) (with one key step per tile the core folds that multiply into exp2's argument,
one FFMA: fma32), an online softmax in base 2 (exp2_ftz: the core's exp2 returns 0 below 2^-126) whose denominator
sums the unrounded probabilities, P rounded to the input dtype (fp16/bf16) before P.V, fp32 accumulation, rows
without a key give zeros. Slow (a Python loop over tiles): small shapes only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

TILE = 64
LOG2E = 1.4426950408889634
FTZ_BELOW = 2.0**-126  # the smallest normal fp32


def exp2_ftz(x: torch.Tensor) -> torch.Tensor:
    """2^x as the fused core computes it (attn_core.cuh's exp2_ftz, ex2.approx.ftz): results below 2^-126 are 0,
    not subnormals."""
    y = torch.exp2(x)
    return torch.where(y < FTZ_BELOW, torch.zeros((), dtype=y.dtype), y)


def ceil_div(a: int, b: int) -> int:
    return (a + b - 1) // b


def block_row(kv_count, kv_index, b: int, h: int, row: int, n_blocks: int) -> list[int]:
    """A row's listed blocks as block_layout.h's block_row reads them: broadcast leading dims, the count
    clamped to [0, max_blocks], each listed block clamped into [0, n_blocks)."""
    cb = 0 if kv_count.shape[0] == 1 else b
    ch = 0 if kv_count.shape[1] == 1 else h
    ib = 0 if kv_index.shape[0] == 1 else b
    ih = 0 if kv_index.shape[1] == 1 else h
    count = min(max(int(kv_count[cb, ch, row]), 0), kv_index.shape[3])
    return [min(max(int(x), 0), n_blocks - 1) for x in kv_index[ib, ih, row, :count]]


@dataclass
class VirtualKeys:
    """Mirror of block_layout.h's VirtualKeys."""

    blocks: list[int]
    block_kv: int
    seq_kv: int

    @property
    def slots(self) -> int:
        return len(self.blocks) * self.block_kv

    def tiles(self, tile: int = TILE) -> int:
        return ceil_div(self.slots, tile)

    def key(self, v: int) -> int:
        if v >= self.slots:
            return -1
        k = self.blocks[v // self.block_kv] * self.block_kv + v % self.block_kv
        return k if k < self.seq_kv else -1

    def tile_masked(self, t: int, tile: int = TILE) -> bool:
        first, last = t * tile, t * tile + tile - 1
        if last >= self.slots:
            return True
        if self.seq_kv % self.block_kv == 0:
            return False
        tail = ceil_div(self.seq_kv, self.block_kv) - 1
        for s in range(first // self.block_kv, last // self.block_kv + 1):
            last_in_block = min(last, (s + 1) * self.block_kv - 1) - s * self.block_kv
            if self.blocks[s] == tail and tail * self.block_kv + last_in_block >= self.seq_kv:
                return True
        return False


@dataclass
class SimStats:
    query_tiles: int = 0
    kv_tiles: int = 0
    masked_tiles: int = 0
    pairs: dict = field(default_factory=dict)  # (b, h, query, key) -> times visited with the key kept


def fma32(a: torch.Tensor, b: float, c: torch.Tensor) -> torch.Tensor:
    """fp32 fmaf(a, b, c) (one rounding): the product of two fp32 values is exact in fp64; the sum's fp64 rounding
    can double-round in the last fp32 bit, rarely (a replay, compared with tolerances)."""
    return (a.double() * float(torch.tensor(b, dtype=torch.float32)) + c.double()).float()


def online_tile(acc, row_max, row_sum, scores, values, dtype, exp_scale: float = 1.0):
    """One kv tile of the core's online softmax: returns the new (acc, row_max, row_sum). scores x exp_scale are
    the base-2 logits: the core scales the row maxima and folds the rest into exp2's FFMA (attn_core.cuh's
    kFuseScale); with exp_scale 1 the scores are the logits."""
    c = float(torch.tensor(exp_scale, dtype=torch.float32))
    new_max = torch.maximum(row_max, scores.amax(dim=-1) * c)
    base = torch.where(new_max == float("-inf"), torch.zeros_like(new_max), new_max)
    alpha = exp2_ftz(row_max - base)
    probs = exp2_ftz(fma32(scores, c, -base[:, None]))
    row_sum = row_sum * alpha + probs.sum(dim=-1)
    if dtype in (torch.float16, torch.bfloat16):  # mma.sync consumes P (and V) in the input dtype
        probs = probs.to(dtype).float()
    acc = acc * alpha[:, None] + probs @ values
    return acc, new_max, row_sum


def key_step_of(block_q: int, dim: int) -> int:
    """Keys per online-softmax step on sm_90: 32 for 128-query tiles at head_dim 128 (core_split), else the whole
    tile (other devices: always the whole tile, pass key_step=64)."""
    return TILE // 2 if block_q % (2 * TILE) == 0 and dim == 128 else TILE


def simulate(q, k, v, kv_count, kv_index, block_q: int, block_kv: int, scale: float | None = None,
             stats: SimStats | None = None, track_pairs: bool = False, key_step: int | None = None) -> torch.Tensor:
    """Block-sparse attention computed tile by tile as the core does; returns q's dtype."""
    if block_q % TILE:
        raise ValueError(f"the core takes block_q in multiples of {TILE} (block_q={block_q}: the generic kernel)")
    batch, heads, seq_q, dim = q.shape
    key_step = key_step or key_step_of(block_q, dim)
    seq_kv = k.shape[2]
    scale_log2 = (scale if scale is not None else dim**-0.5) * LOG2E
    stats = stats if stats is not None else SimStats()
    n_blocks = max(ceil_div(seq_kv, block_kv), 1)
    out = torch.zeros(q.shape, dtype=torch.float32)
    qf, kf, vf = q.float(), k.float(), v.float()
    for b in range(batch):
        for h in range(heads):
            for tile in range(ceil_div(seq_q, TILE)):
                first = tile * TILE
                rows = torch.arange(first, first + TILE)
                row_ok = rows < seq_q
                q_rows = torch.where(row_ok[:, None], qf[b, h, rows.clamp(max=seq_q - 1)], torch.zeros(()))
                keys = VirtualKeys(block_row(kv_count, kv_index, b, h, first // block_q, n_blocks), block_kv, seq_kv)
                stats.query_tiles += 1
                acc = torch.zeros(TILE, dim)
                row_max = torch.full((TILE,), float("-inf"))
                row_sum = torch.zeros(TILE)
                for t in range(keys.tiles()):
                    slot_keys = torch.tensor([keys.key(t * TILE + r) for r in range(TILE)])
                    valid = slot_keys >= 0
                    k_rows = torch.where(valid[:, None], kf[b, h, slot_keys.clamp(min=0)], torch.zeros(()))
                    v_rows = torch.where(valid[:, None], vf[b, h, slot_keys.clamp(min=0)], torch.zeros(()))
                    # the raw dots where the core folds the scale into exp2 (one key step per tile), else logits
                    exp_scale = scale_log2 if key_step == TILE else 1.0
                    logits = (q_rows @ k_rows.T) * (scale_log2 / exp_scale)
                    masked = keys.tile_masked(t)
                    stats.kv_tiles += 1
                    stats.masked_tiles += masked
                    if not masked:
                        assert bool(valid.all()), "tile_masked said interior, but a slot has no key"
                    else:
                        logits = logits.masked_fill(~valid[None, :], float("-inf"))
                    if track_pairs:
                        for r in range(TILE):
                            if row_ok[r]:
                                for c in torch.nonzero(valid).flatten().tolist():
                                    pair = (b, h, first + r, int(slot_keys[c]))
                                    stats.pairs[pair] = stats.pairs.get(pair, 0) + 1
                    for c in range(0, TILE, key_step):
                        acc, row_max, row_sum = online_tile(acc, row_max, row_sum, logits[:, c:c + key_step],
                                                            v_rows[c:c + key_step], q.dtype, exp_scale)
                result = torch.where(row_sum[:, None] > 0, acc / row_sum.clamp(min=1e-30)[:, None], torch.zeros(()))
                out[b, h, rows[row_ok]] = result[row_ok]
    return out.to(q.dtype)
