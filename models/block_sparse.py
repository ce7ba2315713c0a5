"""Block-sparse attention (docs/ops/block_sparse_attention.md): the op, its checks and its CPU implementation.

q ``[B, H, Sq, D]``, k and v ``[B, H, Skv, D]`` (SDPA layout). The layout is padded-ELL over blocks of
``block_q`` x ``block_kv`` tokens: ``kv_count`` int32 ``[B|1, H|1, nQB]`` and ``kv_index`` int32
``[B|1, H|1, nQB, max_blocks]`` (-1 padded), each broadcast over batch and heads where its leading dim
is 1. A query attends every key of its row's listed blocks (the last, partial kv block masked by
length); a row with no blocks outputs zeros. The optional ``block_bias`` ``[B|1, H|1, nQB, max_blocks,
block_q, block_kv]`` is added to the scaled logits of each listed slot's keys (``-inf`` masks a key: the
exact form of FlexAttention's partial blocks and additive score_mods); a query whose every key is masked
outputs zeros, as flex_attention does. The CPU implementation runs each query block as one SDPA
(GEMMs, fused softmax) over either its listed blocks, copied whole into one operand, or, where a row lists
most blocks, all of K and V under a block mask (no copy); time and memory grow with nQB * max_blocks (or,
for such rows, with their share of Skv), never with Sq * Skv.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch._subclasses.fake_tensor import FakeTensor

from attn_export.errors import AttnExportError
from attn_export.models.custom_op import register_attention_op
from attn_export.models.neighborhood import select_rows
from attn_export.registry import BLOCK_SPARSE

_OP = "block_sparse_attention"
# Gathered K/V of one chunk of query blocks (bytes): bounds memory; few chunks, as few parallel regions as
# possible (attn_export.models.neighborhood._CHUNK_BYTES says why), copied into reused scratch buffers.
_CHUNK_BYTES = 32 << 20


def num_blocks(length: int, block: int) -> int:
    return -(-length // block)


def check_inputs(q, k, v, kv_count, kv_index, block_q: int, block_kv: int, check_values: bool = True,
                 block_bias: torch.Tensor | None = None) -> None:
    """Raise AttnExportError naming the argument for any shape, dtype or (when concrete) value problem."""
    for name, block in (("block_q", block_q), ("block_kv", block_kv)):
        if not isinstance(block, int) or isinstance(block, bool) or block < 1:
            raise AttnExportError(f"{_OP}: {name}={block!r} must be a positive int")
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise AttnExportError(f"{_OP}: q, k, v must be [B, H, S, D]; got ranks {q.dim()}, {k.dim()}, {v.dim()}")
    if k.shape != v.shape:
        raise AttnExportError(f"{_OP}: k {tuple(k.shape)} and v {tuple(v.shape)} must have one shape")
    if q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise AttnExportError(f"{_OP}: q {tuple(q.shape)} and k {tuple(k.shape)} must share B, H and D")
    if not (q.dtype == k.dtype == v.dtype) or not q.is_floating_point():
        raise AttnExportError(f"{_OP}: q, k, v must share one floating dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if kv_count.dtype != torch.int32 or kv_index.dtype != torch.int32:
        raise AttnExportError(f"{_OP}: kv_count and kv_index must be int32; got {kv_count.dtype}, {kv_index.dtype}")
    batch, heads, sq, _ = q.shape
    n_qb, n_kvb = num_blocks(sq, block_q), num_blocks(k.shape[2], block_kv)
    if kv_count.dim() != 3 or kv_index.dim() != 4:
        raise AttnExportError(f"{_OP}: kv_count must be [B|1, H|1, nQB] and kv_index [B|1, H|1, nQB, max_blocks]; "
                              f"got shapes {tuple(kv_count.shape)} and {tuple(kv_index.shape)}")
    for name, t in (("kv_count", kv_count), ("kv_index", kv_index)):
        if t.shape[0] not in (1, batch) or t.shape[1] not in (1, heads) or t.shape[2] != n_qb:
            raise AttnExportError(
                f"{_OP}: {name} {tuple(t.shape)} must lead with [B|1, H|1, nQB] = [{batch}|1, {heads}|1, {n_qb}] "
                f"(nQB = ceil(Sq={sq} / block_q={block_q}))")
    if block_bias is not None:
        _check_bias(block_bias, batch, heads, n_qb, kv_index.shape[3], block_q, block_kv)
    if not check_values or _is_symbolic(kv_count) or _is_symbolic(kv_index):
        return
    max_blocks = kv_index.shape[3]
    if kv_count.numel() and (int(kv_count.min()) < 0 or int(kv_count.max()) > max_blocks):
        raise AttnExportError(f"{_OP}: kv_count holds values in [{int(kv_count.min())}, {int(kv_count.max())}]; "
                              f"each must lie in [0, max_blocks={max_blocks}]")
    listed = torch.arange(max_blocks, device=kv_index.device) < kv_count.unsqueeze(-1)
    listed = listed.expand(torch.broadcast_shapes(listed.shape, kv_index.shape))
    used = kv_index.expand(listed.shape)[listed]
    if used.numel() and (int(used.min()) < 0 or int(used.max()) >= n_kvb):
        bad = int(used.min()) if int(used.min()) < 0 else int(used.max())
        raise AttnExportError(f"{_OP}: kv_index lists block {bad}; listed blocks must lie in [0, {n_kvb}) "
                              f"(ceil(Skv={k.shape[2]} / block_kv={block_kv}))")
    # A row whose distinct blocks are fewer than its count lists one block twice.
    if used.numel() and bool((dense_block_mask(kv_count, kv_index, n_kvb).sum(-1) < kv_count).any()):
        raise AttnExportError(f"{_OP}: a row of kv_index lists one block twice; list each block once")


def _check_bias(bias: torch.Tensor, batch: int, heads: int, n_qb: int, max_blocks: int, block_q: int,
                block_kv: int) -> None:
    want = f"[{batch}|1, {heads}|1, {n_qb}, {max_blocks}, {block_q}, {block_kv}]"
    if not bias.is_floating_point() or bias.dim() != 6:
        raise AttnExportError(f"{_OP}: block_bias must be a float tensor [B|1, H|1, nQB, max_blocks, block_q, "
                              f"block_kv] = {want}; got {bias.dtype} {tuple(bias.shape)}")
    if bias.shape[0] not in (1, batch) or bias.shape[1] not in (1, heads) or tuple(bias.shape[2:]) != (
            n_qb, max_blocks, block_q, block_kv):
        raise AttnExportError(f"{_OP}: block_bias {tuple(bias.shape)} must be {want} (one block_q x block_kv tile "
                              "per slot of kv_index)")


def _is_symbolic(t: torch.Tensor) -> bool:
    return isinstance(t, FakeTensor) or torch.compiler.is_compiling()


# Cost of one kv block for one query block, relative to the same block in dense SDPA (measured on the project's
# 2-core VM, S = 4096, blocks of 64, head_dim 64): a gathered block pays for copying its K and V rows next to
# the GEMMs; attending every block of a row copies nothing but computes unlisted blocks too, under a mask
# (a row that lists every block needs none and costs 1.05). Each row takes the cheaper form.
_GATHERED_BLOCK_COST = 1.7
_ALL_BLOCKS_COST = 1.2


def _forward(q, k, v, kv_count, kv_index, block_q: int, block_kv: int, scale: float,
             bias: torch.Tensor | None = None) -> torch.Tensor:
    batch, heads, sq, dim = q.shape
    skv = k.shape[2]
    n_qb, n_kvb, max_blocks = num_blocks(sq, block_q), num_blocks(skv, block_kv), kv_index.shape[3]
    if max_blocks == 0 or skv == 0:  # no row lists a block
        return torch.zeros_like(q)
    compute = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    lead = torch.broadcast_shapes(kv_count.shape[:2], kv_index.shape[:2])
    count = kv_count.expand(*lead, n_qb).long()
    index = kv_index.expand(*lead, n_qb, max_blocks).long().clamp(0, n_kvb - 1)
    qb = _blocked(q.to(compute).reshape(batch * heads, sq, dim), block_q).view(batch * heads, n_qb, block_q, dim)
    kf, vf = (x.to(compute).reshape(batch * heads, skv, dim) for x in (k, v))
    listed = count.amax(dim=(0, 1))  # [nQB]: the most blocks a row lists in any batch and head
    every = listed * _GATHERED_BLOCK_COST > n_kvb * _ALL_BLOCKS_COST
    if bias is not None:  # the bias is per listed slot: the gathered form reads it as it is
        every = torch.zeros_like(every)
    outputs, order = [], []
    for rows, attend in ((torch.nonzero(~every).flatten(), _attend_gathered),
                         (torch.nonzero(every).flatten(), _attend_all_blocks)):
        if rows.numel():
            layout = _Layout(count, index, batch, heads, None if bias is None else bias.to(compute))
            outputs.append(attend(qb, kf, vf, layout, rows, block_kv, scale))
            order.append(rows)
    out = torch.cat(outputs, dim=1) if len(outputs) > 1 else outputs[0]
    if len(order) > 1:
        out = out.index_select(1, torch.argsort(torch.cat(order)))
    if bool((count == 0).any()):  # a row with no block: zeros, whatever the softmax of nothing gives
        out = out.masked_fill(_expand_lead(count == 0, batch, heads)[..., None, None], 0.0)
    return out.reshape(batch, heads, n_qb * block_q, dim)[:, :, :sq].to(q.dtype)


def _expand_lead(x: torch.Tensor, batch: int, heads: int) -> torch.Tensor:
    """[B|1, H|1, ...] -> [B * H | 1, ...]: the leading dims of a layout tensor as SDPA's batch dim."""
    if x.shape[:2] == (1, 1):
        return x[0]
    return x.expand(batch, heads, *x.shape[2:]).flatten(0, 1)


@dataclass(frozen=True)
class _Layout:
    count: torch.Tensor  # [B|1, H|1, nQB] int64
    index: torch.Tensor  # [B|1, H|1, nQB, max_blocks] int64, clamped into [0, nKVB)
    batch: int
    heads: int
    bias: torch.Tensor | None = None  # [B|1, H|1, nQB, max_blocks, block_q, block_kv], compute dtype

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        return _expand_lead(x, self.batch, self.heads)


def _additive(valid: torch.Tensor, dtype) -> torch.Tensor | None:
    """0 where valid, -inf elsewhere (None when all is valid: SDPA then reads no mask)."""
    if bool(valid.all()):
        return None
    return torch.zeros(valid.shape, dtype=dtype, device=valid.device).masked_fill_(~valid, float("-inf"))


def _attend_gathered(qb, k, v, layout: _Layout, rows, block_kv: int, scale: float) -> torch.Tensor:
    """Rows ``rows`` of query blocks against the K/V blocks they list, copied block by block into
    [B*H, rows, slots * block_kv, D] (a chunk of rows at a time): SDPA's GEMMs need them contiguous."""
    bh, _, _, dim = qb.shape
    skv = k.shape[1]
    n_kvb, slots = num_blocks(skv, block_kv), max(1, int(layout.count[..., rows].max()))
    device = qb.device
    index = layout.rows(layout.index[..., rows, :slots])  # [L, rows, slots], L = 1 or B*H
    # Keys of each slot: listed (slot < count) and before Skv (the last block may be partial).
    mask = None
    if int(layout.count[..., rows].min()) < slots or skv % block_kv:  # else every slot holds block_kv keys
        listed = torch.arange(slots, device=device) < layout.rows(layout.count[..., rows]).unsqueeze(-1)
        in_length = index.unsqueeze(-1) * block_kv + torch.arange(block_kv, device=device) < skv
        mask = _additive((listed.unsqueeze(-1) & in_length).flatten(-2).unsqueeze(-2), qb.dtype)  # [L, rows, 1, W]
    dead = None
    if layout.bias is not None:  # [L', rows, slots, bq, bkv] -> [L', rows, bq, slots * bkv], added to the mask
        bias = layout.rows(layout.bias[:, :, rows, :slots]).transpose(2, 3).flatten(-2)
        mask = bias if mask is None else mask + bias
        dead = (mask == float("-inf")).all(-1, keepdim=True)  # [L, rows, bq, 1]: no key left, zeros as flex gives
    flat = (index + torch.arange(bh, device=device).view(-1, 1, 1) * n_kvb).flatten(1)  # [B*H, rows * slots]
    kb, vb = (_blocked(x, block_kv) for x in (k, v))
    chunk = max(1, _CHUNK_BYTES // (bh * slots * block_kv * dim * kb.element_size()))  # rows per K (and V) buffer
    outputs = []
    for lo in range(0, rows.numel(), chunk):
        part = slice(lo, lo + chunk)
        picked = flat.view(bh, -1, slots)[:, part].reshape(-1)
        keys, values = (select_rows(x, 0, picked, role).view(bh, -1, slots * block_kv, dim)
                        for x, role in ((kb, "k"), (vb, "v")))
        outputs.append(torch.nn.functional.scaled_dot_product_attention(
            _query_rows(qb, rows[part]), keys, values, attn_mask=None if mask is None else mask[:, part],
            scale=scale))
    out = torch.cat(outputs, dim=1) if len(outputs) > 1 else outputs[0]
    return out if dead is None else out.masked_fill(dead, 0.0)


def _attend_all_blocks(qb, k, v, layout: _Layout, rows, block_kv: int, scale: float) -> torch.Tensor:
    """Rows ``rows`` of query blocks against all of K and V (views, no copy), unlisted blocks masked."""
    bh, _, _, dim = qb.shape
    skv = k.shape[1]
    n_kvb = num_blocks(skv, block_kv)
    mask = None
    if int(layout.count[..., rows].min()) < n_kvb:  # else each row lists every block (each once: checked)
        blocks = dense_block_mask(layout.count[..., rows], layout.index[..., rows, :], n_kvb)
        valid = layout.rows(blocks).repeat_interleave(block_kv, dim=-1)[..., :skv]
        mask = _additive(valid.unsqueeze(-2), qb.dtype)  # [L, rows, 1, Skv]; a per-block element mask: scatter here
    n = rows.numel()
    return torch.nn.functional.scaled_dot_product_attention(
        _query_rows(qb, rows), k.unsqueeze(1).expand(bh, n, skv, dim), v.unsqueeze(1).expand(bh, n, skv, dim),
        attn_mask=mask, scale=scale)


def _query_rows(qb: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Query blocks ``rows`` of qb [B*H, nQB, bq, D]: a view when they are a contiguous run."""
    first = int(rows[0])
    if int(rows[-1]) - first + 1 == rows.numel():  # rows ascend: a run of consecutive blocks
        return qb[:, first:first + rows.numel()]
    return select_rows(qb, 1, rows, "q")


def _blocked(x: torch.Tensor, block: int) -> torch.Tensor:
    """[B*H, S, D] -> [B*H * nBlocks, block, D], the last block zero-padded."""
    bh, length, dim = x.shape
    pad = num_blocks(length, block) * block - length
    return torch.nn.functional.pad(x, (0, 0, 0, pad)).view(-1, block, dim) if pad else x.reshape(-1, block, dim)


def _block_sparse_attention_cpu(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_count: torch.Tensor,
                                kv_index: torch.Tensor, block_q: int, block_kv: int, scale: float,
                                block_bias: torch.Tensor | None = None) -> torch.Tensor:
    return _forward(q, k, v, kv_count, kv_index, block_q, block_kv, scale, block_bias)


_block_sparse_attention_op = register_attention_op(BLOCK_SPARSE, _block_sparse_attention_cpu)


def block_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_count: torch.Tensor,
                           kv_index: torch.Tensor, block_q: int, block_kv: int,
                           scale: float | None = None, block_bias: torch.Tensor | None = None) -> torch.Tensor:
    """Attention of each query over the kv blocks its query block lists (docs/ops/block_sparse_attention.md).

    Exported by torch.export as one ``attn_export::block_sparse_attention`` node (ONNX:
    ``attn_export::BlockSparseAttention``). Layout helpers: attn_export.models.block_layout.
    ``block_bias`` (optional, [B|1, H|1, nQB, max_blocks, block_q, block_kv]) is added to the scaled logits of
    each listed slot; ``-inf`` masks single keys of a block (block_layout.element_bias builds it from a mask).
    """
    check_inputs(q, k, v, kv_count, kv_index, block_q, block_kv, block_bias=block_bias)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    return _block_sparse_attention_op(q, k, v, kv_count, kv_index, int(block_q), int(block_kv), float(scale),
                                      block_bias)


def dense_block_mask(kv_count: torch.Tensor, kv_index: torch.Tensor, n_kv_blocks: int) -> torch.Tensor:
    """The boolean block mask ``[B|1, H|1, nQB, nKVB]`` that a padded-ELL layout describes."""
    max_blocks = kv_index.shape[-1]
    listed = torch.arange(max_blocks, device=kv_count.device) < kv_count.unsqueeze(-1)
    shape = torch.broadcast_shapes(listed.shape, kv_index.shape)
    listed, index = listed.expand(shape), kv_index.expand(shape).long()
    mask = torch.zeros(*shape[:-1], n_kv_blocks + 1, dtype=torch.bool, device=kv_index.device)
    mask.scatter_(-1, torch.where(listed, index, n_kv_blocks), True)
    return mask[..., :n_kv_blocks]


__all__ = ["block_sparse_attention", "check_inputs", "dense_block_mask", "num_blocks"]
