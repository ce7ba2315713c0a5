"""torch.export -> ONNX with each attention call as ONE custom node plus its portable local function."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import onnx
import onnx_ir
import torch
from onnx_ir.passes.common import DeduplicateHashedInitializersPass
from torch.onnx._internal.exporter import _errors

from attn_export import defaults
from attn_export.errors import DEBUG_HINT, AttnExportError, innermost, library_step, wrap_failure
from attn_export.lowering import attention_opset, check_lowering, lower_to_attention, symbol_values
from attn_export.onnx_ops import attach_local_functions, custom_translation_table
from attn_export.onnx_utils import save_atomically

DEFAULT_OPSET = defaults.OPSET
SUPPORTED_OPSETS = defaults.SUPPORTED_OPSETS

__all__ = ["DEFAULT_OPSET", "SUPPORTED_OPSETS", "attach_local_functions", "check_opset", "export", "save_atomically"]


def check_opset(opset: int | None) -> int:
    """The opset to export with: DEFAULT_OPSET, or a supported one given by the user."""
    opset = DEFAULT_OPSET if opset is None else int(opset)
    if opset not in SUPPORTED_OPSETS:
        raise AttnExportError(f"opset {opset} is not supported; use one of {SUPPORTED_OPSETS[0]} to "
                              f"{SUPPORTED_OPSETS[-1]}")
    return opset


def export(
    model: torch.nn.Module | torch.export.ExportedProgram,
    example_inputs: Sequence[torch.Tensor],
    path: str | os.PathLike,
    dynamic_shapes: dict | None = None,
    opset: int | None = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    lowering: str = defaults.LOWERING,
) -> onnx.ModelProto:
    """Export ``model`` to ONNX at ``path`` and return the model proto.

    Every neighborhood-attention call becomes one ``attn_export::NeighborhoodAttention`` node with a
    local function that plain ONNX Runtime runs. ``dynamic_shapes`` follows torch.export (keyed by
    input name); the file is checked with ``onnx.checker`` (full_check) and written atomically.
    ``lowering="attention"`` writes each call as standard ops around ONNX's Attention instead
    (attn_export.lowering; opset 23 or newer).
    """
    check_lowering(lowering)
    opset = check_opset(attention_opset(opset) if lowering == "attention" else opset)
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
    with library_step("completing the exported ONNX model (shared initializers, local functions)"):
        proto = _shared_initializers(program.model_proto)
        if lowering == "attention":  # our size guard's errors pass through library_step unchanged
            proto = lower_to_attention(proto, symbol_values(program, input_names, example_inputs))
        else:
            proto = attach_local_functions(proto)
    # torch.onnx can write a graph that ONNX's own shape inference rejects (a no-op squeeze(1) exported as
    # Squeeze(axes=1)): that is the exporter's defect, named as such, not a traceback.
    with library_step("onnx.checker (full check with shape inference) on the file torch.onnx wrote",
                      "the torch exporter wrote an invalid graph: rewrite the named op in the model (e.g. drop a "
                      "no-op squeeze/unsqueeze), or export another opset; --debug shows the traceback"):
        onnx.checker.check_model(proto, full_check=True)
    save_atomically(proto, Path(path))
    return proto


def _shared_initializers(proto: onnx.ModelProto) -> onnx.ModelProto:
    """One initializer per distinct tensor. torch.export lifts a constant per call site, so layers sharing one
    block layout or mask bias would each carry a copy (the exporter's own pass merges only tensors of up to
    1024 elements). On the serialized model: the pass cannot hash the exporter's non-contiguous arrays."""
    model = onnx_ir.from_proto(proto)
    DeduplicateHashedInitializersPass()(model)
    return onnx_ir.to_proto(model)


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
    except Exception as exc:  # re-raised as the one expected error type
        blocker = unexportable_attention(model, example_inputs, dynamic_shapes)
        if blocker:
            raise AttnExportError(blocker) from exc
        cause = innermost(exc)
        summary = _SUMMARY.search(str(exc)) if cause is exc else None  # torch.onnx's own error, no chained cause
        detail = summary["message"] if summary else str(cause)
        hint = DEBUG_HINT
        if dynamic_shapes and _DYNAMIC_CAUSE.search(detail):
            hint += "; the failure concerns a dynamic dimension: export with --static-batch / --static-spatial"
        if summary:  # its message starts with advice; the failure itself is in its exception summary
            raise AttnExportError(f"{_exporter_step(exc)} failed ({summary['type'].rsplit('.', 1)[-1]}): "
                                  f"{detail}; {hint}") from exc
        raise wrap_failure(exc, _exporter_step(exc), hint) from exc


# torch.onnx's errors end with "## Exception summary" then "<class 'module.Type'>: message".
_SUMMARY = re.compile(r"## Exception summary\s*<class '(?P<type>[^']+)'>: (?P<message>[^\n]*)")
# A torch.export failure that a static export can avoid says so in one of these words.
_DYNAMIC_CAUSE = re.compile(r"constraint|speciali[sz]|guard|symbolic|SymInt|dynamic|Dim\b", re.IGNORECASE)


def _exporter_step(exc: BaseException) -> str:
    """Which part of torch.onnx.export failed: torch.export's trace, or the translation to ONNX."""
    if isinstance(exc, _errors.TorchExportError):
        return "torch.export (tracing the model, step 1 of torch.onnx.export)"
    if isinstance(exc, _errors.ConversionError):
        return "torch.onnx (translating the traced graph to ONNX)"
    return "torch.onnx.export"


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
