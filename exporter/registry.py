"""The op contract: one registry entry per attention op, from which every layer takes its names and shapes.

Each :class:`OpSpec` declares the torch custom op, the ONNX node (inputs, attributes, type constraints), the
model-local function that decomposes it into standard ops, and the TensorRT plugin folder. The ONNX schema,
the torch -> ONNX translation, the local functions attached after export, the plugin field checks and the
contract tests are all loops over ``OPS``. Adding an op means new files plus one entry here.

Import-light on purpose (no torch, no onnx): hooks are dotted paths ("module:function") resolved on use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

DOMAIN = "attn_export"  # ONNX domain, torch library namespace and TensorRT plugin namespace
DOMAIN_VERSION = 1
PLUGIN_ATTRIBUTES = ("plugin_version", "plugin_namespace")  # on every custom node (TensorRT prefers the plugin)

# What the TensorRT ONNX parser hands a plugin for each ONNX attribute type (INT(S) become int32 fields).
FIELD_TYPES = {"INT": "int32", "INTS": "int32", "FLOAT": "float32", "FLOATS": "float32", "STRING": "char"}
FLOAT_TYPES = ("tensor(float)", "tensor(float16)", "tensor(bfloat16)")


@dataclass(frozen=True)
class Input:
    name: str
    type_var: str  # a type constraint of the op ("T", "I")
    doc: str
    optional: bool = False
    plugin: bool = True  # the TensorRT plugin takes it (False: engines refuse nodes that have it, exit 3)


@dataclass(frozen=True)
class Attribute:
    """An ONNX attribute of the node, which is also a TensorRT plugin field of the same name."""

    name: str
    onnx_type: str  # "INT", "INTS", "FLOAT", "STRING"
    doc: str
    count: str = "1"  # values: "1", or "rank" (one per spatial axis)
    required: bool = True
    torch_arg: str | None = None  # the torch op argument it comes from (default: the same name)

    @property
    def field_type(self) -> str:
        return FIELD_TYPES[self.onnx_type]

    def from_torch(self, value):
        """The attribute value for the torch op's argument value."""
        if self.onnx_type == "INTS":
            return [int(v) for v in value]
        if self.onnx_type == "INT":
            return int(value)
        if self.onnx_type == "FLOAT":
            return float(value)
        return str(value)


@dataclass(frozen=True)
class TypeConstraint:
    name: str
    allowed: tuple[str, ...]
    doc: str


@dataclass(frozen=True)
class OpSpec:
    key: str  # short name used in docs and the CLI
    torch_name: str  # torch custom op name inside the `attn_export` library
    onnx_op_type: str  # ONNX node op_type in DOMAIN; also the TensorRT plugin name
    doc: str
    inputs: tuple[Input, ...]
    attributes: tuple[Attribute, ...]  # the op's own; PLUGIN_ATTRIBUTES are added to every node
    type_constraints: tuple[TypeConstraint, ...]
    local_function: str  # "module:function", called as f(onnx_opset, overload) -> onnx.FunctionProto
    torch_op: str  # "module:function": the Python op; importing its module registers the torch custom op
    outputs: tuple[Input, ...] = (Input("out", "T", "like q"),)
    plugin: str | None = None  # folder under plugins/trt/ with the TensorRT plugin, None while there is none
    plugin_version: str = "1"
    node_args: str | None = None  # "module:function" mapping the torch op's arguments to (inputs, attributes)
    overload_of: str | None = None  # "module:function" choosing a node's function overload (default: see below)
    # "module:function": the node as standard ops around one ONNX Attention node (--lowering attention),
    # called as f(node, attn_export.attention_lowering.Call) -> LoweredCall
    attention_lowering: str | None = None
    # "module:function": f(node, shapes) -> "" or a static-shape tag ("64x64"): the node then gets the function
    # overload "BASE@TAG", whose body takes that shape as constants (shapes: value name -> dims, None if symbolic)
    static_overload: str | None = None

    @property
    def torch_qualname(self) -> str:
        return f"{DOMAIN}::{self.torch_name}"

    @property
    def plugin_name(self) -> str:
        return self.onnx_op_type

    @property
    def plugin_namespace(self) -> str:
        return DOMAIN

    @property
    def overloads(self) -> tuple[str, ...]:
        """Function overloads: "" (every optional input absent) and one per optional input present. ONNX
        Runtime inlines a function by renaming its inputs, so a missing optional input needs its own body."""
        return ("",) + tuple(i.name for i in self.inputs if i.optional)

    def hook(self, name: str) -> Callable | None:
        """A declared hook ("torch_op", "local_function", "node_args", "overload_of", "attention_lowering",
        "static_overload") as a callable; None if undeclared."""
        target = getattr(self, name)
        if target is None:
            return None
        module, _, attr = target.partition(":")
        return getattr(importlib.import_module(module), attr)


_T = TypeConstraint("T", FLOAT_TYPES, "float tensors")

NEIGHBORHOOD = OpSpec(
    key="neighborhood",
    torch_name="neighborhood_attention",
    onnx_op_type="NeighborhoodAttention",
    doc="Generalized neighborhood attention (NATTEN semantics, docs/ops/neighborhood_attention.md).",
    inputs=(Input("q", "T", "[B, *spatial, heads, head_dim]"), Input("k", "T", "like q"), Input("v", "T", "like q"),
            Input("rpb", "T", "[heads, 2k-1 per axis] additive bias", optional=True)),
    attributes=(Attribute("kernel_size", "INTS", "window size per spatial axis", "rank"),
                Attribute("stride", "INTS", "stride per axis (stride == kernel: blocked)", "rank"),
                Attribute("dilation", "INTS", "dilation per axis", "rank"),
                Attribute("is_causal", "INTS", "0/1 per axis", "rank"),
                Attribute("scale", "FLOAT", "logit scale (the exporter writes head_dim**-0.5 by default)")),
    type_constraints=(_T,),
    local_function="attn_export.onnx_functions:neighborhood_function",
    torch_op="attn_export.models.neighborhood:neighborhood_attention",
    attention_lowering="attn_export.attention_lowering:neighborhood_lowering",
    static_overload="attn_export.onnx_functions:neighborhood_static_shape",
    plugin="neighborhoodAttention",
)

BLOCK_SPARSE = OpSpec(
    key="block-sparse",
    torch_name="block_sparse_attention",
    onnx_op_type="BlockSparseAttention",
    doc="Block-sparse attention over a padded-ELL block layout (docs/ops/block_sparse_attention.md).",
    inputs=(Input("q", "T", "[B, H, Sq, D]"), Input("k", "T", "[B, H, Skv, D]"), Input("v", "T", "[B, H, Skv, D]"),
            Input("kv_count", "I", "int32 [B|1, H|1, nQB]"),
            Input("kv_index", "I", "int32 [B|1, H|1, nQB, max_blocks], -1 padded"),
            Input("block_bias", "T", "[B|1, H|1, nQB, max_blocks, block_q, block_kv] additive logit bias per listed "
                  "slot, -inf masks a key (FlexAttention partial blocks, additive score_mods)", optional=True,
                  plugin=False)),
    attributes=(Attribute("block_q", "INT", "query block size"),
                Attribute("block_kv", "INT", "key/value block size"),
                Attribute("scale", "FLOAT", "logit scale (the exporter writes head_dim**-0.5 by default)")),
    type_constraints=(_T, TypeConstraint("I", ("tensor(int32)",), "block layout")),
    local_function="attn_export.onnx_functions:block_sparse_function",
    torch_op="attn_export.models.block_sparse:block_sparse_attention",
    attention_lowering="attn_export.attention_lowering:block_sparse_lowering",
    plugin="blockSparseAttention",
)

PARO = OpSpec(
    key="paro",
    torch_name="paro_attention",
    onnx_op_type="ParoAttention",
    doc="PARO attention: per-head token reordering, block-sparse, INT8/INT4 QK and PV (docs/ops/paro_attention.md).",
    inputs=(Input("q", "T", "[B, heads, N, D], N = prefix + F*H*W"), Input("k", "T", "like q"),
            Input("v", "T", "like q"),
            Input("perm_idx", "I", "int32 [heads, N]: original index of the token at each permuted position"),
            Input("kv_count", "I", "int32 [B|1, heads, nb], over the permuted sequence"),
            Input("kv_index", "I", "int32 [B|1, heads, nb, max_blocks], -1 padded")),
    attributes=(Attribute("block", "INT", "block size of the layout (query and key blocks)"),
                Attribute("qk_bits", "INT", "16 (no quantization), 8 or 4"),
                Attribute("pv_bits", "INT", "16 (no quantization), 8 or 4"),
                Attribute("q_group", "INT", "tokens per Q quantization scale"),
                Attribute("k_group", "INT", "tokens per K quantization scale"),
                Attribute("smooth_k", "INT", "0/1: subtract the mean of K before quantizing it"),
                Attribute("scale", "FLOAT", "logit scale (the exporter writes head_dim**-0.5 by default)")),
    type_constraints=(_T, TypeConstraint("I", ("tensor(int32)",), "permutation and block layout")),
    local_function="attn_export.onnx_functions:paro_function",
    torch_op="attn_export.models.paro:paro_attention",
    attention_lowering="attn_export.attention_lowering:paro_lowering",
    plugin="paroAttention",
)

# PARO's per-tile P scale is max(tile max, this) / qmax (docs/ops/paro_attention.md, Semantics): the floor keeps
# the native kernels' online rescale (previous scale / scale) <= 2^30, finite in fp32. The reference op, the ONNX
# function and the kernels (plugins/kernels/paro_rules.h, compared by tests/test_native_abi.py) share it.
PARO_P_TILE_MAX_FLOOR = 2.0**-30

OPS: dict[str, OpSpec] = {spec.key: spec for spec in (NEIGHBORHOOD, BLOCK_SPARSE, PARO)}


def by_onnx_op_type(op_type: str) -> OpSpec | None:
    return next((spec for spec in OPS.values() if spec.onnx_op_type == op_type), None)


def by_torch_name(name: str) -> OpSpec | None:
    return next((spec for spec in OPS.values() if spec.torch_name == name), None)


def register_torch_ops() -> None:
    """Import every op's module, which registers its torch custom op (a .pt2 or a translation needs them)."""
    for spec in OPS.values():
        spec.hook("torch_op")
