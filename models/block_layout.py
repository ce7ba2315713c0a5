"""Block-sparse layouts: build the padded-ELL form (kv_count, kv_index) from a dense block mask, a
FlexAttention BlockMask or ONNX Runtime's CSR form, convert back, and route dynamically (top-k).

Padded ELL (docs/ops/block_sparse_attention.md, Semantics): ``kv_count`` int32 ``[B|1, H|1, nQB]``, ``kv_index`` int32
``[B|1, H|1, nQB, max_blocks]``, listed blocks first in ascending order, the rest -1.
"""

from __future__ import annotations

import warnings

import torch

from attn_export.errors import AttnExportError
from attn_export.models.block_sparse import dense_block_mask, num_blocks


def from_block_mask(mask: torch.Tensor, max_blocks: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded ELL from a boolean block mask ``[B|1, H|1, nQB, nKVB]`` (True: the query block attends
    that kv block). ``max_blocks`` defaults to the largest row count."""
    if mask.dtype != torch.bool or mask.dim() != 4:
        raise AttnExportError(f"block mask must be a 4-D bool tensor [B|1, H|1, nQB, nKVB]; got {mask.dtype} "
                              f"{tuple(mask.shape)}")
    count = mask.sum(dim=-1)
    widest = int(count.max()) if count.numel() else 0
    max_blocks = widest if max_blocks is None else max_blocks
    if widest > max_blocks:
        raise AttnExportError(f"a row of the block mask lists {widest} blocks, more than max_blocks={max_blocks}")
    n_kvb = mask.shape[-1]
    # Listed block ids in ascending order: sort keys put unlisted blocks after every listed one.
    ids = torch.arange(n_kvb, device=mask.device)
    keys = torch.where(mask, ids, n_kvb + ids)
    order = keys.sort(dim=-1).values[..., :max_blocks]
    index = torch.where(order < n_kvb, order, -1)
    if index.shape[-1] < max_blocks:  # max_blocks wider than the mask has blocks
        index = torch.nn.functional.pad(index, (0, max_blocks - index.shape[-1]), value=-1)
    return count.to(torch.int32), index.to(torch.int32)


def to_block_mask(kv_count: torch.Tensor, kv_index: torch.Tensor, n_kv_blocks: int) -> torch.Tensor:
    """The dense boolean block mask of a padded-ELL layout."""
    return dense_block_mask(kv_count, kv_index, n_kv_blocks)


def element_bias(dense: torch.Tensor, kv_count: torch.Tensor, kv_index: torch.Tensor, block_q: int,
                 block_kv: int) -> torch.Tensor:
    """The ``block_bias`` input of block_sparse_attention from a dense per-element logit bias
    ``[B|1, H|1, Sq, Skv]`` (float; a boolean mask becomes 0 where True and -inf where False): the
    block_q x block_kv tile of every slot of kv_index, ``[B|1, H|1, nQB, max_blocks, block_q, block_kv]``.
    Unlisted slots and the padding past Sq or Skv hold 0 (the op masks them itself)."""
    if dense.dim() != 4:
        raise AttnExportError(f"element bias must be [B|1, H|1, Sq, Skv]; got {tuple(dense.shape)}")
    if dense.dtype == torch.bool:
        dense = torch.zeros(dense.shape).masked_fill_(~dense, float("-inf"))
    sq, skv = dense.shape[-2:]
    n_qb, n_kvb = num_blocks(sq, block_q), num_blocks(skv, block_kv)
    padded = torch.nn.functional.pad(dense, (0, n_kvb * block_kv - skv, 0, n_qb * block_q - sq))
    tiles = padded.unflatten(-1, (n_kvb, block_kv)).unflatten(-3, (n_qb, block_q)).permute(0, 1, 2, 4, 3, 5)
    lead = torch.broadcast_shapes(tiles.shape[:2], kv_count.shape[:2], kv_index.shape[:2])
    max_blocks = kv_index.shape[-1]
    index = kv_index.expand(*lead, n_qb, max_blocks).long().clamp(0, max(n_kvb - 1, 0))
    gathered = tiles.expand(*lead, *tiles.shape[2:]).gather(
        3, index[..., None, None].expand(*lead, n_qb, max_blocks, block_q, block_kv))
    listed = torch.arange(max_blocks) < kv_count.expand(*lead, n_qb).unsqueeze(-1)
    return gathered.masked_fill(~listed[..., None, None], 0.0).contiguous()


def from_flex_block_mask(block_mask, allow_partial: bool = False) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Padded ELL and (block_q, block_kv) from a FlexAttention ``BlockMask``.

    A BlockMask lists full blocks (full_kv_num_blocks / full_kv_indices: every element attended) and
    partial blocks (kv_num_blocks / kv_indices: the mask_mod decides per element). Padded ELL attends
    every listed block in full, so only a BlockMask without partial blocks converts exactly; one with
    partial blocks is refused, unless ``allow_partial`` (then they are attended in full, with a warning).
    A BlockMask made without full blocks (``full_kv_num_blocks is None``) lists every block as partial:
    build it with create_block_mask, which separates them. Rows past the sequence length are masked by
    length, as in FlexAttention.
    """
    block_q, block_kv = (int(x) for x in block_mask.BLOCK_SIZE)
    n_kvb = num_blocks(block_mask.seq_lengths[1], block_kv)
    n_qb = num_blocks(block_mask.seq_lengths[0], block_q)
    partial = dense_block_mask(block_mask.kv_num_blocks, block_mask.kv_indices, n_kvb)[:, :, :n_qb]
    mask = partial.clone()
    if block_mask.full_kv_num_blocks is not None:
        mask |= dense_block_mask(block_mask.full_kv_num_blocks, block_mask.full_kv_indices, n_kvb)[:, :, :n_qb]
    partial_count = int(partial.sum())
    if partial_count:
        message = (f"the FlexAttention BlockMask has {partial_count} partial blocks (its mask_mod masks inside them); "
                   "padded-ELL layouts attend listed blocks in full, so only block-aligned masks convert exactly")
        if not allow_partial:
            raise AttnExportError(f"{message}: use a mask aligned to BLOCK_SIZE={block_q}x{block_kv}, or pass "
                                  "allow_partial=True to attend the partial blocks in full")
        warnings.warn(f"{message}; allow_partial=True attends them in full, which changes the attention", stacklevel=2)
    kv_count, kv_index = from_block_mask(mask.cpu())
    return kv_count, kv_index, block_q, block_kv


def to_csr(kv_count: torch.Tensor, kv_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ONNX Runtime's SparseAttention layout: ``block_row_indices`` int32 ``[L, nQB + 1]`` and
    ``block_col_indices`` int32 ``[L, max_nnz]`` (-1 padded), one layout per head (L = H|1).

    The layout must not vary over the batch (leading dim 1); column indices come out ascending.
    """
    if kv_count.shape[0] != 1 or kv_index.shape[0] != 1:
        raise AttnExportError("ONNX Runtime's CSR layout is per head only: kv_count/kv_index need batch dim 1")
    heads = max(kv_count.shape[1], kv_index.shape[1])
    n_kvb = int(kv_index.max()) + 1 if kv_index.numel() else 0
    mask = dense_block_mask(kv_count, kv_index, max(n_kvb, 1))[0].expand(heads, -1, -1)
    counts = mask.sum(dim=-1)  # [L, nQB]
    rows = torch.nn.functional.pad(counts.cumsum(dim=-1), (1, 0)).to(torch.int32)
    width = int(rows[:, -1].max()) if rows.numel() else 0
    cols = torch.full((heads, width), -1, dtype=torch.int32)
    for layout in range(heads):
        listed = mask[layout].nonzero()[:, 1]  # row-major: rows in order, columns ascending
        cols[layout, : listed.numel()] = listed.to(torch.int32)
    return rows, cols


def from_csr(block_row_indices: torch.Tensor, block_col_indices: torch.Tensor,
             max_blocks: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded ELL ``[1, L, nQB]`` / ``[1, L, nQB, max_blocks]`` from ONNX Runtime's CSR layout."""
    rows = block_row_indices.long()
    if rows.dim() != 2 or block_col_indices.dim() != 2 or rows.shape[0] != block_col_indices.shape[0]:
        raise AttnExportError("block_row_indices [L, nQB+1] and block_col_indices [L, max_nnz] must share L")
    if bool((rows[:, 1:] < rows[:, :-1]).any()) or bool((rows[:, 0] != 0).any()):
        raise AttnExportError("block_row_indices must start at 0 and never decrease")
    counts = rows[:, 1:] - rows[:, :-1]  # [L, nQB]
    width = int(counts.max()) if counts.numel() else 0
    max_blocks = width if max_blocks is None else max_blocks
    if width > max_blocks:
        raise AttnExportError(f"a CSR row lists {width} blocks, more than max_blocks={max_blocks}")
    slot = torch.arange(max_blocks)
    gather_at = (rows[:, :-1].unsqueeze(-1) + slot).clamp_max(max(block_col_indices.shape[1] - 1, 0))
    index = block_col_indices.long().gather(1, gather_at.flatten(1)).reshape(gather_at.shape) \
        if block_col_indices.numel() else torch.zeros(gather_at.shape, dtype=torch.long)
    index = torch.where(slot < counts.unsqueeze(-1), index, -1)
    return counts.to(torch.int32).unsqueeze(0), index.to(torch.int32).unsqueeze(0)


def topk_routing(q: torch.Tensor, k: torch.Tensor, block_q: int, block_kv: int,
                 topk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """BiFormer-style routing: mean-pool q and k per block, score query blocks against kv blocks, keep
    the top-k kv blocks per query block and head. Usable inside a model: it exports as standard ONNX
    ops (Reshape, ReduceMean, MatMul, TopK, Cast) feeding the attention node.

    q ``[B, H, Sq, D]`` and k ``[B, H, Skv, D]`` with Sq % block_q == 0 and Skv % block_kv == 0.
    Returns kv_count ``[1, 1, nQB]`` (all topk) and kv_index ``[B, H, nQB, topk]``, both int32.
    """
    batch, heads, sq, dim = q.shape
    skv = k.shape[2]
    if sq % block_q or skv % block_kv:
        raise AttnExportError(f"topk_routing: sequence lengths {sq} and {skv} must be multiples of block_q={block_q} "
                              f"and block_kv={block_kv}")
    if not 1 <= topk <= skv // block_kv:
        raise AttnExportError(f"topk_routing: topk={topk} must lie in [1, {skv // block_kv}] (the kv block count)")
    q_region = q.reshape(batch, heads, sq // block_q, block_q, dim).mean(dim=3)
    k_region = k.reshape(batch, heads, skv // block_kv, block_kv, dim).mean(dim=3)
    affinity = q_region @ k_region.transpose(-1, -2)  # [B, H, nQB, nKVB]
    index = affinity.topk(topk, dim=-1).indices.to(torch.int32)
    count = torch.full((1, 1, sq // block_q), topk, dtype=torch.int32, device=q.device)
    return count, index
