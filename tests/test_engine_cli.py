"""The engine path without TensorRT: clean exit-3 errors and nothing written; the optimization
profile rules; the plugin-library lookup; `plugins build` preconditions."""

from __future__ import annotations

import json
import sys
import types

import pytest

from attn_export import native, trt
from attn_export.errors import AttnExportError

from helpers import SMALL, assert_one_line_error, run


@pytest.fixture
def no_plugin_library(monkeypatch, tmp_path):
    monkeypatch.setenv(native.BUILD_DIR_ENV, str(tmp_path / "empty-build"))
    monkeypatch.delenv(native.PLUGIN_LIB_ENV, raising=False)


@pytest.fixture
def fake_plugin_library(monkeypatch, tmp_path):
    lib = tmp_path / native.PLUGIN_LIB_NAME
    lib.write_bytes(b"\x7fELF")
    monkeypatch.setenv(native.PLUGIN_LIB_ENV, str(lib))
    return lib


def test_engine_without_tensorrt_exits_3_before_any_work(tmp_path, fake_plugin_library, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    out = tmp_path / "out"
    result = run(SMALL, "-o", out, "--engine")
    assert_one_line_error(result, 3, "needs TensorRT, which is not installed")
    assert "pip install" in result.stderr
    assert not out.exists()


def test_engine_without_plugin_library_exits_3(tmp_path, no_plugin_library, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(Builder=object, __version__="10.14"))
    out = tmp_path / "out"
    result = run(SMALL, "-o", out, "--engine")
    assert_one_line_error(result, 3, "plugins build")
    assert not out.exists()


def test_default_skips_the_engine_where_tensorrt_is_absent(tmp_path, fake_plugin_library, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    result = run(SMALL, "-o", tmp_path / "out", "--no-check")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "model.onnx").is_file()
    assert not (tmp_path / "out" / "model.engine").exists()


def test_tensorrt_download_stub_counts_as_absent(monkeypatch):
    stub = types.ModuleType("tensorrt")  # the PyPI placeholder package has no Builder
    monkeypatch.setitem(sys.modules, "tensorrt", stub)
    assert trt.tensorrt_module() is None
    with pytest.raises(AttnExportError) as info:
        trt.require_tensorrt()
    assert info.value.exit_code == 3


def test_plugins_path_reports_missing_library(no_plugin_library):
    result = run("plugins", "path")
    assert result.exit_code == 3
    assert "plugins: not found" in result.output


def test_plugin_library_env_pointing_nowhere_is_exit_3(monkeypatch, tmp_path):
    monkeypatch.setenv(native.PLUGIN_LIB_ENV, str(tmp_path / "missing.so"))
    with pytest.raises(AttnExportError, match="ATTN_EXPORT_PLUGIN_LIB") as info:
        native.plugin_library()
    assert info.value.exit_code == 3
    assert trt.engine_available() is False


def test_plugin_library_found_in_the_build_cache(monkeypatch, tmp_path):
    monkeypatch.delenv(native.PLUGIN_LIB_ENV, raising=False)
    monkeypatch.setenv(native.BUILD_DIR_ENV, str(tmp_path))
    assert native.plugin_library() is None
    (tmp_path / native.PLUGIN_LIB_NAME).write_bytes(b"")
    assert native.plugin_library() == tmp_path / native.PLUGIN_LIB_NAME


def test_plugins_build_needs_cmake(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CUDACXX", raising=False)
    result = run("plugins", "build", "--build-dir", tmp_path / "b")
    assert_one_line_error(result, 3, "needs cmake")


@pytest.mark.parametrize("arch, fragment", [("75", "sm_80 or newer"), ("nine", "not a CUDA architecture")])
def test_plugins_build_rejects_bad_arch(arch, fragment, tmp_path):
    result = run("plugins", "build", "--arch", arch, "--build-dir", tmp_path / "b")
    assert_one_line_error(result, 2, fragment)


def test_profile_covers_dynamic_dims_and_batch():
    onnx_inputs = {"x": ["batch", 3, "h", "w"], "mask": [2, 5]}
    shapes = [{"x": (2, 3, 32, 32), "mask": (2, 5)}, {"x": (3, 3, 32, 32), "mask": (2, 5)},
              {"x": (2, 3, 40, 48), "mask": (2, 5)}]
    profile = trt.profile_from(onnx_inputs, shapes, max_batch=8)
    assert profile["x"] == trt.ShapeRange((1, 3, 32, 32), (2, 3, 32, 32), (8, 3, 40, 48))
    assert profile["mask"] == trt.ShapeRange((2, 5), (2, 5), (2, 5))  # static: fixed


def test_profile_errors():
    with pytest.raises(AttnExportError, match="--max-batch"):
        trt.profile_from({"x": ["b", 4]}, [{"x": (1, 4)}], max_batch=0)
    with pytest.raises(AttnExportError, match="--input-shape y="):
        trt.profile_from({"y": ["b", 4]}, [{"x": (1, 4)}])


def test_check_with_engine_without_tensorrt_exits_3(tmp_path, fake_plugin_library, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    result = run("check", SMALL, tmp_path / "model.onnx", "--engine", tmp_path / "model.engine")
    assert_one_line_error(result, 3, "needs TensorRT")


def test_no_api_that_tensorrt_11_removed():
    """TensorRT 11 dropped implicit INT8 calibration, precision builder flags and the IPluginV2 family:
    neither the plugin nor the engine build may use them."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    sources = [*root.joinpath("plugins", "trt").rglob("*.[ch]*"), root / "exporter" / "trt.py"]
    removed = ["IInt8Calibrator", "IInt8EntropyCalibrator", "IInt8MinMaxCalibrator", "BuilderFlag::kINT8",
               "BuilderFlag::kFP16", "BuilderFlag.FP16", "BuilderFlag.INT8", "IPluginV2", "IPluginCreator ",
               "int8=True", "fp16=True", "calibrator="]
    hits = [(p.name, name) for p in sources for name in removed if name in p.read_text()]
    assert not hits, hits


def test_plugins_build_without_sources_is_exit_3(monkeypatch, tmp_path):
    monkeypatch.setattr(native, "SOURCE_DIR", tmp_path / "no-plugins")
    monkeypatch.setattr(native.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    with pytest.raises(AttnExportError, match="needs the plugins/ sources") as info:
        native.build("90", build_dir=tmp_path / "b")
    assert info.value.exit_code == 3


# --- every node of an op the plugin library provides must become a plugin layer (no silent fallback)

def na_layer(name, plugin="NeighborhoodAttention", namespace="attn_export", kind="PLUGIN_V3"):
    return {"layer": name, "type": kind, "plugin": plugin, "version": "1", "namespace": namespace}


NA_NODES = [{"node": "na0", "op": "NeighborhoodAttention"}, {"node": "na1", "op": "NeighborhoodAttention"}]
# What the parser makes of a node whose plugin is not registered: its local function's body, inlined.
FALLBACK = [{"layer": f"na{i}/{op}", "type": op} for i in range(2) for op in ("MATRIX_MULTIPLY", "SOFTMAX")]


def test_plugin_layers_found_for_every_node():
    layers = [{"layer": "input_proj", "type": "CONVOLUTION"}, na_layer("na0"), na_layer("na1")]
    assert trt.check_plugin_layers(NA_NODES, layers) == [na_layer("na0"), na_layer("na1")]
    assert trt.check_plugin_layers([], FALLBACK) == []  # no node of a plugin op: nothing to check


def test_function_fallback_is_exit_3_naming_the_nodes():
    with pytest.raises(AttnExportError) as info:
        trt.check_plugin_layers(NA_NODES, FALLBACK, "model.onnx")
    assert info.value.exit_code == 3
    message = str(info.value)
    assert "2 of 2 NeighborhoodAttention nodes ('na0', 'na1') of model.onnx" in message
    assert "model-local ONNX function" in message and native.PLUGIN_LIB_NAME in message
    assert "\n" not in message


def test_partial_and_foreign_plugin_layers_do_not_count():
    with pytest.raises(AttnExportError, match=r"1 of 2 NeighborhoodAttention nodes \('na1'\)"):
        trt.check_plugin_layers(NA_NODES, [na_layer("na0"), *FALLBACK[2:]])
    # another library's plugin of the same name, or a plugin of another op, is not ours
    foreign = [na_layer("na0", namespace=""), na_layer("na1", plugin="Other")]
    with pytest.raises(AttnExportError, match="2 of 2"):
        trt.check_plugin_layers(NA_NODES, foreign)


def test_unidentified_plugin_layer_counts_by_node_name():
    """Bindings that cannot tell a plugin layer's plugin: the parser names the layer after its node."""
    unknown = [na_layer("na0", plugin=None, namespace=None), na_layer("na1", plugin=None, namespace=None)]
    assert len(trt.check_plugin_layers(NA_NODES, unknown)) == 2
    with pytest.raises(AttnExportError, match="'na1'"):
        trt.check_plugin_layers(NA_NODES, [unknown[0], {**unknown[1], "layer": "something_else"}])


class FakeTrt:
    """The parts of the tensorrt module that network_layers uses."""

    class LayerType:
        PLUGIN_V3, PLUGIN_V2, SOFTMAX = "LayerType.PLUGIN_V3", "LayerType.PLUGIN_V2", "LayerType.SOFTMAX"

    class PluginCapabilityType:
        CORE = "core"

    misviewed: list = []  # layers whose plugin was read through the wrong class

    class ILayer:
        def __init__(self, name, kind, plugin=None):
            self.name, self.type, self._plugin = name, kind, plugin

    class IPluginV3Layer(ILayer):
        @property
        def plugin(self):  # an IPluginV3: only a V3 layer may be viewed as one (else a crash, not an exception)
            if self.type != FakeTrt.LayerType.PLUGIN_V3:
                FakeTrt.misviewed.append(self.name)
            return self._plugin


class FakePlugin:
    def __init__(self, name, namespace):
        self.core = types.SimpleNamespace(plugin_name=name, plugin_version="1", plugin_namespace=namespace)

    def get_capability_interface(self, kind):
        assert kind == FakeTrt.PluginCapabilityType.CORE
        return self.core


class FakeNetwork:
    def __init__(self, layers):
        self.layers = layers
        self.num_layers = len(layers)

    def get_layer(self, i):
        return self.layers[i]


def test_network_layers_reads_plugin_identity():
    network = FakeNetwork([FakeTrt.ILayer("soft", FakeTrt.LayerType.SOFTMAX),
                           FakeTrt.ILayer("na0", FakeTrt.LayerType.PLUGIN_V3, FakePlugin("NeighborhoodAttention",
                                                                                          "attn_export"))])
    assert trt.network_layers(FakeTrt, network) == [{"layer": "soft", "type": "SOFTMAX"}, na_layer("na0")]


def test_v2_plugin_layers_are_never_viewed_as_v3():
    """Another library's (or the parser's own) V2 plugin layer: no identity is read through the V3 class."""
    FakeTrt.misviewed.clear()
    network = FakeNetwork([FakeTrt.ILayer("nms", FakeTrt.LayerType.PLUGIN_V2, object())])
    assert trt.network_layers(FakeTrt, network) == [
        {"layer": "nms", "type": "PLUGIN_V2", "plugin": None, "version": None, "namespace": None}]
    assert FakeTrt.misviewed == []


@pytest.fixture
def fake_engine_tools(monkeypatch, tmp_path, fake_plugin_library):
    """build_engine with Polygraphy's loaders and TensorRT faked: the 'parsed' network is settable."""
    import onnx
    from onnx import helper
    from polygraphy.backend import trt as poly

    state = {"network": None, "built": 0}
    class FakeTensorRT(FakeTrt):
        __version__ = "10.14-fake"

    monkeypatch.setattr(trt, "require_engine_tools", lambda: (FakeTensorRT, fake_plugin_library))

    class Profile(dict):
        def add(self, name, *shapes):
            self[name] = shapes

    def build(network, config=None, save_timing_cache=None):
        def call():
            state["built"] += 1
            return b"engine-bytes"
        return call

    monkeypatch.setattr(poly, "Profile", Profile)
    monkeypatch.setattr(poly, "CreateConfig", lambda **kw: kw)
    monkeypatch.setattr(poly, "NetworkFromOnnxPath",
                        lambda path, **kw: (lambda: ("builder", state["network"], "parser")))
    monkeypatch.setattr(poly, "LoadPlugins", lambda plugins, obj: obj)
    monkeypatch.setattr(poly, "EngineBytesFromNetwork", build)
    nodes = [helper.make_node("NeighborhoodAttention", ["x", "x", "x"], ["y"], name="na0", domain="attn_export"),
             helper.make_node("BlockSparseAttention", ["y"], ["z"], name="bsa0", domain="attn_export")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 8, 2, 4])],
                              [helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [1, 8, 2, 4])])
    onnx_path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph), onnx_path)
    return state, onnx_path


def test_engine_build_without_plugin_layers_fails_with_exit_3(fake_engine_tools, tmp_path):
    state, onnx_path = fake_engine_tools
    state["network"] = FakeNetwork([FakeTrt.ILayer("na0/MatMul", "LayerType.MATRIX_MULTIPLY"),
                                    FakeTrt.ILayer("bsa0/Gather", "LayerType.GATHER")])
    profile = {"x": trt.ShapeRange((1, 8, 2, 4), (1, 8, 2, 4), (1, 8, 2, 4))}
    # Every op of the registry has a plugin now: both nodes must have become plugin layers.
    with pytest.raises(AttnExportError, match=r"1 of 1 NeighborhoodAttention nodes \('na0'\); "
                                              r"1 of 1 BlockSparseAttention nodes \('bsa0'\) of model.onnx") as info:
        trt.build_engine(onnx_path, tmp_path / "model.engine", profile, meta_path=tmp_path / "engine.json")
    assert info.value.exit_code == 3
    assert state["built"] == 0 and not (tmp_path / "model.engine").exists() and not (tmp_path / "engine.json").exists()


def test_engine_json_lists_the_plugin_layers(fake_engine_tools, tmp_path):
    state, onnx_path = fake_engine_tools
    state["network"] = FakeNetwork([
        FakeTrt.ILayer("na0", FakeTrt.LayerType.PLUGIN_V3, FakePlugin("NeighborhoodAttention", "attn_export")),
        FakeTrt.ILayer("bsa0", FakeTrt.LayerType.PLUGIN_V3, FakePlugin("BlockSparseAttention", "attn_export"))])
    profile = {"x": trt.ShapeRange((1, 8, 2, 4), (1, 8, 2, 4), (1, 8, 2, 4))}
    meta = trt.build_engine(onnx_path, tmp_path / "model.engine", profile, meta_path=tmp_path / "engine.json")
    layers = [na_layer("na0"), na_layer("bsa0", plugin="BlockSparseAttention")]
    assert meta["plugin_layers"] == layers
    assert json.loads((tmp_path / "engine.json").read_text())["plugin_layers"] == layers
    assert state["built"] == 1
