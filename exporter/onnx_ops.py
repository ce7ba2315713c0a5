"""The custom ONNX nodes, built from the op registry: node schemas, the torch -> ONNX translation table and
the model-local functions attached after export. Nothing here names an op: every function loops over
``attn_export.registry.OPS``."""

from __future__ import annotations

import inspect
from functools import cache

import onnx
import onnxscript
import torch
from onnx import AttributeProto
from onnx.defs import OpSchema

from attn_export import defaults
from attn_export.onnx_utils import opset_of
from attn_export.registry import (
    DOMAIN,
    DOMAIN_VERSION,
    OPS,
    PLUGIN_ATTRIBUTES,
    OpSpec,
    by_onnx_op_type,
    register_torch_ops,
)

MIN_IR_VERSION = 10  # function overloads (an optional input present or absent)


@cache
def schema(spec: OpSpec) -> OpSchema:
    """The node contract of ``spec``: inputs, outputs, attributes (plus the plugin attributes), types."""

    def formal(item) -> OpSchema.FormalParameter:
        option = OpSchema.FormalParameterOption.Optional if item.optional else OpSchema.FormalParameterOption.Single
        return OpSchema.FormalParameter(item.name, item.type_var, item.doc, param_option=option)

    attributes = [OpSchema.Attribute(a.name, getattr(AttributeProto, a.onnx_type), a.doc, required=a.required)
                  for a in spec.attributes]
    attributes += [OpSchema.Attribute(name, AttributeProto.STRING, "TensorRT plugin lookup", required=False)
                   for name in PLUGIN_ATTRIBUTES]
    return OpSchema(spec.onnx_op_type, DOMAIN, DOMAIN_VERSION, spec.doc,
                    inputs=[formal(i) for i in spec.inputs], outputs=[formal(o) for o in spec.outputs],
                    type_constraints=[(c.name, list(c.allowed), c.doc) for c in spec.type_constraints],
                    attributes=attributes)


def node_args(spec: OpSpec, values: dict) -> tuple[list, dict]:
    """ONNX node inputs and attributes from the torch op's arguments: inputs and attributes by name (an
    attribute's ``torch_arg`` where it differs), values converted to the attribute's ONNX type."""
    inputs = [values.get(i.name) for i in spec.inputs]
    attributes = {a.name: a.from_torch(values[a.torch_arg or a.name]) for a in spec.attributes}
    return inputs, attributes


def _torch_signature(spec: OpSpec) -> inspect.Signature:
    spec.hook("torch_op")  # importing the op's module registers its torch custom op
    arguments = getattr(getattr(torch.ops, DOMAIN), spec.torch_name).default._schema.arguments
    return inspect.Signature([
        inspect.Parameter(a.name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                          default=a.default_value if a.has_default_value() else inspect.Parameter.empty)
        for a in arguments])


def translation(spec: OpSpec):
    """The onnxscript translation of the torch op: one custom node with the plugin attributes. Its
    signature is the torch op's, which the exporter binds the traced call against."""
    node = onnxscript.values.Op(onnxscript.values.Opset(DOMAIN, DOMAIN_VERSION), spec.onnx_op_type, schema(spec))
    custom = spec.hook("node_args")
    signature = _torch_signature(spec)

    def translate(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        inputs, attributes = custom(**bound.arguments) if custom else node_args(spec, bound.arguments)
        return node(*inputs, **attributes, plugin_version=spec.plugin_version, plugin_namespace=spec.plugin_namespace)

    translate.__signature__ = signature
    translate.__name__ = translate.__qualname__ = spec.torch_name
    return translate


def custom_translation_table() -> dict:
    register_torch_ops()
    library = getattr(torch.ops, DOMAIN)
    return {getattr(library, spec.torch_name).default: translation(spec) for spec in OPS.values()}


def choose_overload(spec: OpSpec, node: onnx.NodeProto) -> str:
    """The function overload of a node (after dropping trailing empty optional inputs): "" when every
    optional input is absent, else the name of the optional input it has."""
    custom = spec.hook("overload_of")
    if custom:
        return custom(node)
    count = len(node.input)
    while count and node.input[count - 1] == "":
        count -= 1
    del node.input[count:]
    present = [i.name for i, name in zip(spec.inputs, node.input) if i.optional and name]
    return "+".join(present)


def attach_local_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every custom attention node its model-local decomposition (after export: the exporter would
    inline a function it was handed) and mark nodes with an optional input, or with a static shape their op
    specialises for (OpSpec.static_overload), with their overload."""
    onnx_opset = opset_of(model, defaults.OPSET)
    needed: dict[tuple[int, str], None] = {}  # (registry position, overload), in a stable order
    specs = list(OPS.values())
    shapes = None
    for node in model.graph.node:
        spec = by_onnx_op_type(node.op_type) if node.domain == DOMAIN else None
        if spec is None:
            continue
        overload = choose_overload(spec, node)
        static = spec.hook("static_overload")
        if static:
            shapes = _value_dims(model) if shapes is None else shapes
            tag = static(node, shapes)
            overload = f"{overload}@{tag}" if tag else overload
        if len(spec.overloads) > 1 or overload:  # an op without optional inputs has one function: leave it unset
            node.overload = overload
        needed[(specs.index(spec), overload)] = None
    have = {(f.domain, f.name, f.overload) for f in model.functions}
    for spec_at, overload in sorted(needed, key=lambda key: (key[0], _overload_order(specs[key[0]], key[1]))):
        spec = specs[spec_at]
        if (DOMAIN, spec.onnx_op_type, overload) not in have:
            model.functions.append(spec.hook("local_function")(onnx_opset, overload))
    if needed and not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
    model.ir_version = max(model.ir_version, MIN_IR_VERSION)
    return model


def _overload_order(spec: OpSpec, overload: str) -> tuple:
    base, _, tag = overload.partition("@")
    return spec.overloads.index(base), tag


def _value_dims(model: onnx.ModelProto) -> dict[str, list]:
    """Every typed value's dims: ints where the file states them, None where symbolic."""
    graph = model.graph
    dims = {}
    for value in list(graph.input) + list(graph.value_info) + list(graph.output):
        if value.type.tensor_type.HasField("shape"):
            dims[value.name] = [d.dim_value if d.HasField("dim_value") else None
                                for d in value.type.tensor_type.shape.dim]
    return dims
