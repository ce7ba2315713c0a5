"""Small ONNX helpers shared by export, quantization and parity: a model's opset, its graph inputs, atomic saves."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx


@dataclass(frozen=True)
class InputInfo:
    """A graph input: its name, dims (an int, or a name where the dim is symbolic) and numpy dtype."""

    name: str
    shape: Sequence  # ints, or names for dynamic dims
    dtype: np.dtype


def load_graph(model: onnx.ModelProto | str | os.PathLike) -> onnx.ModelProto:
    """A model proto, loaded without external data when given a path (only the graph is needed)."""
    return model if isinstance(model, onnx.ModelProto) else onnx.load(str(model), load_external_data=False)


def opset_of(model: onnx.ModelProto, default: int = 0) -> int:
    """The model's default-domain opset (``default`` when it imports none)."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default)


def _info(value: onnx.ValueInfoProto) -> InputInfo:
    tensor = value.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim]
    return InputInfo(value.name, dims, np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)))


def graph_inputs(model: onnx.ModelProto | str | os.PathLike) -> list[InputInfo]:
    """The graph inputs of a model (initializers excluded), in order."""
    graph = load_graph(model).graph
    initializers = {i.name for i in graph.initializer}
    return [_info(value) for value in graph.input if value.name not in initializers]


def graph_outputs(model: onnx.ModelProto | str | os.PathLike) -> list[InputInfo]:
    """The graph outputs of a model, in order (same fields as graph_inputs)."""
    return [_info(value) for value in load_graph(model).graph.output]


def save_atomically(proto: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Write ``proto`` to ``path`` through a temporary file and a rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        onnx.save_model(proto, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
