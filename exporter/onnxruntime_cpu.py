"""ONNX Runtime on the CPU, as the checks run it: sessions (optionally with Q/DQ evaluated exactly), the runner
Polygraphy compares, and what report.json says about it."""

from __future__ import annotations

import platform
from pathlib import Path

import onnxruntime as ort
from polygraphy.backend.onnxrt import OnnxrtRunner

# ONNX Runtime session settings for Q/DQ models: no Q/DQ fusions into ONNX Runtime's own integer kernels
# (QLinear*, MatMulIntegerToFloat, MatMulNBits), whose x86 AVX2 paths saturate intermediate sums and whose
# INT4 MatMulNBits also quantizes activations. Q/DQ then runs as written: exactly what TensorRT computes.
EXACT_QDQ = {"session.disable_quant_qdq": "1"}


def onnxruntime_session(model: str | Path | bytes, exact_qdq: bool = False):
    """A CPU InferenceSession of an ONNX file (or its bytes); ``exact_qdq`` evaluates Q/DQ as written
    (see EXACT_QDQ)."""
    options = ort.SessionOptions()
    for key, value in (EXACT_QDQ if exact_qdq else {}).items():
        options.add_session_config_entry(key, value)
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), options,
                                providers=["CPUExecutionProvider"])


def onnxruntime_settings(exact_qdq: bool) -> dict:
    """What report.json says about an ONNX Runtime runner."""
    settings = {"onnxruntime": ort.__version__, "provider": "CPUExecutionProvider",
                "graph_optimization_level": "ORT_ENABLE_ALL (default)",
                "session_config": dict(EXACT_QDQ) if exact_qdq else {}}
    if exact_qdq:
        settings["qdq"] = "evaluated exactly (integer values, fp32 accumulation), as TensorRT executes it"
    else:
        settings["qdq"] = "fused into ONNX Runtime's CPU integer kernels (results depend on the CPU)"
        settings["cpu_isa"] = cpu_isa()
    return settings


def cpu_isa() -> str:
    """The x86 SIMD level that selects ONNX Runtime's integer kernels (avx512-vnni, avx-vnni, avx2, ...)."""
    try:
        flags = set(" ".join(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                             if line.startswith("flags")).split())
    except OSError:
        return platform.machine()
    for flag, name in (("amx_int8", "amx-int8"), ("avx512_vnni", "avx512-vnni"), ("avx_vnni", "avx-vnni"),
                       ("avx512bw", "avx512bw"), ("avx2", "avx2")):
        if flag in flags:
            return name
    return platform.machine()


def onnxruntime_runner(model: str | Path | bytes, name: str = "onnxruntime-cpu", exact_qdq: bool = False):
    """A Polygraphy runner of an ONNX file (or its bytes) on ONNX Runtime's CPU provider."""
    return OnnxrtRunner(lambda: onnxruntime_session(model, exact_qdq), name=name)
