"""How each attention call reaches the file (``--lowering``):

- ``plugin`` (default): one custom node in domain attn_export plus its model-local function; TensorRT runs our
  plugin, any ONNX runtime the function.
- ``attention``: standard ops around ONE ONNX ``Attention`` node (opset 23) with an exact mask per call, so stock
  TensorRT (>= 10.14) and ONNX Runtime's CPU and CUDA providers run it on their own fused attention. The file
  holds no attn_export node and no local function.

The pass runs on the exported file (custom nodes and all); each op's builder hangs off its registry entry
(``OpSpec.attention_lowering``). The masks are dense (N x N per call, computed in the graph from Shape(q)), so a
size guard refuses a call, or a model, whose masks at the export size exceed the budgets in attn_export.defaults.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import onnx
import sympy
import torch

from attn_export import defaults
from attn_export.attention_lowering import Call
from attn_export.errors import AttnExportError
from attn_export.registry import DOMAIN, OPS, by_onnx_op_type

LOWERINGS = defaults.LOWERINGS
ATTENTION_MIN_OPSET = defaults.ATTENTION_MIN_OPSET


def check_lowering(name: str) -> str:
    if name not in LOWERINGS:
        raise AttnExportError(f"--lowering {name} is not one of {', '.join(LOWERINGS)}")
    return name


def attention_opset(opset: int | None) -> int:
    """The opset of an attention-lowered export: ONNX's Attention exists from opset 23 on."""
    if opset is not None and opset < ATTENTION_MIN_OPSET:
        raise AttnExportError(f"--lowering attention needs --opset {ATTENTION_MIN_OPSET} or newer (ONNX's Attention "
                              f"operator is opset {ATTENTION_MIN_OPSET}), got --opset {opset}: raise it or drop it")
    return max(opset or ATTENTION_MIN_OPSET, ATTENTION_MIN_OPSET)


def lower_to_attention(model: onnx.ModelProto, dims: Mapping[str, int] | None = None,
                       call_budget: int | None = None, model_budget: int | None = None) -> onnx.ModelProto:
    """Replace every attn_export node of ``model`` (in place) by its standard-op lowering around one Attention
    node; drop the local functions and the attn_export opset import. ``dims`` gives the export-size value of
    each symbolic dim (dim_param, or a symbol inside one such as "4*s16"), for the size guard; the budgets default
    to defaults.ATTENTION_MASK_BUDGET_CALL / _MODEL (mask elements)."""
    call_budget = defaults.ATTENTION_MASK_BUDGET_CALL if call_budget is None else call_budget
    model_budget = defaults.ATTENTION_MASK_BUDGET_MODEL if model_budget is None else model_budget
    shapes = _value_shapes(model, dims or {})
    static = _stated_dims(model)
    graph = model.graph
    nodes, total, counts = [], 0, {}
    for node in graph.node:
        spec = by_onnx_op_type(node.op_type) if node.domain == DOMAIN else None
        if spec is None:
            nodes.append(node)
            continue
        build = spec.hook("attention_lowering")
        counts[spec.onnx_op_type] = counts.get(spec.onnx_op_type, 0) + 1
        name = node.name or f"{spec.onnx_op_type}_{counts[spec.onnx_op_type]}"
        formal = {i.name: shapes.get(actual) for i, actual in zip(spec.inputs, node.input) if actual}
        stated = {i.name: static.get(actual) for i, actual in zip(spec.inputs, node.input) if actual}
        lowered = build(node, Call(name, f"{_safe(name)}/lowered/", formal, stated))
        if lowered.mask_shape is None:  # no size at the export size (a file without shapes): nothing to guard
            nodes.extend(lowered.nodes)
            continue
        size = _elements(lowered.mask_shape)
        total += size
        _guard(spec.onnx_op_type, name, lowered.mask_shape, lowered.mask_kind, size, call_budget)
        if total > model_budget:
            raise AttnExportError(
                f"attention lowering: the masks of this model's attention calls reach {_mi(total)} elements at the "
                f"export size (at {spec.onnx_op_type} node '{name}'), over the budget of {_mi(model_budget)} per "
                "model: export with --lowering plugin, or smaller inputs")
        nodes.extend(lowered.nodes)
    del graph.node[:]
    graph.node.extend(nodes)
    ours = {spec.onnx_op_type for spec in OPS.values()}
    kept = [f for f in model.functions if not (f.domain == DOMAIN and f.name in ours)]
    del model.functions[:]
    model.functions.extend(kept)
    imports = [o for o in model.opset_import if o.domain != DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(imports)
    return model


def _guard(op: str, name: str, shape: tuple, kind: str, size: int, budget: int) -> None:
    if size > budget:
        dims = "x".join(str(d) for d in shape)
        raise AttnExportError(
            f"attention lowering: {op} node '{name}' needs a {dims} {kind} mask ({_mi(size)} elements) at the export "
            f"size, over the budget of {_mi(budget)} per call: export it with --lowering plugin, or with smaller "
            "inputs")


def _mi(elements: int) -> str:
    return f"{elements / 2**20:.1f} Mi"


def _elements(shape) -> int:
    out = 1
    for d in shape:
        out *= int(d)
    return out


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_./-]", "_", name)


def _value_shapes(model: onnx.ModelProto, dims: Mapping[str, int]) -> dict[str, list | None]:
    """Every value's shape at the export size: ints, with a symbolic dim evaluated from ``dims`` (None for a dim
    that cannot be evaluated: the builders size their masks from the dims they need)."""
    graph = model.graph
    shapes = {}
    for value in list(graph.input) + list(graph.value_info) + list(graph.output):
        tensor = value.type.tensor_type
        if tensor.HasField("shape"):
            shapes[value.name] = [d.dim_value if d.HasField("dim_value") else _try_dim(d.dim_param, dims)
                                  for d in tensor.shape.dim]
    for init in graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def _try_dim(expression: str, dims: Mapping[str, int]) -> int | None:
    try:
        return evaluate_dim(expression, dims) if expression else None
    except (KeyError, ValueError, TypeError, SyntaxError):
        return None


def _stated_dims(model: onnx.ModelProto) -> dict[str, list]:
    """Every value's dims as the file states them: ints, None where symbolic (those vary at run time)."""
    stated = {}
    for value in list(model.graph.input) + list(model.graph.value_info):
        if value.type.tensor_type.HasField("shape"):
            stated[value.name] = [d.dim_value if d.HasField("dim_value") else None
                                  for d in value.type.tensor_type.shape.dim]
    return stated


def evaluate_dim(expression: str, dims: Mapping[str, int]) -> int:
    """A dim_param ("batch", "4*s16", "s0 + 1", "floor(s1/2)") at the export size; KeyError naming an unknown symbol."""
    if expression in dims:
        return int(dims[expression])
    expr = sympy.sympify(expression, locals={name: sympy.Symbol(name) for name in re.findall(r"[A-Za-z_]\w*",
                                                                                             expression)
                                             if name not in ("floor", "ceiling", "Max", "Min", "Mod")})
    unknown = [str(s) for s in expr.free_symbols if str(s) not in dims]
    if unknown:
        raise KeyError(unknown[0])
    return int(expr.subs({sympy.Symbol(k): v for k, v in dims.items()}))


def symbol_values(onnx_program, input_names, example_inputs) -> dict[str, int]:
    """The export-size value of every symbol in the file's dims: torch's shape symbols (s0, s16, ...) from the
    exported program's shape environment, and the names the graph inputs' dims got (batch, height16, ...) solved
    from the example inputs (a dim "16*height16" of size 64 gives height16 = 4)."""
    values: dict[str, int] = {}
    program = getattr(onnx_program, "exported_program", None)
    if program is not None:
        for node in program.graph.nodes:
            val = node.meta.get("val")
            for dim in getattr(val, "shape", ()):
                if isinstance(dim, torch.SymInt):
                    env = dim.node.shape_env
                    table = getattr(env, "backed_var_to_val", None) or env.var_to_val
                    values.update({str(k): int(v) for k, v in table.items()})
                    break
            if values:
                break
    proto = onnx_program.model_proto
    inputs = {i.name: i for i in proto.graph.input}
    for name, tensor in zip(input_names or [], example_inputs):
        if name not in inputs or not hasattr(tensor, "shape"):
            continue
        for dim, size in zip(inputs[name].type.tensor_type.shape.dim, tensor.shape):
            if dim.dim_param:
                expr = sympy.sympify(dim.dim_param)
                free = list(expr.free_symbols)
                if len(free) == 1 and str(free[0]) not in values:
                    solved = sympy.solve(sympy.Eq(expr, int(size)), free[0])
                    if solved:
                        values[str(free[0])] = int(solved[0])
    return values
