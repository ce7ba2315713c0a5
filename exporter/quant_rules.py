"""The quantizer's value rules, import-free: the option groups check the flags with them before torch or onnx
load, and attn_export.calib.qdq.QuantOptions checks its API callers' values with the same function."""

from __future__ import annotations

from attn_export.errors import AttnExportError

QUANT_MODES = ("int8", "int4")


def check_quant_values(mode: str, samples: int, int4_block: int) -> None:
    """Mode, calibration samples and INT4 block size (the calibration method: defaults.CALIB_METHODS)."""
    if mode not in QUANT_MODES:
        raise AttnExportError(f"quantization mode '{mode}' is not one of {', '.join(QUANT_MODES)}")
    if samples < 1:
        raise AttnExportError(f"--calib-samples {samples} must be at least 1")
    if int4_block < 2 or int4_block & (int4_block - 1):
        raise AttnExportError(f"--int4-block {int4_block} must be a power of two >= 2 (TensorRT: 32, 64, 128)")
