"""torch.export -> ONNX with each attention call as ONE custom node plus its portable local function."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import warnings
from pathlib import Path
from typing import Sequence

import onnx
import torch

from attn_export.errors import AttnExportError, wrap_failure
from attn_export.onnx_functions import (
    RPB_OVERLOAD,
    block_sparse_function,
    block_sparse_schema,
    neighborhood_function,
    neighborhood_schema,
)
from attn_export.registry import BLOCK_SPARSE, DOMAIN, DOMAIN_VERSION, NEIGHBORHOOD

DEFAULT_OPSET = 18  # the lowest opset the torch dynamo exporter and TensorRT 10 both handle well
SUPPORTED_OPSETS = tuple(range(18, 24))
MIN_IR_VERSION = 10  # function overloads (the rpb form of NeighborhoodAttention)


def _neighborhood_translation():
    import onnxscript

    node = onnxscript.values.Op(
        onnxscript.values.Opset(DOMAIN, DOMAIN_VERSION), NEIGHBORHOOD.onnx_op_type, neighborhood_schema()
    )

    def translate(q, k, v, kernel_size, stride, dilation, is_causal, scale, rpb=None):
        return node(
            q, k, v, rpb,
            kernel_size=list(kernel_size), stride=list(stride), dilation=list(dilation),
            is_causal=[int(c) for c in is_causal], scale=float(scale),
            plugin_version=NEIGHBORHOOD.plugin_version, plugin_namespace=NEIGHBORHOOD.plugin_namespace,
        )

    return translate


def _block_sparse_translation():
    import onnxscript

    node = onnxscript.values.Op(
        onnxscript.values.Opset(DOMAIN, DOMAIN_VERSION), BLOCK_SPARSE.onnx_op_type, block_sparse_schema()
    )

    def translate(q, k, v, kv_count, kv_index, block_q, block_kv, scale):
        return node(
            q, k, v, kv_count, kv_index, block_q=int(block_q), block_kv=int(block_kv), scale=float(scale),
            plugin_version=BLOCK_SPARSE.plugin_version, plugin_namespace=BLOCK_SPARSE.plugin_namespace,
        )

    return translate


def custom_translation_table() -> dict:
    import attn_export.models  # noqa: F401  (registers the torch custom ops)

    ops = torch.ops.attn_export
    return {ops.neighborhood_attention.default: _neighborhood_translation(),
            ops.block_sparse_attention.default: _block_sparse_translation()}


def attach_local_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every custom attention node its model-local decomposition (after export: the exporter
    would inline a function it was handed) and mark the rpb form with its function overload."""
    onnx_opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), DEFAULT_OPSET)
    needed = set()
    block_sparse = False
    for node in model.graph.node:
        block_sparse |= node.domain == DOMAIN and node.op_type == BLOCK_SPARSE.onnx_op_type
        if node.domain == DOMAIN and node.op_type == NEIGHBORHOOD.onnx_op_type:
            with_rpb = len(node.input) == 4 and node.input[3] != ""
            del node.input[4 if with_rpb else 3:]  # drop a trailing empty optional input
            node.overload = RPB_OVERLOAD if with_rpb else ""
            needed.add(with_rpb)
    have = {(f.domain, f.name, f.overload) for f in model.functions}
    for with_rpb in sorted(needed):
        key = (DOMAIN, NEIGHBORHOOD.onnx_op_type, RPB_OVERLOAD if with_rpb else "")
        if key not in have:
            model.functions.append(neighborhood_function(onnx_opset, with_rpb))
    if block_sparse and (DOMAIN, BLOCK_SPARSE.onnx_op_type, "") not in have:
        model.functions.append(block_sparse_function(onnx_opset))
    if (needed or block_sparse) and not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
    model.ir_version = max(model.ir_version, MIN_IR_VERSION)
    return model


def check_opset(opset: int | None) -> int:
    """The opset to export with: DEFAULT_OPSET, or a supported one given by the user."""
    opset = DEFAULT_OPSET if opset is None else int(opset)
    if opset not in SUPPORTED_OPSETS:
        raise AttnExportError(f"opset {opset} is not supported; use one of {SUPPORTED_OPSETS[0]} to {SUPPORTED_OPSETS[-1]}")
    return opset


def export(
    model: torch.nn.Module | torch.export.ExportedProgram,
    example_inputs: Sequence[torch.Tensor],
    path: str | os.PathLike,
    dynamic_shapes: dict | None = None,
    opset: int | None = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
) -> onnx.ModelProto:
    """Export ``model`` to ONNX at ``path`` and return the model proto.

    Every neighborhood-attention call becomes one ``attn_export::NeighborhoodAttention`` node with a
    local function that plain ONNX Runtime runs. ``dynamic_shapes`` follows torch.export (keyed by
    input name); the file is checked with ``onnx.checker`` (full_check) and written atomically.
    """
    opset = check_opset(opset)
    example_inputs = tuple(example_inputs)
    if isinstance(dynamic_shapes, dict) and input_names:
        # Keyed by input name, which need not be the forward() argument name torch.export wants.
        unknown = set(dynamic_shapes) - set(input_names)
        if unknown:
            raise AttnExportError(f"dynamic_shapes names {sorted(unknown)} are not inputs; inputs: {list(input_names)}")
        dynamic_shapes = tuple(dynamic_shapes.get(name) for name in input_names)
    if dynamic_shapes:
        example_inputs = _avoid_size_one_specialization(example_inputs, dynamic_shapes)
    program = _torch_onnx_export(model, example_inputs, dynamic_shapes, opset, input_names, output_names)
    proto = attach_local_functions(program.model_proto)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise AttnExportError(f"the exported ONNX model fails onnx.checker: {str(exc).splitlines()[0]}") from exc
    save_atomically(proto, Path(path))
    return proto


def _torch_onnx_export(model, example_inputs, dynamic_shapes, opset, input_names, output_names):
    # torch.onnx reports progress and exporter internals on stdout and the logging module; keep our
    # CLI output readable and surface a failure as one line (the chain keeps the details).
    sink = io.StringIO()
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    try:
        # Inference only: a trace with gradients on fails in ops without a CPU backward (FlexAttention).
        with contextlib.redirect_stdout(sink), warnings.catch_warnings(), torch.no_grad():
            # torch's own deprecation and dim-renaming notes, not the user's business
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*LeafSpec.*")
            warnings.filterwarnings("ignore", message=".*will not be used, since it shares the same shape constraints")
            return torch.onnx.export(
                model, example_inputs, dynamo=True, opset_version=opset, dynamic_shapes=dynamic_shapes,
                input_names=list(input_names) if input_names else None,
                output_names=list(output_names) if output_names else None,
                custom_translation_table=custom_translation_table(), optimize=True, verbose=False,
                external_data=False,
            )
    except Exception as exc:  # noqa: BLE001 - re-raised as the one expected error type
        blocker = unexportable_attention(model, example_inputs, dynamic_shapes)
        if blocker:
            raise AttnExportError(blocker) from exc
        hint = "rerun with --debug for details"
        if dynamic_shapes:
            hint += "; if a dynamic dimension is the cause, export with --static-batch / --static-spatial"
        raise wrap_failure(exc, "export to ONNX", hint) from exc


# Attention calls that torch.export traces but no ONNX exporter translates, and what to use instead.
_UNEXPORTABLE_ATTENTION = {
    "flex_attention": ("FlexAttention (torch.nn.attention.flex_attention)",
                       "write the attention with attn_export.models.block_sparse_attention (block layouts: "
                       "attn_export.models.block_layout.from_flex_block_mask) or neighborhood_attention"),
}
_NATTEN_HINT = ("call attn_export.models.neighborhood_attention (same arguments and layout) or use NATTEN's "
                "NeighborhoodAttention modules, which attn-export converts")


def unexportable_attention(model, example_inputs, dynamic_shapes) -> str | None:
    """A one-line explanation when ``model`` calls an attention that has no ONNX translation (FlexAttention,
    NATTEN's functional API, which runs FlexAttention on the CPU), naming the call site; else None."""
    try:
        if isinstance(model, torch.export.ExportedProgram):
            program = model
        else:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                program = torch.export.export(model, tuple(example_inputs), dynamic_shapes=dynamic_shapes, strict=False)
    except Exception:  # noqa: BLE001 - the export failed for another reason: the caller reports it
        return None
    for node in program.graph.nodes:
        kind = _UNEXPORTABLE_ATTENTION.get(getattr(node.target, "__name__", str(node.target)))
        if node.op != "call_function" or kind is None:
            continue
        what, instead = kind
        stack = node.meta.get("nn_module_stack") or {}
        path, cls = list(stack.values())[-1] if stack else ("", type(model).__name__)
        where, code = _user_frame(node.meta.get("stack_trace") or "")
        if "natten" in code or "/natten/" in (node.meta.get("stack_trace") or ""):
            what, instead = "NATTEN's functional API (it runs FlexAttention on the CPU)", _NATTEN_HINT
        site = f" at {where} (`{code}`)" if where else ""
        return (f"layer '{path or '<model>'}' ({str(cls).rsplit('.', 1)[-1]}) calls {what}{site}, which has no ONNX "
                f"export: {instead}; a converter for these calls is planned")
    return None


def _user_frame(stack_trace: str) -> tuple[str, str]:
    """The innermost frame of the user's code in a traced node's stack trace: ("file.py:LINE", code)."""
    frames = re.findall(r'File "([^"]+)", line (\d+), in [^\n]*\n\s*([^\n]*)', stack_trace)
    user = [(f, n, c) for f, n, c in frames
            if not f.startswith("<") and not re.search(r"[/\\](torch|natten)[/\\]", f)]
    if not user:
        return "", ""
    file, line, code = user[-1]
    return f"{Path(file).name}:{line}", code.strip()


def _avoid_size_one_specialization(example_inputs, dynamic_shapes):
    """torch.export specializes dynamic dims whose example size is 1; trace with size 2 instead."""
    grown = []
    for tensor, spec in zip(example_inputs, dynamic_shapes):
        if isinstance(tensor, torch.Tensor) and isinstance(spec, dict):
            for dim in spec:
                if tensor.shape[dim] == 1:
                    tensor = torch.cat([tensor, tensor], dim=dim)
        grown.append(tensor)
    return tuple(grown) + tuple(example_inputs[len(grown):])


def save_atomically(proto: onnx.ModelProto, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        onnx.save_model(proto, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
