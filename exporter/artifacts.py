"""What an export writes and how to tell what a file is: the artifact names in OUTDIR, and the inspections that pick a
check's criterion (Q/DQ, PARO, precision) and its inputs (dynamic axes) from the file itself."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import onnx

from attn_export import defaults
from attn_export.errors import AttnExportError
from attn_export.onnx_utils import graph_inputs, load_graph, opset_of
from attn_export.registry import DOMAIN, PARO

ONNX_NAME = "model.onnx"
REPORT_NAME = "report.json"
ENGINE_NAME = "model.engine"
ENGINE_META_NAME = "engine.json"
CALIB_CACHE_NAME = "calib_cache.json"
PARO_PLAN_NAME = "paro_plan.json"
PARO_ARRAYS_NAME = "paro_plan.npz"
REFERENCE_NAME = "reference.npz"  # attn_export.reference: check inputs and reference outputs
BUCKET_INPUT = "paro_bucket"  # a PARO file's timestep-bucket input (attn_export.paro_export; it has no batch axis)
BUCKETS_METADATA = "attn_export.paro_buckets"  # model metadata: a PARO file's timestep buckets
# model metadata of a PARO file lowered to standard ops (--lowering attention): its criterion, which no node names
PARO_MODE_METADATA = "attn_export.paro_mode"
BIT_NAMES = {bits: name for name, bits in defaults.PARO_BITS.items()}


def quantized_name(mode: str) -> str:
    return f"model.{mode}.onnx"


OWNED = (ONNX_NAME, REPORT_NAME, ENGINE_NAME, ENGINE_META_NAME, quantized_name("int8"), quantized_name("int4"),
         CALIB_CACHE_NAME, PARO_PLAN_NAME, PARO_ARRAYS_NAME, REFERENCE_NAME)  # what an export replaces in OUTDIR


def paro_in(onnx_path: Path) -> dict | None:
    """For a PARO file: its criterion name ("paro-int8", by the coarsest bits of its ParoAttention nodes, or as
    recorded in a file lowered to standard ops) and its timestep buckets (model metadata, 1 without); None for
    other files."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    metadata = {p.key: p.value for p in model.metadata_props}
    nodes = [n for n in model.graph.node if n.domain == DOMAIN and n.op_type == PARO.onnx_op_type]
    buckets = int(metadata.get(BUCKETS_METADATA, 1))
    if not nodes:
        lowered = metadata.get(PARO_MODE_METADATA)
        return {"mode": lowered, "buckets": buckets} if lowered else None
    bits = min(onnx.helper.get_attribute_value(a) for n in nodes for a in n.attribute if a.name in ("qk_bits",
                                                                                                 "pv_bits"))
    return {"mode": f"paro-{BIT_NAMES[bits]}", "buckets": buckets}


def quantized_mode(onnx_path: Path) -> str | None:
    """"int4" / "int8" for a file with DequantizeLinear nodes (by its narrowest quantized initializer)."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    if not any(n.op_type == "DequantizeLinear" for n in model.graph.node):
        return None
    int4 = {onnx.TensorProto.INT4, onnx.TensorProto.UINT4}
    return "int4" if any(i.data_type in int4 for i in model.graph.initializer) else "int8"


def dynamic_axes(onnx_path: Path) -> dict[str, set[int]]:
    """The axes of each graph input that the ONNX file leaves symbolic."""
    inputs = {i.name: i.shape for i in graph_inputs(load_graph(onnx_path))}
    return {name: {axis for axis, d in enumerate(dims) if not isinstance(d, int)} for name, dims in inputs.items()}


def export_summary(proto) -> dict:
    custom = Counter(n.op_type for n in proto.graph.node if n.domain == DOMAIN)
    return {
        "opset": opset_of(proto),
        "custom_nodes": dict(custom),
        "local_functions": sorted(f"{f.domain}::{f.name}" + (f"[{f.overload}]" if f.overload else "")
                                  for f in proto.functions),
        "inputs": {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
                   for i in proto.graph.input},
    }


def validate_onnx(path: Path) -> None:
    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise AttnExportError(f"{path} is not a valid ONNX model ({detail})") from exc
