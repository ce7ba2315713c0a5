"""The engine path without TensorRT: clean exit-3 errors and nothing written; the optimization
profile rules; the plugin-library lookup; `plugins build` preconditions."""

from __future__ import annotations

import sys
import types

import pytest

from attn_export import native, trt
from attn_export.errors import AttnExportError

from test_cli import SMALL, assert_one_line_error, run


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
