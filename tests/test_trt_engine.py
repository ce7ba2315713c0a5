"""TensorRT tier (`-m trt`): engines built with the plugin library, TensorRT vs ONNX Runtime vs
PyTorch, for all three plugins: neighborhood (1-D causal, 2-D, dilated, 3-D), block-sparse (a static layout and
top-k routing computed in the graph) and PARO (the shipped plan, INT8 QK and PV). Runs only where TensorRT, a GPU
and a built plugin library are present; skips elsewhere."""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys

import pytest

from attn_export import native, trt
from attn_export.registry import BLOCK_SPARSE, NEIGHBORHOOD, PARO

from helpers import run

pytestmark = pytest.mark.trt


@pytest.fixture(scope="module")
def tensorrt():
    module = trt.tensorrt_module()
    if module is None:
        pytest.skip("trt tier: TensorRT is not installed (pip install 'attn-export[trt]' on a GPU machine)")
    if native.plugin_library() is None:
        pytest.skip("trt tier: no plugin library (attn-export plugins build --tensorrt-root DIR)")
    return module


@pytest.mark.parametrize("spec", native.PLUGIN_OPS, ids=lambda spec: spec.plugin_name)
def test_plugin_creator_is_registered(tensorrt, spec):
    ctypes.CDLL(str(native.plugin_library()))  # as Polygraphy's --plugins and trtexec --staticPlugins do
    creator = tensorrt.get_plugin_registry().get_creator(spec.plugin_name, spec.plugin_version, spec.plugin_namespace)
    assert creator is not None


LOAD_LIBRARY = """
import ctypes, sys
import tensorrt as trt
registry = trt.get_plugin_registry()
key = ("NeighborhoodAttention", "1", "attn_export")
if sys.argv[2] == "preloaded":  # polygraphy --plugins first, then load_library in the same process
    ctypes.CDLL(sys.argv[1])
    assert registry.get_creator(*key) is not None, "static registration missing"
handle = registry.load_library(sys.argv[1])
assert handle is not None, "load_library returned None (duplicate registration?)"
assert registry.get_creator(*key) is not None
registry.deregister_library(handle)
assert registry.get_creator(*key) is None, "deregister_library left the creator registered"
print("ok")
"""


@pytest.mark.parametrize("order", ["fresh", "preloaded"])
def test_load_library_registers_once_and_unloads(tensorrt, order):
    """IPluginRegistry.load_library (trtexec --dynamicPlugins) in a fresh process: the static
    registration must not duplicate the loader's (TensorRT 11 then returns None)."""
    result = subprocess.run([sys.executable, "-c", LOAD_LIBRARY, str(native.plugin_library()), order],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]


# Each model and the plugin its attention calls must become (none may fall back to the local function).
ENGINE_MODELS = {
    "zoo:nat-tiny": NEIGHBORHOOD, "zoo:dinat-tiny": NEIGHBORHOOD, "zoo:na1d-causal": NEIGHBORHOOD,
    "zoo:na3d-video": NEIGHBORHOOD,
    "zoo:bsa-vit": BLOCK_SPARSE,  # static layout: kv_count / kv_index initializers
    "zoo:biformer-tiny": BLOCK_SPARSE,  # top-k routing: the layout is computed in the graph, a plugin input
    "zoo:paro-dit-tiny": PARO,  # the shipped plan, INT8 QK and PV, block 16 (the generic kernel)
}


@pytest.mark.parametrize("model", list(ENGINE_MODELS))
def test_engine_parity_with_pytorch_and_onnxruntime(tensorrt, model, tmp_path):
    out = tmp_path / "out"
    result = run(model, "-o", out, "--engine", "--max-batch", "4")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    candidates = {c["candidate"] for c in report["comparisons"]}
    assert "tensorrt" in candidates and report["status"] == "pass"
    meta = json.loads((out / "engine.json").read_text())
    assert meta["strongly_typed"] and (out / "model.engine").stat().st_size == meta["bytes"]
    spec = ENGINE_MODELS[model]
    assert meta["plugin_layers"], f"the engine must run the {spec.plugin_name} plugin, not the local function"
    assert all(layer["type"] == "PLUGIN_V3" for layer in meta["plugin_layers"])
    assert {layer.get("plugin") for layer in meta["plugin_layers"]} <= {spec.plugin_name, None}
    check = run("check", model, out / "model.onnx", "--engine", out / "model.engine")
    assert check.exit_code == 0, check.output


def test_fp16_engine_with_two_profiles_triton_entry_and_bench(tensorrt, tmp_path):
    """The deployment path on real TensorRT: an fp16 engine with two optimization profiles checked against the fp32
    model, engine.json recording them, a tensorrt_plan Triton entry with the plugin library, and bench timing it."""
    out = tmp_path / "out"
    result = run("zoo:nat-tiny", "-o", out, "--engine", "--dtype", "fp16",
                 "--shapes", "images=1x3x64x64:2x3x64x64:4x3x96x96",
                 "--profile", "images=4x3x64x64:8x3x128x128:16x3x256x256",
                 "--triton-repo", tmp_path / "triton", "--junit", out / "junit.xml")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "pass" and report["precision"] == "fp16"
    assert "tensorrt" in {c["candidate"] for c in report["comparisons"]}
    meta = json.loads((out / "engine.json").read_text())
    assert meta["precision"] == "fp16" and len(meta["profiles"]) == 2
    assert meta["profiles"][1]["images"]["max"] == [16, 3, 256, 256]
    entry = tmp_path / "triton" / "nat-tiny"
    assert (entry / "1" / "model.plan").read_bytes() == (out / "model.engine").read_bytes()
    assert (entry / "plugins" / native.PLUGIN_LIB_NAME).is_file()
    assert "max_batch_size: 16" in (entry / "config.pbtxt").read_text()
    bench = run("bench", out, "--runtime", "trt", "--runtime", "ort", "--iters", "5", "--batch", "2")
    assert bench.exit_code == 0, bench.output
    rows = {r["runtime"]: r for r in json.loads((out / "bench.json").read_text())["rows"]}
    assert rows["tensorrt"]["status"] == "ok" and rows["tensorrt"]["p50_ms"] > 0
