"""One registry entry per attention op: every layer (torch, ONNX, TensorRT) takes its names from here."""

from __future__ import annotations

from dataclasses import dataclass

DOMAIN = "attn_export"  # ONNX domain, torch library namespace and TensorRT plugin namespace
DOMAIN_VERSION = 1


@dataclass(frozen=True)
class OpSpec:
    key: str  # short name used in docs and the CLI
    torch_name: str  # torch custom op name inside the `attn_export` library
    onnx_op_type: str  # ONNX node op_type in DOMAIN; also the TensorRT plugin name
    plugin_version: str = "1"

    @property
    def torch_qualname(self) -> str:
        return f"{DOMAIN}::{self.torch_name}"

    @property
    def plugin_name(self) -> str:
        return self.onnx_op_type

    @property
    def plugin_namespace(self) -> str:
        return DOMAIN


NEIGHBORHOOD = OpSpec("neighborhood", "neighborhood_attention", "NeighborhoodAttention")
BLOCK_SPARSE = OpSpec("block-sparse", "block_sparse_attention", "BlockSparseAttention")
PARO = OpSpec("paro", "paro_attention", "ParoAttention")

OPS: dict[str, OpSpec] = {spec.key: spec for spec in (NEIGHBORHOOD, BLOCK_SPARSE, PARO)}

