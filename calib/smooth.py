"""SmoothQuant-style activation smoothing before INT8 quantization (--smooth ALPHA).

A per-tensor INT8 scale is set by the largest channel: a few outlier channels (common after LayerNorm in
transformers) leave the other channels a handful of levels. Smoothing divides each input channel j of a
MatMul / Gemm by s_j = max|X_j|^alpha / max|W_j|^(1 - alpha) and multiplies row j of its weight by s_j: the
product is unchanged in float, the activation's range is flatter and the weight absorbs the difference (weights
are quantized per output channel, so they take it well). X / s is an explicit Mul in the graph, fed by the
activation's per-channel maxima from ONNX Runtime runs over the calibration data; consumers of one activation
share one s (the maximum of their weight rows).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from attn_export.calib import qdq
from attn_export.errors import AttnExportError
from attn_export.onnxruntime_cpu import onnxruntime_session

_MIN_SCALE = 1e-5


@dataclass
class Smoothed:
    tensor: str
    consumers: list[str]
    channels: int
    range_ratio_before: float  # largest / median channel max of the activation
    range_ratio_after: float

    def to_dict(self) -> dict:
        return asdict(self)


def _smoothable(model: onnx.ModelProto, exclude: Sequence[str]) -> dict[str, list[tuple[onnx.NodeProto, bool]]]:
    """Activation -> [(MatMul / Gemm node, weight transposed)] for 2-D float weights in initializers."""
    inits = {i.name: i for i in model.graph.initializer}
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    groups: dict[str, list] = {}
    for layer, op in qdq.quantized_layers(model, "int8", exclude):
        node = next(n for n in model.graph.node if n.name == layer)
        if op not in ("MatMul", "Gemm") or node.input[0] in inits or node.input[1] not in inits:
            continue
        if len(inits[node.input[1]].dims) != 2 or uses[node.input[1]] > 1:  # a shared weight cannot take two scales
            continue
        attrs = {a.name: a.i for a in node.attribute if a.name in ("transA", "transB")}
        if attrs.get("transA"):  # the input's channels are not its last axis
            continue
        transposed = op == "Gemm" and bool(attrs.get("transB"))
        groups.setdefault(node.input[0], []).append((node, transposed))
    return groups


def channel_maxima(model: onnx.ModelProto, tensors: Sequence[str], data: Iterable[Mapping[str, np.ndarray]],
                   samples: int) -> dict[str, np.ndarray]:
    """max |x| per last-axis channel of each tensor, over ``samples`` calibration samples."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for name in tensors:
        probe.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    session = onnxruntime_session(probe.SerializeToString())
    maxima: dict[str, np.ndarray] = {}
    used = 0
    for feed in data:
        for name, value in zip(tensors, session.run(list(tensors), dict(feed))):
            peak = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0)
            maxima[name] = np.maximum(maxima.get(name, peak), peak)
        used += next(iter(feed.values())).shape[0] if feed else 1
        if used >= samples:
            break
    if not used:
        raise AttnExportError("--smooth needs calibration data: give at least one sample")
    return maxima


def smooth(model: onnx.ModelProto, data: Iterable[Mapping[str, np.ndarray]], alpha: float, samples: int,
           exclude: Sequence[str] = ()) -> tuple[onnx.ModelProto, list[Smoothed]]:
    """A copy of ``model`` with the inputs of its MatMul / Gemm layers smoothed (see the module docstring)."""
    if not 0 <= alpha <= 1:
        raise AttnExportError(f"--smooth {alpha} must lie in [0, 1] (SmoothQuant uses 0.5)")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    groups = _smoothable(out, exclude)
    if not groups:
        return out, []
    maxima = channel_maxima(out, sorted(groups), data, samples)
    inits = {i.name: i for i in out.graph.initializer}
    report = []
    for tensor, consumers in groups.items():
        weights = [numpy_helper.to_array(inits[node.input[1]]) for node, _ in consumers]
        rows = [np.abs(w.T if t else w).max(axis=1) for w, (_, t) in zip(weights, consumers)]  # per input channel
        x_max = maxima[tensor].astype(np.float64)
        w_max = np.max(rows, axis=0).astype(np.float64)
        if x_max.shape != w_max.shape:
            continue  # the activation's last axis is not the reduction axis (e.g. a transposed input)
        scale = np.where((x_max > 0) & (w_max > 0), x_max ** alpha / np.maximum(w_max, 1e-12) ** (1 - alpha), 1.0)
        scale = np.maximum(scale, _MIN_SCALE).astype(np.float32)
        _rescale(out, tensor, consumers, weights, scale, inits)
        after = x_max / scale
        report.append(Smoothed(tensor, [n.name for n, _ in consumers], int(scale.size), _ratio(x_max), _ratio(after)))
    return out, report


def _rescale(model, tensor, consumers, weights, scale, inits) -> None:
    inverse = numpy_helper.from_array((1.0 / scale).astype(np.float32), f"{tensor}_smooth_inverse")
    model.graph.initializer.append(inverse)
    smoothed = f"{tensor}_smoothed"
    first = min(list(model.graph.node).index(node) for node, _ in consumers)
    model.graph.node.insert(first, helper.make_node("Mul", [tensor, inverse.name], [smoothed],
                                                    name=f"{tensor}_smooth"))
    for (node, transposed), weight in zip(consumers, weights):
        node.input[0] = smoothed
        scaled = weight * (scale[None, :] if transposed else scale[:, None])
        inits[node.input[1]].CopyFrom(numpy_helper.from_array(scaled.astype(weight.dtype), node.input[1]))


def _ratio(channel_max: np.ndarray) -> float:
    typical = float(np.median(channel_max)) or float(np.mean(channel_max))
    return round(float(channel_max.max() / typical), 3) if typical > 0 else 1.0
