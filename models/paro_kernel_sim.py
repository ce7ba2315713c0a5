"""CPU replay of PARO attention as the native code computes it: the quantization pre-pass
(plugins/kernels/paro_prepass.cuh) and the fused-attention core with the PARO tile policy (attn_core.cuh,
attn_policies.cuh's ParoPolicy).

Pre-pass: q, k, v gathered through perm_idx (entries clamped into [0, N), as the kernels read them); with
qk_bits < 16, K's channel means over all N subtracted (smooth_k), then one scale per q_group / k_group permuted
tokens (amax / qmax, 0 -> 1) and integer values round-half-even(x / scale) clamped to +-qmax; with
pv_bits < 16, V per channel the same way.
Core (block == 64): a query tile is one query block of the permuted sequence, its kv tiles are the listed blocks
in list order (clamped into range), only the partial tail block is masked. Logits are the integer dot products
times scale * log2(e) * q_scale(row) * k_scale(column), in base 2. With qk_bits < 16 the kernel computes the dots
on the s8 MMA (int8 Q and K, int32 accumulation) and converts them to fp32, exact while |dot| < 2^24 (int_dots
replays it and checks the bound); otherwise (fp16/bf16 operands, fp32 accumulation) they are float dots. The
softmax is online: per tile the running row max m, p = exp2(s - m) (0 below 2^-126, as the core's exp2_ftz), the
denominator from the unquantized p. With pv_bits < 16, P is quantized per tile against that running max (not the
final one, as the reference does): scale = max(p over the tile's real rows, floored at 2^-30) / qmax, p_q =
min(round(p / scale), qmax) (the kernel multiplies by the tile's reciprocal and divides only near half-integers,
paro_rules.h's quantize_p_fast: the same integers), and the accumulator, kept in units of the current tile's
scale, is rescaled by alpha * (previous_scale * (1 / scale), the fp32 reciprocal) before adding p_q . v_q; the
output is acc * last_scale * v_scale(channel) / l, scattered back through perm_idx. Without P quantization, P is
rounded to the input dtype before P.V (fp16/bf16). docs/ops/paro_attention.md (Native kernels) bounds the
difference to the reference.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from attn_export.models.bsa_kernel_sim import LOG2E, block_row, ceil_div, exp2_ftz
from attn_export.models.paro import P_TILE_MAX_FLOOR

TILE = 64


def qmax(bits: int) -> float:
    return float(2 ** (bits - 1) - 1)


def quantize_rows(x: torch.Tensor, group: int, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x [N, D] (permuted order) -> integer values and one scale per group of tokens (pre-pass)."""
    n = x.shape[0]
    scales = torch.empty(ceil_div(n, group))
    ints = torch.empty_like(x)
    for g in range(scales.numel()):
        part = x[g * group:(g + 1) * group]
        scale = part.abs().amax() / qmax(bits)
        scale = torch.where(scale == 0, torch.ones(()), scale)
        scales[g] = scale
        ints[g * group:(g + 1) * group] = torch.clamp(torch.round(part / scale), -qmax(bits), qmax(bits))
    return ints, scales


INT_DOT_LIMIT = 2**24  # integers below this convert to fp32 exactly


def int_dots(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b.T of integer-valued rows as the s8 MMA computes it: exact integer sums (int64 here, int32 in the
    kernel), converted to fp32; ValueError where a sum reaches 2^24 (the conversion would round)."""
    dots = a.to(torch.int64) @ b.to(torch.int64).T
    if bool((a != a.round()).any()) or bool((b != b.round()).any()) or a.abs().max() > 127 or b.abs().max() > 127:
        raise ValueError("int_dots takes integer values in [-127, 127] (the int8 operands)")
    if dots.numel() and int(dots.abs().max()) >= INT_DOT_LIMIT:
        raise ValueError(f"an integer dot product reaches 2^24 ({int(dots.abs().max())}): fp32 would round it")
    return dots.to(torch.float32)


def quantize_channels(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    scale = x.abs().amax(dim=0) / qmax(bits)
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    return torch.clamp(torch.round(x / scale), -qmax(bits), qmax(bits)), scale


@dataclass
class SimStats:
    query_tiles: int = 0
    kv_tiles: int = 0
    masked_tiles: int = 0
    p_scales: list = field(default_factory=list)  # every tile's P scale (quantized P)
    pairs: dict = field(default_factory=dict)  # (b, h, permuted query, permuted key) -> visits


def simulate(q, k, v, perm_idx, kv_count, kv_index, block: int = 64, qk_bits: int = 8, pv_bits: int = 8,
             q_group: int = 32, k_group: int = 64, smooth_k: bool = True, scale: float | None = None,
             stats: SimStats | None = None, track_pairs: bool = False) -> torch.Tensor:
    """PARO attention as the pre-pass and the core compute it; returns q's dtype, original token order."""
    if block != TILE:
        raise ValueError(f"the core takes block == {TILE} (block={block}: the generic kernel)")
    batch, heads, n, dim = q.shape
    scale_log2 = (scale if scale is not None else dim**-0.5) * LOG2E
    stats = stats if stats is not None else SimStats()
    low = q.dtype in (torch.float16, torch.bfloat16)
    out = torch.zeros(q.shape, dtype=torch.float32)
    nb = ceil_div(n, TILE)
    for b in range(batch):
        for h in range(heads):
            perm = perm_idx[h].long().clamp(0, n - 1)  # the kernels' read (paro_rules.h's permuted)
            qp, kp, vp = (x[b, h].float()[perm] for x in (q, k, v))
            q_scale = k_scale = None
            v_scale = torch.ones(dim)
            if qk_bits < 16:
                if smooth_k:
                    kp = kp - k[b, h].float().mean(dim=0)
                qp, q_scale = quantize_rows(qp, q_group, qk_bits)
                kp, k_scale = quantize_rows(kp, k_group, qk_bits)
            if pv_bits < 16:
                vp, v_scale = quantize_channels(vp, pv_bits)
            result = torch.zeros(n, dim)
            for tile in range(nb):
                positions = torch.arange(tile * TILE, tile * TILE + TILE)
                row_ok = positions < n
                rows = positions.clamp(max=n - 1)
                q_rows = torch.where(row_ok[:, None], qp[rows], torch.zeros(()))
                row_scale = scale_log2 * (q_scale[rows // q_group] if q_scale is not None else torch.ones(TILE))
                blocks = block_row(kv_count, kv_index, b, h, tile, nb)
                stats.query_tiles += 1
                acc = torch.zeros(TILE, dim)
                row_max = torch.full((TILE,), float("-inf"))
                row_sum = torch.zeros(TILE)
                p_scale_prev = 1.0
                for blk in blocks:
                    keys = torch.arange(blk * TILE, blk * TILE + TILE)
                    valid = keys < n
                    kc = keys.clamp(max=n - 1)
                    k_rows = torch.where(valid[:, None], kp[kc], torch.zeros(()))
                    v_rows = torch.where(valid[:, None], vp[kc], torch.zeros(()))
                    dots = int_dots(q_rows, k_rows) if qk_bits < 16 else q_rows @ k_rows.T
                    logits = dots * row_scale[:, None]
                    if k_scale is not None:
                        logits = logits * k_scale[kc // k_group][None, :]
                    masked = (blk + 1) * TILE > n
                    stats.kv_tiles += 1
                    stats.masked_tiles += masked
                    if masked:
                        logits = logits.masked_fill(~valid[None, :], float("-inf"))
                    else:
                        assert bool(valid.all())
                    if track_pairs:
                        for r in torch.nonzero(row_ok).flatten().tolist():
                            for c in torch.nonzero(valid).flatten().tolist():
                                pair = (b, h, tile * TILE + r, int(keys[c]))
                                stats.pairs[pair] = stats.pairs.get(pair, 0) + 1
                    new_max = torch.maximum(row_max, logits.amax(dim=-1))
                    base = torch.where(new_max == float("-inf"), torch.zeros_like(new_max), new_max)
                    alpha = exp2_ftz(row_max - base)
                    probs = exp2_ftz(logits - base[:, None])
                    row_sum = row_sum * alpha + probs.sum(dim=-1)
                    row_max = new_max
                    factor = alpha
                    if pv_bits < 16:
                        tile_max = float(probs[row_ok].max()) if bool(row_ok.any()) else 0.0
                        # the kernel's float32 (paro_rules.h's p_tile_scale)
                        p_scale = float(torch.tensor(max(tile_max, P_TILE_MAX_FLOOR), dtype=torch.float32)
                                        / torch.tensor(qmax(pv_bits), dtype=torch.float32))
                        stats.p_scales.append(p_scale)
                        probs = torch.clamp(torch.round(probs / p_scale), max=qmax(pv_bits))
                        # the kernel's rescale: alpha * (previous scale * fp32 reciprocal of this scale)
                        reciprocal = torch.tensor(1.0, dtype=torch.float32) / torch.tensor(p_scale, dtype=torch.float32)
                        factor = alpha * (torch.tensor(p_scale_prev, dtype=torch.float32) * reciprocal)
                        p_scale_prev = p_scale
                    elif low:
                        probs = probs.to(q.dtype).float()
                        v_rows = v_rows.to(q.dtype).float()
                    acc = acc * factor[:, None] + probs @ v_rows
                inv = torch.where(row_sum > 0, p_scale_prev / row_sum.clamp(min=1e-30), torch.zeros(()))
                result[rows[row_ok]] = (acc * inv[:, None] * v_scale[None, :])[row_ok]
            out[b, h, perm] = result
    return out.to(q.dtype)
