"""Calibration and explicit quantization (TensorRT's rules: symmetric Q/DQ in the ONNX).

``quantize(model, calib_data, mode="int8")`` calibrates a float ONNX model (exported by attn_export;
its custom attention nodes run through their local functions) on ONNX Runtime and returns it with
QuantizeLinear / DequantizeLinear: INT8 W8A8 on MatMul, Gemm and Conv, or INT4 weight-only blocks.
Calibrators (collect / reset / compute_amax): attn_export.calib.calibrators.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import onnx

from attn_export import defaults
from attn_export.calib import data as calib_data_module
from attn_export.calib import qdq
from attn_export.calib.calibrators import CALIBRATORS, DEFAULT_METHOD, CalibConfig, make_calibrator
from attn_export.calib.qdq import MODES, QuantizedTensor, QuantOptions, QuantResult

__all__ = ["CALIBRATORS", "CalibConfig", "MODES", "QuantOptions", "QuantResult", "QuantizedTensor", "make_calibrator",
           "quantize"]


def quantize(model, calib_data: Iterable[Mapping] | str | None = None, mode: str = "int8", method: str = DEFAULT_METHOD,
             samples: int = defaults.CALIB_SAMPLES, int4_block: int = defaults.INT4_BLOCK, exclude: Sequence[str] = (),
             output_path: str | os.PathLike | None = None) -> QuantResult:
    """Quantize ``model`` (an onnx.ModelProto or a path). ``calib_data``: an iterable of feed dicts, or a
    ``--calib-data`` spec (.npz, .npy, image folder, file.py:function); INT4 needs none."""
    proto = onnx.load(str(model)) if isinstance(model, (str, os.PathLike)) else model
    if isinstance(calib_data, str):
        calib_data = calib_data_module.from_spec(calib_data, calib_data_module.input_infos(proto)).feeds
    result = qdq.quantize(proto, calib_data, QuantOptions(mode, method, samples, int4_block, tuple(exclude)))
    if output_path is not None:
        qdq.save(result.model, Path(output_path))
    return result
