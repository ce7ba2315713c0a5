"""Block-sparse attention (DESIGN.md section 5): the op, its checks and its CPU implementation.

q ``[B, H, Sq, D]``, k and v ``[B, H, Skv, D]`` (SDPA layout). The layout is padded-ELL over blocks of
``block_q`` x ``block_kv`` tokens: ``kv_count`` int32 ``[B|1, H|1, nQB]`` and ``kv_index`` int32
``[B|1, H|1, nQB, max_blocks]`` (-1 padded), each broadcast over batch and heads where its leading dim
is 1. A query attends every key of its row's listed blocks (the last, partial kv block masked by
length); a row with no blocks outputs zeros. The CPU implementation gathers only the listed blocks:
time and memory grow with nQB * max_blocks, never with Sq * Skv.
"""

from __future__ import annotations

import torch

from attn_export.errors import AttnExportError
from attn_export.models.custom_op import register_attention_op
from attn_export.registry import BLOCK_SPARSE

_OP = "block_sparse_attention"
_CHUNK_BYTES = 64 << 20  # gathered K/V working set per chunk of query blocks


def num_blocks(length: int, block: int) -> int:
    return -(-length // block)


def check_inputs(q, k, v, kv_count, kv_index, block_q: int, block_kv: int, check_values: bool = True) -> None:
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


def _is_symbolic(t: torch.Tensor) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(t, FakeTensor) or torch.compiler.is_compiling()


def _forward(q, k, v, kv_count, kv_index, block_q: int, block_kv: int, scale: float) -> torch.Tensor:
    batch, heads, sq, dim = q.shape
    skv = k.shape[2]
    n_qb, max_blocks = num_blocks(sq, block_q), kv_index.shape[3]
    compute = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    if max_blocks == 0 or skv == 0:  # no row lists a block
        return torch.zeros_like(q)
    n_kvb = num_blocks(skv, block_kv)
    count = kv_count.expand(batch, heads, n_qb).long()
    index = kv_index.expand(batch, heads, n_qb, max_blocks).long().clamp(0, n_kvb - 1)
    listed = torch.arange(max_blocks, device=q.device) < count.unsqueeze(-1)  # [B, H, nQB, M]
    in_length = (index.unsqueeze(-1) * block_kv + torch.arange(block_kv, device=q.device)) < skv
    valid = (listed.unsqueeze(-1) & in_length).flatten(-2)  # [B, H, nQB, M*bkv]
    qp = torch.nn.functional.pad(q.to(compute) * scale, (0, 0, 0, n_qb * block_q - sq))
    qb = qp.reshape(batch, heads, n_qb, block_q, dim)

    def blocked(x):  # [B, H, Skv, D] -> [B, H, nKVB, bkv, D], the last block zero-padded
        x = torch.nn.functional.pad(x.to(compute), (0, 0, 0, n_kvb * block_kv - skv))
        return x.reshape(batch, heads, n_kvb, block_kv, dim)

    kb, vb = blocked(k), blocked(v)
    rows_b = torch.arange(batch, device=q.device).view(batch, 1, 1, 1)
    rows_h = torch.arange(heads, device=q.device).view(1, heads, 1, 1)
    per_block = max(1, batch * heads * max_blocks * block_kv * dim * 2 * kb.element_size())
    chunk = max(1, _CHUNK_BYTES // per_block)
    outputs = []
    for lo in range(0, n_qb, chunk):
        hi = min(lo + chunk, n_qb)
        picked = index[:, :, lo:hi]  # whole blocks are copied: one index per block, not per element
        keys = kb[rows_b, rows_h, picked].reshape(batch, heads, hi - lo, -1, dim)  # [B, H, n, M*bkv, D]
        values = vb[rows_b, rows_h, picked].reshape(batch, heads, hi - lo, -1, dim)
        logits = qb[:, :, lo:hi] @ keys.transpose(-1, -2)  # [B, H, n, bq, M*bkv]
        mask = valid[:, :, lo:hi]
        if not bool(mask.all()):  # padding slots or a partial last block
            logits.masked_fill_(~mask.unsqueeze(-2), float("-inf"))
        weights = torch.softmax(logits, dim=-1)
        if not bool(mask.any(dim=-1).all()):  # a row with no block: softmax of nothing is NaN, we want 0
            weights = weights.nan_to_num(0.0)
        outputs.append(weights @ values)
    out = torch.cat(outputs, dim=2) if len(outputs) > 1 else outputs[0]
    return out.reshape(batch, heads, n_qb * block_q, dim)[:, :, :sq].to(q.dtype)


def _block_sparse_attention_cpu(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_count: torch.Tensor,
                                kv_index: torch.Tensor, block_q: int, block_kv: int, scale: float) -> torch.Tensor:
    return _forward(q, k, v, kv_count, kv_index, block_q, block_kv, scale)


_block_sparse_attention_op = register_attention_op(BLOCK_SPARSE, _block_sparse_attention_cpu)


def block_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_count: torch.Tensor,
                           kv_index: torch.Tensor, block_q: int, block_kv: int,
                           scale: float | None = None) -> torch.Tensor:
    """Attention of each query over the kv blocks its query block lists (DESIGN.md section 5).

    Exported by torch.export as one ``attn_export::block_sparse_attention`` node (ONNX:
    ``attn_export::BlockSparseAttention``). Layout helpers: attn_export.models.block_layout.
    """
    check_inputs(q, k, v, kv_count, kv_index, block_q, block_kv)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    return _block_sparse_attention_op(q, k, v, kv_count, kv_index, int(block_q), int(block_kv), float(scale))


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
