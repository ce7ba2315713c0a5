"""Attention ops (torch custom ops with CPU implementations), layers and the model zoo."""

from attn_export.models.block_sparse import block_sparse_attention
from attn_export.models.layers import (
    BlockSparseSelfAttention,
    NeighborhoodAttention1D,
    NeighborhoodAttention2D,
    NeighborhoodAttention3D,
)
from attn_export.models.neighborhood import NAParams, neighborhood_attention
from attn_export.models.paro import paro_attention

__all__ = [
    "BlockSparseSelfAttention",
    "block_sparse_attention",
    "NAParams",
    "neighborhood_attention",
    "NeighborhoodAttention1D",
    "NeighborhoodAttention2D",
    "NeighborhoodAttention3D",
    "paro_attention",
]
