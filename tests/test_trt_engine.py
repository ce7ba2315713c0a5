"""TensorRT tier (`-m trt`): engines built with the plugin library, TensorRT vs ONNX Runtime vs
PyTorch. Runs only where TensorRT, a GPU and a built plugin library are present; skips elsewhere."""

from __future__ import annotations

import ctypes
import json

import pytest

from attn_export import native, trt

from test_cli import run

pytestmark = pytest.mark.trt


@pytest.fixture(scope="module")
def tensorrt():
    module = trt.tensorrt_module()
    if module is None:
        pytest.skip("trt tier: TensorRT is not installed (pip install 'attn-export[trt]' on a GPU machine)")
    if native.plugin_library() is None:
        pytest.skip("trt tier: no plugin library (attn-export plugins build --tensorrt-root DIR)")
    return module


def test_plugin_creator_is_registered(tensorrt):
    ctypes.CDLL(str(native.plugin_library()))  # as Polygraphy's --plugins and trtexec --staticPlugins do
    creator = tensorrt.get_plugin_registry().get_creator("NeighborhoodAttention", "1", "attn_export")
    assert creator is not None


@pytest.mark.parametrize("model", ["zoo:nat-tiny", "zoo:dinat-tiny", "zoo:na1d-causal", "zoo:na3d-video"])
def test_engine_parity_with_pytorch_and_onnxruntime(tensorrt, model, tmp_path):
    out = tmp_path / "out"
    result = run(model, "-o", out, "--engine", "--max-batch", "4")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    candidates = {c["candidate"] for c in report["comparisons"]}
    assert "tensorrt" in candidates and report["status"] == "pass"
    meta = json.loads((out / "engine.json").read_text())
    assert meta["strongly_typed"] and (out / "model.engine").stat().st_size == meta["bytes"]
    check = run("check", model, out / "model.onnx", "--engine", out / "model.engine")
    assert check.exit_code == 0, check.output
