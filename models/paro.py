"""PARO attention (pattern-aware token reordering; docs/ops/paro_attention.md): token orders, the op, its
checks and its CPU implementation.

A PARO call attends over ``N = P + F*H*W`` tokens: ``P`` prefix tokens (text, registers) first, then a
row-major ``[F, H, W]`` grid. Each head reorders the grid tokens by one of six axis orders (prefix tokens
never move), so that its attention pattern becomes block-local, attends only the blocks a padded-ELL
layout lists (over the permuted sequence), quantizes QK per token group (K mean-smoothed) and P per tile /
V per channel, and scatters the output back to the original order: a drop-in replacement for dense
attention. The CPU path gathers only the listed blocks: no N x N tensor is ever built.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch._subclasses.fake_tensor import FakeTensor

from attn_export.errors import AttnExportError
from attn_export.models.block_sparse import check_inputs as check_layout
from attn_export.models.block_sparse import num_blocks
from attn_export.models.custom_op import register_attention_op
from attn_export.registry import PARO, PARO_P_TILE_MAX_FLOOR

_OP = "paro_attention"
_CHUNK_BYTES = 64 << 20  # gathered K/V working set per chunk of query blocks
BITS = (16, 8, 4)  # 16: no quantization

# index -> (name, grid axes outer to inner); grid axes are 0 = F (frames), 1 = H, 2 = W
ORDERS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("FHW", (0, 1, 2)),
    ("FWH", (0, 2, 1)),
    ("HWF", (1, 2, 0)),
    ("HFW", (1, 0, 2)),
    ("WHF", (2, 1, 0)),
    ("WFH", (2, 0, 1)),
)
ORDER_NAMES = tuple(name for name, _ in ORDERS)


def order_index(order: int | str) -> int:
    """The index 0..5 of an order given as its index or its name ("HWF")."""
    if isinstance(order, str) and order.upper() in ORDER_NAMES:
        return ORDER_NAMES.index(order.upper())
    if isinstance(order, int) and not isinstance(order, bool) and 0 <= order < len(ORDERS):
        return order
    raise AttnExportError(f"PARO order {order!r} is not one of 0..5 or {', '.join(ORDER_NAMES)}")


def grid_permutation(order: int | str, grid: Sequence[int], prefix: int = 0) -> torch.Tensor:
    """The gather index ``[N]`` (int64) of ``order``: position n' of the permuted sequence holds original token
    ``perm[n']``. Prefix tokens stay first; a grid token at (f, h, w) moves to
    ``prefix + c[a0]*D[a1]*D[a2] + c[a1]*D[a2] + c[a2]`` for the order's axes (a0, a1, a2)."""
    axes = ORDERS[order_index(order)][1]
    grid = _check_grid(grid, prefix)
    original = torch.arange(math.prod(grid)).reshape(grid)  # original flat index at each coordinate
    permuted = original.permute(axes).reshape(-1)  # read the grid in the order's loop nest
    return torch.cat([torch.arange(prefix), prefix + permuted])


def _check_grid(grid: Sequence[int], prefix: int) -> tuple[int, int, int]:
    try:
        grid = tuple(int(d) for d in grid)
    except (TypeError, ValueError):
        raise AttnExportError(f"PARO grid {grid!r} must be three sizes F, H, W") from None
    if len(grid) != 3 or min(grid) < 1:
        raise AttnExportError(f"PARO grid {list(grid)} must be three positive sizes F, H, W")
    if not isinstance(prefix, int) or prefix < 0:
        raise AttnExportError(f"PARO prefix {prefix!r} must be a non-negative token count")
    return grid


def qmax(bits: int) -> int:
    return 2 ** (bits - 1) - 1


# ---------------------------------------------------------------------------------------------
# Fake quantization: symmetric, round half to even, scale = amax / qmax. A scale of 0 (amax 0, or an amax so
# small that amax / qmax underflows) is replaced by ``fallback``: its
# values all quantize to 0 either way, and no division by zero makes NaN.


def _scale(scale: torch.Tensor, fallback: float) -> torch.Tensor:
    return torch.where(scale == 0, torch.full_like(scale, fallback), scale)


def quantize_groups(x: torch.Tensor, group: int, bits: int) -> torch.Tensor:
    """x ``[B, H, N, D]`` with one scale per ``group`` consecutive tokens (over all channels)."""
    batch, heads, n, dim = x.shape
    pad = (-n) % group
    grouped = torch.nn.functional.pad(x, (0, 0, 0, pad)).reshape(batch, heads, -1, group, dim)
    scale = _scale(grouped.abs().amax(dim=(3, 4), keepdim=True) / qmax(bits), 1.0)
    q = torch.clamp(torch.round(grouped / scale), -qmax(bits), qmax(bits)) * scale
    return q.reshape(batch, heads, -1, dim)[:, :, :n]


def quantize_channels(x: torch.Tensor, bits: int) -> torch.Tensor:
    """x ``[B, H, N, D]`` with one scale per channel (over all tokens)."""
    scale = _scale(x.abs().amax(dim=2, keepdim=True) / qmax(bits), 1.0)
    return torch.clamp(torch.round(x / scale), -qmax(bits), qmax(bits)) * scale


# The largest probability a P tile's scale is taken from is at least this (2^-30): the native kernels' online
# rescale by previous_scale / scale then stays <= 2^30 (unfloored, a tile ~2^-105 below an earlier one overflowed
# fp32), and the reference, the ONNX function and the kernels keep one rule. Probabilities below
# 2^-30 / (2 qmax) of the row max quantize to 0.
P_TILE_MAX_FLOOR = PARO_P_TILE_MAX_FLOOR


def quantize_tiles(p: torch.Tensor, rows_valid: torch.Tensor, bits: int) -> torch.Tensor:
    """Unnormalised probabilities ``[..., bq, M, bkv]`` with one scale per (query block, kv block) tile:
    max(p in tile, floored at P_TILE_MAX_FLOOR) / qmax over the tile's real query rows (``rows_valid
    [..., bq, 1, 1]``); an all-zero tile gets the floor's scale and stays zero."""
    scale = (p * rows_valid).amax(dim=(-3, -1), keepdim=True).clamp(min=P_TILE_MAX_FLOOR) / qmax(bits)
    return torch.clamp(torch.round(p / scale), 0, qmax(bits)) * scale


# ---------------------------------------------------------------------------------------------
# Checks


def check_inputs(q, k, v, perm_idx, kv_count, kv_index, block, qk_bits, pv_bits, q_group, k_group,
                 check_values: bool = True) -> None:
    """Raise AttnExportError naming the parameter for any shape, dtype or (when concrete) value problem."""
    for name, value in (("block", block), ("q_group", q_group), ("k_group", k_group)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise AttnExportError(f"{_OP}: {name}={value!r} must be a positive int")
    for name, bits in (("qk_bits", qk_bits), ("pv_bits", pv_bits)):
        if bits not in BITS or isinstance(bits, bool):
            raise AttnExportError(f"{_OP}: {name}={bits!r} must be one of 16 (no quantization), 8 or 4")
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise AttnExportError(f"{_OP}: q, k, v must share one shape [B, heads, N, D]; got {tuple(q.shape)}, "
                              f"{tuple(k.shape)}, {tuple(v.shape)}")
    heads, n = q.shape[1], q.shape[2]
    if perm_idx.dtype != torch.int32 or tuple(perm_idx.shape) != (heads, n):
        raise AttnExportError(f"{_OP}: perm_idx must be int32 [heads, N] = [{heads}, {n}]; got {perm_idx.dtype} "
                              f"{tuple(perm_idx.shape)}")
    check_layout(q, k, v, kv_count, kv_index, block, block, check_values)
    if not check_values or _is_symbolic(perm_idx) or _is_symbolic(kv_count):
        return
    expected = torch.arange(n, dtype=torch.int64, device=perm_idx.device)
    bad = [h for h in range(heads) if not torch.equal(perm_idx[h].long().sort().values, expected)]
    if bad:
        raise AttnExportError(f"{_OP}: perm_idx of head {bad[0]} is not a permutation of 0..{n - 1}; build it with "
                              "attn_export.models.paro.grid_permutation")
    empty = (kv_count == 0).nonzero()
    if empty.numel():
        _, head, row = (int(x) for x in empty[0])
        raise AttnExportError(f"{_OP}: kv_count row {row} of head {head} lists no block; every row of a PARO "
                              "layout keeps at least one block (its diagonal block)")


def _is_symbolic(t: torch.Tensor) -> bool:
    return isinstance(t, FakeTensor) or torch.compiler.is_compiling()


# ---------------------------------------------------------------------------------------------
# CPU implementation


def _forward(q, k, v, perm_idx, kv_count, kv_index, block: int, qk_bits: int, pv_bits: int, q_group: int,
             k_group: int, smooth_k: bool, scale: float) -> torch.Tensor:
    batch, heads, n, dim = q.shape
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    gather = perm_idx.long()[None, :, :, None].expand(batch, heads, n, dim)
    qp, kp, vp = (x.to(compute).gather(2, gather) for x in (q, k, v))
    if qk_bits < 16:
        if smooth_k:  # exact: q . mean(k) is one constant along a row, which the softmax cancels
            kp = kp - kp.mean(dim=2, keepdim=True)
        qp, kp = quantize_groups(qp, q_group, qk_bits), quantize_groups(kp, k_group, qk_bits)
    if pv_bits < 16:
        vp = quantize_channels(vp, pv_bits)
    out = _blocked(qp, kp, vp, kv_count, kv_index, block, pv_bits, scale)
    return torch.empty_like(out).scatter_(2, gather, out).to(q.dtype)


def _blocked(qp, kp, vp, kv_count, kv_index, block: int, pv_bits: int, scale: float) -> torch.Tensor:
    """Attention of the permuted sequence over the listed blocks, P quantized per tile when pv_bits < 16."""
    batch, heads, n, dim = qp.shape
    nb, max_blocks = num_blocks(n, block), kv_index.shape[3]
    count = kv_count.expand(batch, heads, nb).long()
    index = kv_index.expand(batch, heads, nb, max_blocks).long().clamp(0, nb - 1)
    listed = torch.arange(max_blocks) < count.unsqueeze(-1)  # [B, H, nb, M]
    in_length = (index.unsqueeze(-1) * block + torch.arange(block)) < n
    valid = (listed.unsqueeze(-1) & in_length).flatten(-2)  # [B, H, nb, M*block]

    def blocked(x):  # [B, H, N, D] -> [B, H, nb, block, D], the tail zero-padded
        return torch.nn.functional.pad(x, (0, 0, 0, nb * block - n)).reshape(batch, heads, nb, block, dim)

    qb, kb, vb = blocked(qp), blocked(kp), blocked(vp)
    rows_valid = (torch.arange(nb * block) < n).to(qp.dtype).reshape(nb, block, 1, 1)
    rows_b = torch.arange(batch).view(batch, 1, 1, 1)
    rows_h = torch.arange(heads).view(1, heads, 1, 1)
    chunk = max(1, _CHUNK_BYTES // max(1, batch * heads * max_blocks * block * dim * 2 * qp.element_size()))
    outputs = []
    for lo in range(0, nb, chunk):
        hi = min(lo + chunk, nb)
        picked = index[:, :, lo:hi]
        keys = kb[rows_b, rows_h, picked].reshape(batch, heads, hi - lo, -1, dim)  # [B, H, n, M*block, D]
        values = vb[rows_b, rows_h, picked].reshape(batch, heads, hi - lo, -1, dim)
        logits = (qb[:, :, lo:hi] @ keys.transpose(-1, -2)) * scale  # [B, H, n, block, M*block]
        logits = logits.masked_fill(~valid[:, :, lo:hi].unsqueeze(-2), float("-inf"))
        p = torch.exp(logits - logits.amax(dim=-1, keepdim=True))  # unnormalised, 0 where masked
        total = p.sum(dim=-1, keepdim=True)  # the denominator: unquantized
        if pv_bits < 16:
            tiles = p.unflatten(-1, (max_blocks, block))
            p = quantize_tiles(tiles, rows_valid[lo:hi], pv_bits).flatten(-2)
        outputs.append((p @ values) / total)
    out = torch.cat(outputs, dim=2) if len(outputs) > 1 else outputs[0]
    return out.reshape(batch, heads, nb * block, dim)[:, :, :n]


def _paro_attention_cpu(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, perm_idx: torch.Tensor,
                        kv_count: torch.Tensor, kv_index: torch.Tensor, block: int, qk_bits: int, pv_bits: int,
                        q_group: int, k_group: int, smooth_k: bool, scale: float) -> torch.Tensor:
    return _forward(q, k, v, perm_idx, kv_count, kv_index, block, qk_bits, pv_bits, q_group, k_group, smooth_k,
                    scale)


_paro_attention_op = register_attention_op(PARO, _paro_attention_cpu)


def paro_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, perm_idx: torch.Tensor,
                   kv_count: torch.Tensor, kv_index: torch.Tensor, block: int = 64, qk_bits: int = 8,
                   pv_bits: int = 8, q_group: int = 32, k_group: int = 64, smooth_k: bool = True,
                   scale: float | None = None) -> torch.Tensor:
    """PARO attention over ``[B, heads, N, D]`` tensors (docs/ops/paro_attention.md).

    ``perm_idx`` int32 ``[heads, N]`` is each head's gather order (grid_permutation); ``kv_count`` /
    ``kv_index`` are a padded-ELL block layout over the permuted sequence (``[1|B, heads, nb]`` /
    ``[1|B, heads, nb, max_blocks]``, nb = ceil(N / block)). Exported by torch.export as one
    ``attn_export::paro_attention`` node (ONNX: ``attn_export::ParoAttention``).
    """
    check_inputs(q, k, v, perm_idx, kv_count, kv_index, block, qk_bits, pv_bits, q_group, k_group)
    if not q.is_floating_point():
        raise AttnExportError(f"{_OP}: q, k, v must be floating point; got {q.dtype}")
    if scale is None:
        scale = q.shape[-1] ** -0.5
    return _paro_attention_op(q, k, v, perm_idx, kv_count, kv_index, int(block), int(qk_bits), int(pv_bits),
                              int(q_group), int(k_group), bool(smooth_k), float(scale))


__all__ = ["ORDERS", "ORDER_NAMES", "grid_permutation", "order_index", "paro_attention", "quantize_channels",
           "quantize_groups", "quantize_tiles"]
