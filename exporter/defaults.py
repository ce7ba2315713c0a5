"""Every default of attn-export in one place: the CLI's help, the Python API and the docs read them here.

Plain data and import-free, so any module (and `attn-export --help`) can use it.
"""

from __future__ import annotations

__version__ = "0.1.0"  # the package version (pyproject reads it from here)

# ONNX
OPSET = 18  # the lowest opset the torch dynamo exporter and TensorRT 10 both handle well
SUPPORTED_OPSETS = tuple(range(18, 24))
INT4_MIN_OPSET = 21  # block-wise DequantizeLinear

# Parity (float files): an element passes if |a-b| <= atol or |a-b| <= rtol * |reference|
ATOL = 1e-4
RTOL = 1e-4
SEED = 0  # of the random check inputs (and, offset by 1000, of random calibration inputs)

# Parity (quantized files): per output, least cosine and largest mean |error| / mean |reference|
QUANT_THRESHOLDS = {"int8": (0.99, 0.10), "int4": (0.98, 0.25)}

# Quantization
CALIB_METHOD = "max"  # ModelOpt's INT8 default; entropy clips bimodal inputs (docs/accuracy.md)
CALIB_SAMPLES = 128
CALIB_PREPROCESS = "raw"
INT4_BLOCK = 128

# TensorRT engines
MAX_BATCH = 16  # largest batch of the optimization profile when the batch is dynamic
