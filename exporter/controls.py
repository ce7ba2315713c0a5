"""Null controls: deliberately broken variants of a checked ONNX file.

A quality gate that passes a broken model proves nothing. Each quantized or PARO check also runs a variant of
the file that is wrong on purpose, through the same metrics on the same inputs (quality.check_quantized):
- Q/DQ files: the input of the first quantized activation is zeroed (INT4, weight-only: the input of the first
  layer with a quantized weight). Everything after it sees no signal from the model's input, which is what a
  collapsed calibration (an input clipped to its background value) looks like from outside.
- PARO (and any file with attention nodes): every attention call's output is zeroed, so the gate must see the
  attention it approximates.
If the variant passes too, the check cannot tell the file from a broken one.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

from attn_export.errors import AttnExportError
from attn_export.quality import Control
from attn_export.registry import DOMAIN

ZERO = "attn_export_null_control_zero"
ATTENTION_OPS = {"Attention"}  # ONNX's standard attention (opset 23), as the attention lowering writes it


def first_quantized_input_zeroed(onnx_path: str | Path) -> Control:
    """The Q/DQ file with the input of its first activation QuantizeLinear (or, without one, of the first layer
    reading a dequantized weight) multiplied by zero."""
    model = onnx.load(str(onnx_path))
    graph = model.graph
    produced_by_dq = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    initializers = {i.name for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in initializers:
            return Control(f"input of the first quantized activation '{node.input[0]}' zeroed",
                           _zero_input(model, node, 0))
    for node in graph.node:
        if node.op_type != "DequantizeLinear" and any(i in produced_by_dq for i in node.input[1:]):
            return Control(f"input of the first quantized layer '{node.name or node.op_type}' zeroed",
                           _zero_input(model, node, 0))
    raise AttnExportError(f"{onnx_path} has no quantized layer to build a null control from")


def attention_zeroed(onnx_path: str | Path) -> Control:
    """The file with the output of every attention call (attn_export nodes, ONNX Attention) multiplied by zero."""
    model = onnx.load(str(onnx_path))
    nodes = [n for n in model.graph.node if n.domain == DOMAIN or (n.domain in ("", "ai.onnx")
                                                                     and n.op_type in ATTENTION_OPS)]
    if not nodes:
        raise AttnExportError(f"{onnx_path} has no attention node to build a null control from")
    _add_zero(model)
    for node in nodes:
        output = node.output[0]
        node.output[0] = f"{output}_before_null_control"
        index = list(model.graph.node).index(node)
        model.graph.node.insert(index + 1, helper.make_node("Mul", [node.output[0], ZERO], [output],
                                                            name=_unique_name(model, f"{output}_null_control")))
    return Control(f"the output of all {len(nodes)} attention calls zeroed", model.SerializeToString())


def _zero_input(model: onnx.ModelProto, node: onnx.NodeProto, slot: int) -> bytes:
    _add_zero(model)
    source = node.input[slot]
    taken = {o for n in model.graph.node for o in n.output}
    zeroed, suffix = f"{source}_null_control", 1
    while zeroed in taken:
        zeroed, suffix = f"{source}_null_control_{suffix}", suffix + 1
    index = list(model.graph.node).index(node)
    model.graph.node.insert(index, helper.make_node("Mul", [source, ZERO], [zeroed],
                                                    name=_unique_name(model, f"{zeroed}_mul")))
    node.input[slot] = zeroed
    return model.SerializeToString()


def _unique_name(model: onnx.ModelProto, base: str) -> str:
    """A node name no node of ``model`` has (a file may already hold a control's nodes)."""
    taken = {n.name for n in model.graph.node}
    name, suffix = base, 1
    while name in taken:
        name, suffix = f"{base}_{suffix}", suffix + 1
    return name


def _add_zero(model: onnx.ModelProto) -> None:
    if not any(i.name == ZERO for i in model.graph.initializer):
        model.graph.initializer.append(helper.make_tensor(ZERO, TensorProto.FLOAT, [], [0.0]))
