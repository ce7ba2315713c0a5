"""attn-export: PyTorch models with special attention -> ONNX (+ TensorRT), with verified parity.

Heavy modules are imported on first use, so that ``import attn_export`` stays cheap and works
without optional dependencies (TensorRT, CUDA, the plugin library).
"""

from __future__ import annotations

import importlib

from attn_export.defaults import __version__
from attn_export.errors import AttnExportError

_LAZY = {
    "export": "attn_export.onnx_export",
    "check_parity": "attn_export.parity",
    "run": "attn_export.pipeline",
    "check": "attn_export.pipeline",
    "ExportOptions": "attn_export.pipeline",
}

__all__ = ["AttnExportError", "ExportOptions", "__version__", "check", "check_parity", "export", "run"]  # lazy: _LAZY


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'attn_export' has no attribute {name!r}")
