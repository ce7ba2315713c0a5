"""Every default of attn-export in one place: the CLI's help, the Python API and the docs read them here.

Plain data and import-free, so any module (and `attn-export --help`) can use it.
"""

from __future__ import annotations

__version__ = "0.1.0"  # the package version (pyproject reads it from here)

# ONNX
OPSET = 18  # the lowest opset the torch dynamo exporter and TensorRT 10 both handle well
SUPPORTED_OPSETS = tuple(range(18, 24))
INT4_MIN_OPSET = 21  # block-wise DequantizeLinear

# Lowering of the attention calls (--lowering): our plugin node + local function, or ONNX's Attention operator
LOWERINGS = ("plugin", "attention")
LOWERING = "plugin"
ATTENTION_MIN_OPSET = 23  # ONNX's Attention operator
# The attention lowering's masks are dense (N x N per call): budgets in mask elements at the export size
# (bool masks take a byte each, additive float masks four). 64 Mi elements = one 8192-token call.
ATTENTION_MASK_BUDGET_CALL = 2**26
ATTENTION_MASK_BUDGET_MODEL = 2**28

# Parity (float files): an element passes if |a-b| <= atol or |a-b| <= rtol * |reference|
ATOL = 1e-4
RTOL = 1e-4
SEED = 0  # of the random check inputs (and, offset by 1000, of random calibration inputs)

# Parity (quantized files): per output, least cosine and largest mean |error| / mean |reference| per input set,
# least cosine of any one sample (batch row), and least share of samples whose top-1 class agrees with the float
# model's (outputs shaped [batch, classes], judged on real inputs only: random inputs have no true class)
QUANT_THRESHOLDS = {"int8": (0.99, 0.10, 0.98, 0.90), "int4": (0.98, 0.25, 0.95, 0.85)}

# Check inputs: real samples held out of the calibration data (never calibrated on), in batches of at most
CHECK_SAMPLES = 32
CHECK_BATCH = 8

# Quantization
CALIB_METHODS = ("max", "percentile", "entropy", "mse")  # attn_export.calib.calibrators.CALIBRATORS
CALIB_METHOD = "max"  # right on every model measured, and the cheapest (docs/accuracy.md)
CALIB_SAMPLES = 128
CALIB_PREPROCESS = "raw"
INT4_BLOCK = 128

# PARO (attn_export.calib.paro): share of mask blocks kept per head, block size in tokens, timestep buckets
PARO_DENSITY = 0.3
PARO_BLOCK = 64
PARO_BUCKETS = 1
PARO_BITS = {"int8": 8, "int4": 4, "fp16": 16}  # --paro-qk / --paro-pv names

# TensorRT engines
MAX_BATCH = 16  # largest batch of the optimization profile when the batch is dynamic

# Export precision (--dtype). fp16 / bf16 files are checked against the fp32 PyTorch model with atol = TOL x the
# output's mean |reference| and rtol = TOL: about 20 units of fp16's rounding (2^-11) and 13 of bf16's (2^-8),
# the margin for a few rounded layers in a row; the gpu tier's kernel tolerances (docs/architecture.md,
# Test tiers) are the same numbers.
DTYPE = "fp32"
DTYPE_TOLERANCES = {"fp16": 1e-2, "bf16": 5e-2}
BF16_MIN_OPSET = 22  # ONNX gave Conv (and ConvTranspose, pooling, ...) bfloat16 in opset 22

# Deployment
TRITON_REPO_VERSION = 1  # the model version folder of a written Triton repository
TRITON_MAX_QUEUE_DELAY_US = 100  # dynamic batching: how long Triton waits to fill a preferred batch
BENCH_ITERS = 50
BENCH_WARMUP = 5
BENCH_BATCHES = (1,)
CI_PYTHON = "3.11"
CI_TORCH = "torch==2.13.0"  # the version the project tests with; the workflow installs its CPU wheel
CI_WORKFLOW = ".github/workflows/parity.yml"
