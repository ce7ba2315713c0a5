"""Explicit quantization of an exported float ONNX model under TensorRT's rules.

INT8 (W8A8): the inputs of MatMul, Gemm and Conv get QuantizeLinear -> DequantizeLinear pairs;
activations per tensor (amax from a calibrator run on ONNX Runtime over calibration data), weights
per output channel (amax = max |w| per channel) stored as int8 initializers behind a
DequantizeLinear. INT4: weight-only, MatMul and Gemm weights as int4 blocks along the input
dimension (DequantizeLinear with ``block_size``, opset 21). Always symmetric: zero points are 0 and
values use the narrow range [-127, 127] / [-7, 7]. Custom attention nodes, their inputs and their
local functions are left as they are.
"""

from __future__ import annotations

import fnmatch
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from attn_export import defaults
from attn_export.calib.calibrators import DEFAULT_METHOD, CalibConfig, make_calibrator
from attn_export.calib.data import InputInfo, check_feed
from attn_export.errors import AttnExportError, library_step
from attn_export.onnx_utils import opset_of, save_atomically
from attn_export.quant_rules import QUANT_MODES, check_quant_values

MODES = QUANT_MODES
QUANTIZABLE = {"int8": ("MatMul", "Gemm", "Conv"), "int4": ("MatMul", "Gemm")}
INT4_MIN_OPSET = defaults.INT4_MIN_OPSET
_FLOAT = {TensorProto.FLOAT}
_MIN_AMAX = 1e-8  # an all-zero tensor still gets a valid (positive) scale


@dataclass
class QuantOptions:
    mode: str = "int8"
    method: str = DEFAULT_METHOD
    samples: int = defaults.CALIB_SAMPLES
    int4_block: int = defaults.INT4_BLOCK
    exclude: Sequence[str] = ()
    method_options: dict = field(default_factory=dict)

    def validate(self) -> None:
        check_quant_values(self.mode, self.samples, self.int4_block)
        make_calibrator(CalibConfig(self.method, dict(self.method_options)))  # unknown method: clear error


@dataclass
class QuantizedTensor:
    name: str
    kind: str  # "activation" or "weight"
    consumers: list[str]
    dtype: str  # "int8" or "int4"
    method: str  # calibrator for activations; "max per channel" / "max per block" for weights
    amax: float | list[float]
    scale: float | list[float]
    axis: int | None = None
    block_size: int | None = None


@dataclass
class QuantResult:
    model: onnx.ModelProto
    tensors: list[QuantizedTensor]
    samples: int
    calibration_seconds: float
    activation_amax: dict[str, float]

    def summary(self) -> dict:
        return {"samples": self.samples, "calibration_seconds": round(self.calibration_seconds, 2),
                "tensors": [asdict(t) for t in self.tensors]}


# ---------------------------------------------------------------------------------------------
# Which tensors


@dataclass
class _Target:
    node: onnx.NodeProto
    weight: str | None  # initializer feeding the weight slot
    weight_axis: int | None  # output-channel axis of the weight
    weight_in_axis: int | None  # input (reduction) axis of the weight, for INT4 blocks
    activations: list[str]


def _targets(model: onnx.ModelProto, mode: str, exclude: Sequence[str]) -> list[_Target]:
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    float_tensors = _float_tensors(model)
    targets = []
    for node in graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type not in QUANTIZABLE[mode]:
            continue
        if _excluded(node.name, exclude):
            continue
        weight = axis = in_axis = None
        w = node.input[1] if len(node.input) > 1 else ""
        if w in inits and inits[w].data_type in _FLOAT and not _excluded(w, exclude):
            rank = len(inits[w].dims)
            if node.op_type == "Conv":
                axis, in_axis = 0, 1
            elif node.op_type == "Gemm" and _attr(node, "transB", 0):
                axis, in_axis = 0, 1
            elif rank >= 2:
                axis, in_axis = rank - 1, rank - 2
            weight = w if axis is not None else None
        activations = []
        if mode == "int8":
            slots = [0] if node.op_type != "MatMul" else [0, 1]
            for slot in slots:
                name = node.input[slot]
                if name and name not in inits and name in float_tensors and not _excluded(name, exclude):
                    activations.append(name)
        if weight or activations:
            targets.append(_Target(node, weight, axis, in_axis, activations))
    return targets


def quantized_layers(model: onnx.ModelProto, mode: str, exclude: Sequence[str] = ()) -> list[tuple[str, str]]:
    """(node name, op type) of every layer ``mode`` quantizes in ``model``, in graph order."""
    return [(t.node.name, t.node.op_type) for t in _targets(model, mode, exclude)]


def _excluded(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _float_tensors(model: onnx.ModelProto) -> set[str]:
    inferred = onnx.shape_inference.infer_shapes(model)
    infos = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    return {v.name for v in infos if v.type.tensor_type.elem_type in _FLOAT}


# ---------------------------------------------------------------------------------------------
# Calibration


def calibrate(model: onnx.ModelProto, activations: Sequence[str], data: Iterable[Mapping[str, np.ndarray]],
              config: CalibConfig, samples: int) -> tuple[dict[str, float], int]:
    """amax per activation tensor from ONNX Runtime runs over ``data`` (streamed: one feed at a time).

    Returns the amax map and the number of samples used (at most ``samples``; a feed with batch B
    counts as B samples).
    """
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {o.name for o in probe.graph.output}
    for name in activations:
        if name not in existing:
            probe.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    with library_step("ONNX Runtime loading the calibration model"):
        session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    inputs = {i.name: InputInfo(i.name, i.shape, np.dtype(_ORT_DTYPES.get(i.type, np.float32)))
              for i in session.get_inputs()}
    calibrators = {name: make_calibrator(config) for name in activations}
    used = 0
    for index, feed in enumerate(data):
        feed = check_feed(feed, inputs, index)
        with library_step(f"ONNX Runtime running calibration sample {index}"):
            outputs = session.run(list(activations), feed)
        for name, value in zip(activations, outputs):
            calibrators[name].collect(value)
        used += next(iter(feed.values())).shape[0] if feed else 1
        if used >= samples:
            break
    if used == 0:
        raise AttnExportError("calibration data is empty; give at least one sample (--calib-data)")
    return {name: max(c.compute_amax(), _MIN_AMAX) for name, c in calibrators.items()}, used


_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
               "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_,
               "tensor(uint8)": np.uint8, "tensor(int8)": np.int8}


# ---------------------------------------------------------------------------------------------
# Writing Q/DQ


def quantize(model: onnx.ModelProto, data: Iterable[Mapping[str, np.ndarray]] | None,
             options: QuantOptions, cached_amax: Mapping[str, float] | None = None) -> QuantResult:
    """Return a copy of ``model`` with explicit Q/DQ (``data`` is only read for INT8 activations).

    ``cached_amax`` (a calibration cache: activation tensor -> amax) replaces calibration.
    """
    options.validate()
    if options.mode == "int4":
        opset = opset_of(model)
        if opset < INT4_MIN_OPSET:
            raise AttnExportError(f"INT4 block-wise DequantizeLinear needs opset >= {INT4_MIN_OPSET}; the model has "
                                  f"opset {opset}: export with --opset {INT4_MIN_OPSET} (the CLI does this for --int4)")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    targets = _targets(out, options.mode, options.exclude)
    if not targets:
        kinds = ", ".join(QUANTIZABLE[options.mode])
        raise AttnExportError(f"nothing to quantize: the model has no {kinds} node with a float "
                              f"{'weight' if options.mode == 'int4' else 'weight or input'} outside --exclude")
    activations = sorted({a for t in targets for a in t.activations})
    start = time.perf_counter()
    amax, used = ({}, 0)
    if activations and cached_amax is not None:
        missing = [a for a in activations if a not in cached_amax]
        if missing:
            raise AttnExportError(f"the calibration cache has no amax for {len(missing)} tensors of this model "
                                  f"(e.g. '{missing[0]}'); it belongs to another model or --exclude: "
                                  "drop --calib-cache")
        amax = {a: max(float(cached_amax[a]), _MIN_AMAX) for a in activations}
    elif activations:
        if data is None:
            raise AttnExportError("INT8 needs calibration data for its activations")
        amax, used = calibrate(model, activations, data, CalibConfig(options.method, dict(options.method_options)),
                               options.samples)
    seconds = time.perf_counter() - start

    writer = _QdqWriter(out)
    tensors = []
    for name in activations:
        consumers = [t.node for t in targets if name in t.activations]
        tensors.append(writer.activation(name, amax[name], consumers, options.method))
    for weight in sorted({t.weight for t in targets if t.weight}):
        group = [t for t in targets if t.weight == weight]
        if options.mode == "int8":
            tensors.append(writer.weight_int8(weight, group[0].weight_axis, [t.node for t in group]))
        else:
            tensors.append(writer.weight_int4(weight, group[0].weight_in_axis, options.int4_block,
                                              [t.node for t in group]))
    writer.finish()
    try:
        onnx.checker.check_model(out, full_check=True)
    except Exception as exc:
        raise AttnExportError(f"the quantized model fails onnx.checker: {str(exc).splitlines()[0]}") from exc
    return QuantResult(out, tensors, used, seconds, amax)


class _QdqWriter:
    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.graph = model.graph
        self.inits = {i.name: i for i in self.graph.initializer}
        self.new_nodes: list[tuple[int, onnx.NodeProto]] = []  # (insert before node index, node)
        self.position = {id(n): i for i, n in enumerate(self.graph.node)}

    def _add(self, tensor: onnx.TensorProto) -> str:
        self.graph.initializer.append(tensor)
        self.inits[tensor.name] = tensor
        return tensor.name

    def _rewire(self, old: str, new: str, consumers: Sequence[onnx.NodeProto]) -> None:
        for node in consumers:
            for i, name in enumerate(node.input):
                if name == old:
                    node.input[i] = new

    def _first_use(self, consumers) -> int:
        return min(self.position[id(n)] for n in consumers)

    def activation(self, name: str, amax: float, consumers, method: str) -> QuantizedTensor:
        scale = float(amax) / 127.0
        scale_name = self._add(numpy_helper.from_array(np.array(scale, np.float32), f"{name}_scale"))
        zp_name = self._add(numpy_helper.from_array(np.array(0, np.int8), f"{name}_zero_point"))
        q = helper.make_node("QuantizeLinear", [name, scale_name, zp_name], [f"{name}_quantized"], name=f"{name}_Q")
        dq = helper.make_node("DequantizeLinear", [q.output[0], scale_name, zp_name], [f"{name}_dequantized"],
                              name=f"{name}_DQ")
        where = self._first_use(consumers)
        self.new_nodes += [(where, q), (where, dq)]
        self._rewire(name, dq.output[0], consumers)
        return QuantizedTensor(name, "activation", [n.name for n in consumers], "int8", method, float(amax), scale)

    def weight_int8(self, name: str, axis: int, consumers) -> QuantizedTensor:
        w = numpy_helper.to_array(self.inits[name]).astype(np.float32)
        reduce = tuple(a for a in range(w.ndim) if a != axis)
        amax = np.maximum(np.abs(w).max(axis=reduce), _MIN_AMAX)
        scale = (amax / 127.0).astype(np.float32)
        shape = [1] * w.ndim
        shape[axis] = -1
        q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
        self._weight_dq(name, numpy_helper.from_array(q, f"{name}_quantized"), scale, np.zeros(scale.shape, np.int8),
                        axis, None, consumers)
        return QuantizedTensor(name, "weight", [n.name for n in consumers], "int8", "max per channel",
                               amax.tolist(), scale.tolist(), axis=axis)

    def weight_int4(self, name: str, in_axis: int, block: int, consumers) -> QuantizedTensor:
        w = numpy_helper.to_array(self.inits[name]).astype(np.float32)
        if w.ndim != 2:
            raise AttnExportError(f"INT4 weight '{name}' has {w.ndim} dims; block-wise INT4 needs 2-D weights "
                                  "(use --exclude to keep it in float)")
        moved = np.moveaxis(w, in_axis, 0)  # [K, N]
        k = moved.shape[0]
        blocks = -(-k // block)
        padded = np.zeros((blocks * block, moved.shape[1]), np.float32)
        padded[:k] = moved
        amax = np.maximum(np.abs(padded.reshape(blocks, block, -1)).max(axis=1), _MIN_AMAX)  # [blocks, N]
        scale = (amax / 7.0).astype(np.float32)
        q = np.clip(np.round(moved / np.repeat(scale, block, axis=0)[:k]), -7, 7).astype(np.int8)
        q, scale, amax = (np.moveaxis(x, 0, in_axis) for x in (q, scale, amax))
        q_tensor = helper.make_tensor(f"{name}_quantized", TensorProto.INT4, list(q.shape), q.ravel().tolist())
        self._weight_dq(name, q_tensor, np.ascontiguousarray(scale), None, in_axis, block, consumers,
                        zp_type=TensorProto.INT4)
        return QuantizedTensor(name, "weight", [n.name for n in consumers], "int4", "max per block", amax.tolist(),
                               scale.tolist(), axis=in_axis, block_size=block)

    def _weight_dq(self, name, q_tensor, scale, zero_point, axis, block, consumers, zp_type=TensorProto.INT8) -> None:
        q_name = self._add(q_tensor)
        scale_name = self._add(numpy_helper.from_array(scale, f"{name}_scale"))
        zp = (numpy_helper.from_array(zero_point, f"{name}_zero_point") if zero_point is not None else
              helper.make_tensor(f"{name}_zero_point", zp_type, list(scale.shape), [0] * scale.size))
        zp_name = self._add(zp)
        attrs = {"axis": axis} if block is None else {"axis": axis, "block_size": block}
        dq = helper.make_node("DequantizeLinear", [q_name, scale_name, zp_name], [f"{name}_dequantized"],
                              name=f"{name}_DQ", **attrs)
        self.new_nodes.append((self._first_use(consumers), dq))
        self._rewire(name, dq.output[0], consumers)

    def finish(self) -> None:
        """Insert the new nodes before their first consumers (topological order) and drop float weights
        that nothing reads any more."""
        nodes = list(self.graph.node)
        inserted = sorted(self.new_nodes, key=lambda item: item[0])
        merged, cursor = [], 0
        for where, node in inserted:
            merged.extend(nodes[cursor:where])
            cursor = max(cursor, where)
            merged.append(node)
        merged.extend(nodes[cursor:])
        del self.graph.node[:]
        self.graph.node.extend(merged)
        used = {name for n in self.graph.node for name in n.input} | {o.name for o in self.graph.output}
        keep = [i for i in self.graph.initializer if i.name in used]
        del self.graph.initializer[:]
        self.graph.initializer.extend(keep)


CACHE_FORMAT = "attn-export calibration cache 1"


def write_cache(path: Path, result: QuantResult, options: QuantOptions, source: str) -> None:
    """The activation amax values of an INT8 calibration, reusable with --calib-cache."""
    path.write_text(json.dumps({"format": CACHE_FORMAT, "method": options.method, "samples": result.samples,
                                "data": source, "amax": result.activation_amax}, indent=2) + "\n")


def read_cache(path: str | Path) -> dict[str, float]:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise AttnExportError(f"--calib-cache {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise AttnExportError(f"--calib-cache {path} is not a JSON calibration cache ({type(exc).__name__})") from exc
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or not isinstance(data.get("amax"), dict):
        raise AttnExportError(f"--calib-cache {path} is not an attn-export calibration cache (calib_cache.json)")
    try:
        return {str(k): float(v) for k, v in data["amax"].items()}
    except (TypeError, ValueError):
        raise AttnExportError(f"--calib-cache {path}: amax values must be numbers") from None


def save(model: onnx.ModelProto, path: Path) -> None:
    save_atomically(model, path)
