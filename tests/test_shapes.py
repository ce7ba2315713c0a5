"""Engine shape profiles without TensorRT: --shapes / --profile parsing, the checks against the model and the ONNX
file, the profiles an engine is built with, and the CLI's one-line errors with nothing written."""

from __future__ import annotations

import json

import pytest
import torch

from attn_export import shapes
from attn_export.errors import AttnExportError
from attn_export.shapes import ShapeRange

from helpers import SMALL, assert_one_line_error, build_tiny, run

NAT = "images=1x3x64x64:8x3x224x224:32x3x384x384"


def test_parse_polygraphy_convention():
    name, shape_range = shapes.parse_entry(NAT)
    assert name == "images"
    assert shape_range == ShapeRange((1, 3, 64, 64), (8, 3, 224, 224), (32, 3, 384, 384))
    assert shape_range.label() == "1x3x64x64:8x3x224x224:32x3x384x384"
    assert shape_range.covers((4, 3, 100, 300)) and not shape_range.covers((33, 3, 64, 64))
    assert not shape_range.covers((4, 3, 100))


@pytest.mark.parametrize("text, fragment", [
    ("images=1x3x64x64:8x3x224x224", "is not NAME=MIN:OPT:MAX"),
    ("images=1x3:2x3:0x3", "dims must be positive"),
    ("images=2x3:1x3:4x3", "MIN > OPT on axis 0 (2, 1, 4)"),
    ("images=1x3:4x3:2x3", "OPT > MAX on axis 0 (1, 4, 2)"),
    ("images=1x3:2x3x4:4x3", "MIN, OPT and MAX have 2, 3 and 2 dims"),
])
def test_parse_errors(text, fragment):
    with pytest.raises(AttnExportError) as info:
        shapes.parse_entry(text)
    assert fragment in str(info.value)


def test_profiles_from_shapes_and_profile_groups():
    profiles = shapes.parse_profiles([NAT, "mask=1x5:1x5:1x5"], ["images=1x3x64x64:1x3x64x64:2x3x64x64"])
    assert len(profiles) == 2 and set(profiles[0]) == {"images", "mask"} and set(profiles[1]) == {"images"}
    with pytest.raises(AttnExportError, match="given twice in one profile"):
        shapes.parse_profiles([], [f"{NAT},{NAT}"])
    with pytest.raises(AttnExportError, match="--profile is empty"):
        shapes.parse_profiles([], [","])


def test_check_against_the_onnx_declaration():
    inputs = {"images": ["batch", 3, "height", "width"]}
    [profile] = shapes.parse_profiles([NAT])
    shapes.check_against_model([profile], inputs, "model.onnx")  # dynamic dims vary, the static one stays 3
    with pytest.raises(AttnExportError, match="names input 'pixels', but model.onnx takes: images"):
        shapes.check_against_model(shapes.parse_profiles(["pixels=1x3:1x3:1x3"]), inputs, "model.onnx")
    with pytest.raises(AttnExportError, match="has 4 dims in model.onnx but the range 1x3x64:1x3x64:1x3x64 has 3"):
        shapes.check_against_model(shapes.parse_profiles(["images=1x3x64:1x3x64:1x3x64"]), inputs, "model.onnx")
    with pytest.raises(AttnExportError, match=r"axis 1 of 'images' is static \(3\) in model.onnx but the range "
                                              r"gives 1..3"):
        shapes.check_against_model(shapes.parse_profiles(["images=1x1x64x64:1x3x64x64:1x3x64x64"]), inputs,
                                   "model.onnx")
    static = {"images": [1, 3, 64, 64]}
    with pytest.raises(AttnExportError, match="axis 0 of 'images' is static"):
        shapes.check_against_model([profile], static, "model.onnx")


def test_declared_size_multiples_are_checked():
    from attn_export.models import zoo

    steps = zoo.entry("nat-tiny").spatial
    inputs = {"images": ["batch", 3, "h", "w"]}
    shapes.check_against_model(shapes.parse_profiles([NAT]), inputs, "zoo:nat-tiny", steps)
    with pytest.raises(AttnExportError, match="axis 2 of 'images' = 100, but zoo:nat-tiny takes multiples of 16 "
                                              "from 64 to 1024"):
        shapes.check_against_model(shapes.parse_profiles(["images=1x3x64x64:1x3x100x64:1x3x128x64"]), inputs,
                                   "zoo:nat-tiny", steps)


def test_engine_profiles_fill_unnamed_inputs_with_the_default_range():
    onnx_inputs = {"x": ["batch", 3, "h", "w"], "mask": ["batch", 5]}
    seen = [{"x": (1, 3, 32, 32), "mask": (1, 5)}, {"x": (2, 3, 48, 32), "mask": (2, 5)}]
    default = shapes.engine_profiles(onnx_inputs, [], seen, max_batch=8)
    assert default == [{"x": ShapeRange((1, 3, 32, 32), (1, 3, 32, 32), (8, 3, 48, 32)),
                        "mask": ShapeRange((1, 5), (1, 5), (8, 5))}]
    user = shapes.parse_profiles(["x=1x3x16x16:4x3x32x32:16x3x64x64"], ["mask=1x5:2x5:4x5"])
    built = shapes.engine_profiles(onnx_inputs, user, seen, max_batch=8)
    assert [list(p) for p in built] == [["x", "mask"], ["x", "mask"]]  # every input, in the file's order
    assert built[0]["x"] == user[0]["x"] and built[0]["mask"] == default[0]["mask"]
    assert built[1]["x"] == default[0]["x"] and built[1]["mask"] == ShapeRange((1, 5), (2, 5), (4, 5))
    assert shapes.batch_range(built, onnx_inputs) == (16, [1, 2, 4])
    assert shapes.batch_range(built, {"x": [1, 3, "h", "w"]}) is None  # a static batch: nothing to batch on


def test_check_inputs_must_fit_the_first_profile():
    [profile] = shapes.parse_profiles(["x=1x8:2x8:2x8"])
    shapes.check_covers(profile, [{"x": (1, 8)}, {"x": (2, 8)}])
    with pytest.raises(AttnExportError, match="input set 1 with x=3x8, outside the engine's first profile "
                                              "x=1x8:2x8:2x8"):
        shapes.check_covers(profile, [{"x": (1, 8)}, {"x": (3, 8)}])


# --------------------------------------------------------------------------------------------- the CLI


@pytest.mark.parametrize("args, fragment", [
    (["--shapes", "tokens=1x64:2x64"], "is not NAME=MIN:OPT:MAX"),
    (["--shapes", "ids=1x64:1x64:1x64"], "--shapes names input 'ids', but zoo:na1d-causal takes: tokens"),
    (["--shapes", "tokens=2x64:1x64:4x64"], "MIN > OPT on axis 0"),
    (["--shapes", "tokens=1x64x1:1x64x1:1x64x1"], "input 'tokens' has 2 dims in zoo:na1d-causal but the range"),
    (["--shapes", "tokens=1x64:1x64:1x64", "--static-batch", "--static-spatial"], "axis 1 of 'tokens' is static"),
    (["--profile", "tokens=1x64:2x64:4x64,tokens=1x64:2x64:4x64"], "given twice in one profile"),
])
def test_bad_shapes_are_one_line_exit_2_before_any_work(tmp_path, args, fragment):
    result = run(SMALL, "-o", tmp_path / "out", *args)
    assert_one_line_error(result, 2, fragment)
    assert "export to ONNX" not in result.stderr  # refused before the export
    assert not list(tmp_path.iterdir())


def test_shapes_are_checked_against_the_exported_file(tmp_path):
    """A .pt2 keeps dynamic shapes we cannot read ahead: the file decides, and nothing is left behind."""
    program = torch.export.export(build_tiny(), (torch.randn(2, 12, 16),))  # static batch
    torch.export.save(program, tmp_path / "tiny.pt2")
    result = run(tmp_path / "tiny.pt2", "-o", tmp_path / "out", "--shapes", "x=1x12x16:2x12x16:4x12x16",
                 "--junit", tmp_path / "out" / "junit.xml", "--triton-repo", tmp_path / "triton")
    assert_one_line_error(result, 2, "axis 0 of 'x' is static (2) in model.onnx but the range gives 1..4")
    assert "export to ONNX" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.pt2"]


def test_shapes_without_tensorrt_are_validated_and_shape_the_triton_entry(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    result = run(SMALL, "-o", tmp_path / "out", "--no-check", "--shapes", "tokens=1x64:4x128:8x256",
                 "--triton-repo", tmp_path / "triton")
    assert result.exit_code == 0, result.output
    assert "no TensorRT engine was built here" in result.stderr
    config = (tmp_path / "triton" / "na1d-causal" / "config.pbtxt").read_text()
    assert "max_batch_size: 8" in config and "preferred_batch_size: [ 4 ]" in config


def test_engine_json_records_profiles_precision_version_and_library_hash(tmp_path, monkeypatch):
    """build_engine with TensorRT faked: every profile reaches the builder config and engine.json."""
    import hashlib

    import onnx
    from onnx import helper
    from polygraphy.backend import trt as poly

    from attn_export import trt

    library = tmp_path / "libattnx_trt_plugins.so"
    library.write_bytes(b"\x7fELF-plugins")

    class FakeTensorRT:
        __version__ = "10.14-fake"

    class Profile(dict):
        def add(self, name, *ranges):
            self[name] = ranges

    configs = []
    monkeypatch.setattr(trt, "require_engine_tools", lambda: (FakeTensorRT, library))
    # The file has one of our nodes (so the library is needed and hashed), served by a plugin layer.
    monkeypatch.setattr(trt, "network_layers", lambda _trt, network: [
        {"layer": "na0", "type": "PLUGIN_V3", "plugin": "NeighborhoodAttention", "version": "1",
         "namespace": "attn_export"}])
    monkeypatch.setattr(poly, "Profile", Profile)
    monkeypatch.setattr(poly, "CreateConfig", lambda **kw: configs.append(kw) or kw)
    monkeypatch.setattr(poly, "NetworkFromOnnxPath", lambda path, **kw: (lambda: ("builder", "network", "parser")))
    monkeypatch.setattr(poly, "LoadPlugins", lambda plugins, obj: obj)
    monkeypatch.setattr(poly, "EngineBytesFromNetwork", lambda network, **kw: (lambda: b"engine"))
    nodes = [helper.make_node("Identity", ["x"], ["y"]),
             helper.make_node("NeighborhoodAttention", ["y", "y", "y"], ["z"], name="na0", domain="attn_export")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT16, ["batch", 8])],
                              [helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT16, ["batch", 8])])
    onnx.save(helper.make_model(graph), tmp_path / "model.onnx")
    profiles = shapes.parse_profiles(["x=1x8:4x8:16x8"], ["x=16x8:32x8:64x8"])
    meta = trt.build_engine(tmp_path / "model.onnx", tmp_path / "model.engine", profiles,
                            meta_path=tmp_path / "engine.json")
    assert [dict(p) for p in configs[0]["profiles"]] == [{"x": ((1, 8), (4, 8), (16, 8))},
                                                         {"x": ((16, 8), (32, 8), (64, 8))}]
    written = json.loads((tmp_path / "engine.json").read_text())
    assert written == meta
    assert written["profiles"] == [{"x": {"min": [1, 8], "opt": [4, 8], "max": [16, 8]}},
                                   {"x": {"min": [16, 8], "opt": [32, 8], "max": [64, 8]}}]
    assert written["precision"] == "fp16"  # read from the file: the network is strongly typed
    assert written["tensorrt"] == "10.14-fake"
    assert written["plugin_library_sha256"] == hashlib.sha256(library.read_bytes()).hexdigest()
