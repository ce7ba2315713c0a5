"""Export precision (``--dtype fp16|bf16``): the model and its float inputs are cast before export, the file records
its precision, and parity compares it with the fp32 PyTorch model under that precision's tolerances.

Attention nodes keep their type constraint T (float, float16, bfloat16); the torch ops compute in fp32 internally
and round their output, and so do the plugins.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import ml_dtypes
import numpy as np
import onnxruntime as ort
import torch

from attn_export import defaults
from attn_export.errors import EXIT_MISSING_DEPENDENCY, AttnExportError
from attn_export.onnx_utils import load_graph
from attn_export.tolerances import Tolerances

PRECISIONS = ("fp32", "fp16", "bf16")
METADATA_KEY = "attn_export.precision"
_ONNX_TYPES = {"fp32": 1, "fp16": 10, "bf16": 16}  # onnx.TensorProto.FLOAT / FLOAT16 / BFLOAT16


def check_name(name: str | None) -> str:
    name = name or defaults.DTYPE
    if name not in PRECISIONS:
        raise AttnExportError(f"--dtype {name} is not one of {', '.join(PRECISIONS)}")
    return name


def torch_dtype(name: str):
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def numpy_dtype(name: str):
    """numpy has no bfloat16: ml_dtypes (an onnx dependency) provides it."""
    if name == "bf16":
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype({"fp32": np.float32, "fp16": np.float16}[name])


def cast_module(module, name: str):
    """A copy of ``module`` in precision ``name`` (the fp32 original stays the parity reference)."""
    return module if name == "fp32" else copy.deepcopy(module).to(torch_dtype(name)).eval()


def cast_tensors(tensors: Sequence, name: str) -> tuple:
    """Float tensors in precision ``name``; integer inputs (token ids, layouts) stay as they are."""
    if name == "fp32":
        return tuple(tensors)
    dtype = torch_dtype(name)
    return tuple(t.to(dtype) if t.is_floating_point() else t for t in tensors)


def cast_feeds(feeds: Sequence[Mapping], name: str) -> list[dict]:
    """Numpy feeds with their float arrays in precision ``name``: what the exported file takes. The fp32
    reference then runs on exactly these (rounded) values, cast back up."""
    if name == "fp32":
        return [dict(f) for f in feeds]
    dtype = numpy_dtype(name)
    return [{k: a.astype(dtype) if a.dtype.kind == "f" else a for k, a in f.items()} for f in feeds]


def is_low_precision(array) -> bool:
    """fp16 or bf16 (ml_dtypes' bfloat16 has numpy kind 'V')."""
    return str(array.dtype) in ("float16", "bfloat16")


def mark(proto, name: str) -> None:
    """Record the export precision in the model's metadata (the check command reads it back)."""
    for prop in list(proto.metadata_props):
        if prop.key == METADATA_KEY:
            proto.metadata_props.remove(prop)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, name


def onnx_precision(model: str | os.PathLike) -> str:
    """The precision a file was exported in: its metadata, else the type of its first float input or output."""
    proto = load_graph(model)
    recorded = next((p.value for p in proto.metadata_props if p.key == METADATA_KEY), None)
    if recorded in PRECISIONS:
        return recorded
    by_type = {v: k for k, v in _ONNX_TYPES.items()}
    for value in [*proto.graph.input, *proto.graph.output]:
        kind = by_type.get(value.type.tensor_type.elem_type)
        if kind:
            return kind
    return "fp32"


def tolerances(name: str, given):
    """The tolerances of a check in precision ``name``: what the user gave, the rest from the precision's defaults
    (fp32: absolute atol / rtol; fp16 / bf16: atol relative to each output's mean |reference|)."""
    if name == "fp32":
        return Tolerances(defaults.ATOL if given.atol is None else given.atol,
                          defaults.RTOL if given.rtol is None else given.rtol,
                          given.per_output_atol, given.per_output_rtol)
    tol = defaults.DTYPE_TOLERANCES[name]
    return Tolerances(tol if given.atol is None else given.atol, tol if given.rtol is None else given.rtol,
                      given.per_output_atol, given.per_output_rtol, atol_scale=given.atol is None)


def onnxruntime_refusal(onnx_path: str | Path) -> str | None:
    """Why ONNX Runtime's CPU provider cannot run this file (no kernel for an op in its precision: bfloat16
    MatMul / Conv), or None when it loads."""
    options = ort.SessionOptions()
    options.log_severity_level = 3  # its constant-folding warnings about the same missing kernels are noise here
    try:
        ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises its own pybind types; only NOT_IMPLEMENTED is ours to report
        text = str(exc)
        if "NOT_IMPLEMENTED" not in text:
            return None  # another failure: the check itself reports it
        detail = text.split("NOT_IMPLEMENTED :", 1)[-1].strip().splitlines()[0]
        return f"ONNX Runtime's CPU provider cannot run it ({detail})"
    return None


def unrunnable_error(onnx_name: str, name: str, reason: str, export: bool = True) -> AttnExportError:
    hint = ("export it on a GPU machine with --engine (TensorRT runs it), or pass --no-check to export it unchecked"
            if export else "check it with --engine ENGINE on a GPU machine (TensorRT runs it)")
    return AttnExportError(f"the {name} file {onnx_name} cannot be checked here: {reason}; {hint}",
                           EXIT_MISSING_DEPENDENCY)
