"""Attention layers: neighborhood attention over channels-last ``[B, *spatial, C]`` (as in NATTEN) and
block-sparse self-attention over ``[B, N, C]`` tokens."""

from __future__ import annotations

import torch
from torch import nn

from attn_export.errors import AttnExportError
from attn_export.models.block_layout import from_block_mask, topk_routing
from attn_export.models.block_sparse import block_sparse_attention
from attn_export.models.neighborhood import NAParams, neighborhood_attention


class NeighborhoodAttentionND(nn.Module):
    rank: int = 0

    def __init__(
        self,
        dim: int,
        num_heads: int,
        kernel_size,
        stride=1,
        dilation=1,
        is_causal=False,
        rel_pos_bias: bool = False,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
    ):
        super().__init__()
        if dim % num_heads:
            raise AttnExportError(f"{type(self).__name__}: dim={dim} is not divisible by num_heads={num_heads}")
        self.params = NAParams.from_args(self.rank, kernel_size, stride, dilation, is_causal)
        if rel_pos_bias and self.params.any_causal:
            raise AttnExportError(f"{type(self).__name__}: rel_pos_bias needs non-causal attention")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale if qk_scale is not None else self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        if rel_pos_bias:
            self.rpb = nn.Parameter(torch.empty(num_heads, *self.params.rpb_shape_tail))
            nn.init.trunc_normal_(self.rpb, std=0.02, a=-2.0, b=2.0)
        else:
            self.register_parameter("rpb", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != self.rank + 2:
            raise AttnExportError(
                f"{type(self).__name__}: input has {x.dim()} dims; expected [B, {self.rank} spatial axes, C]"
            )
        qkv = self.qkv(x).unflatten(-1, (3, self.num_heads, self.head_dim))
        q, k, v = qkv.unbind(dim=-3)
        p = self.params
        out = neighborhood_attention(
            q, k, v, p.kernel_size, p.stride, p.dilation, p.is_causal, scale=self.scale, rpb=self.rpb
        )
        return self.proj(out.flatten(-2))

    def extra_repr(self) -> str:
        p = self.params
        return (
            f"heads={self.num_heads}, head_dim={self.head_dim}, kernel_size={p.kernel_size}, "
            f"stride={p.stride}, dilation={p.dilation}, is_causal={p.is_causal}, rpb={self.rpb is not None}"
        )


class NeighborhoodAttention1D(NeighborhoodAttentionND):
    """1-D neighborhood attention over ``[B, L, C]``."""

    rank = 1


class NeighborhoodAttention2D(NeighborhoodAttentionND):
    """2-D neighborhood attention over ``[B, H, W, C]``."""

    rank = 2


class NeighborhoodAttention3D(NeighborhoodAttentionND):
    """3-D neighborhood attention over ``[B, T, H, W, C]``."""

    rank = 3


class BlockSparseSelfAttention(nn.Module):
    """Multi-head self-attention over [B, N, C] tokens whose attention is block-sparse: a fixed layout
    (buffers, exported as initializers) or BiFormer-style top-k routing computed from q and k per call."""

    def __init__(self, dim: int, heads: int, block: int, layout: torch.Tensor | None = None, topk: int | None = None):
        super().__init__()
        if (layout is None) == (topk is None):
            raise AttnExportError("BlockSparseSelfAttention takes either a fixed block layout or topk routing")
        self.heads, self.block, self.topk = heads, block, topk
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        if layout is not None:
            kv_count, kv_index = from_block_mask(layout)
            self.register_buffer("kv_count", kv_count)
            self.register_buffer("kv_index", kv_index)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        if self.topk:
            kv_count, kv_index = topk_routing(q, k, self.block, self.block, self.topk)
        else:
            kv_count, kv_index = self.kv_count, self.kv_index
        out = block_sparse_attention(q, k, v, kv_count, kv_index, self.block, self.block)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


def rope_angles(grid: tuple[int, int, int], prefix: int, head_dim: int, base: float = 10.0) -> torch.Tensor:
    """3-D rotary angles ``[prefix + F*H*W, head_dim // 2]``: a third of the rotation pairs per grid axis
    (F, H, W), frequencies base ** (-j / pairs); prefix tokens are not rotated (angle 0)."""
    pairs = head_dim // 2
    per_axis = [pairs // 3 + (1 if a < pairs % 3 else 0) for a in range(3)]
    coords = torch.stack(torch.meshgrid(*(torch.arange(n, dtype=torch.float32) for n in grid), indexing="ij"),
                         dim=-1).reshape(-1, 3)
    angles = [coords[:, a:a + 1] * base ** (-torch.arange(per_axis[a], dtype=torch.float32) / max(1, per_axis[a]))
              for a in range(3)]
    return torch.cat([torch.zeros(prefix, pairs), torch.cat(angles, dim=1)])


def apply_rope(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (2j, 2j+1) of ``x [..., N, D]`` by ``angles [N, D/2]``."""
    even, odd = x[..., 0::2], x[..., 1::2]
    cos, sin = angles.cos(), angles.sin()
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2)


class ParoAttention(nn.Module):
    """Multi-head self-attention over ``[B, N, C]`` with N = prefix + F*H*W tokens, as video DiTs write it:
    qkv projection, optional 3-D RoPE on the grid tokens (before any reordering), one
    ``F.scaled_dot_product_attention`` call, output projection. Exported dense as written, or, with
    ``attn-export --paro``, each call becomes one ParoAttention node with its planned order and mask."""

    def __init__(self, dim: int, num_heads: int, grid: tuple[int, int, int] | None = None, prefix: int = 0,
                 rope: bool = True, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise AttnExportError(f"ParoAttention: dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        if rope:
            if grid is None:
                raise AttnExportError("ParoAttention: rope=True needs the token grid (F, H, W)")
            self.register_buffer("angles", rope_angles(tuple(grid), prefix, self.head_dim), persistent=False)
        else:
            self.angles = None

    def forward(self, x: torch.Tensor, q_gain: torch.Tensor | None = None) -> torch.Tensor:
        batch, tokens, dim = x.shape
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if self.angles is not None:
            q, k = apply_rope(q, self.angles), apply_rope(k, self.angles)
        if q_gain is not None:  # e.g. a timestep-dependent sharpness, [B] -> per sample
            q = q * q_gain.view(batch, 1, 1, 1)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))
