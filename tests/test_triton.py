"""--triton-repo: the model repository entry parses as Triton's ModelConfig (tritonclient's model_config_pb2) and
matches the ONNX file's inputs and outputs; the TensorRT entry (engine, plugin library, the backend-config line) is
built from TensorRT-free data; a run replaces an entry whole and leaves the rest of the repository alone."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from attn_export import shapes, triton
from attn_export.errors import AttnExportError
from attn_export.onnx_utils import graph_inputs, graph_outputs

from helpers import SMALL, assert_one_line_error, run

model_config = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                   reason="tritonclient[grpc] (the dev extra) has Triton's model configuration")
from google.protobuf import text_format  # noqa: E402  (protobuf comes with tritonclient[grpc])

TYPES = {np.dtype("float32"): "TYPE_FP32", np.dtype("float16"): "TYPE_FP16", np.dtype("int64"): "TYPE_INT64"}


def parse(path):
    return text_format.Parse(path.read_text(), model_config.ModelConfig())


def matches_onnx(config, onnx_path, batched: bool):
    type_name = model_config.DataType.Name
    for tensors, infos in ((config.input, graph_inputs(onnx_path)), (config.output, graph_outputs(onnx_path))):
        assert [t.name for t in tensors] == [i.name for i in infos]
        for tensor, info in zip(tensors, infos):
            assert type_name(tensor.data_type) == TYPES[info.dtype]
            dims = [d if isinstance(d, int) else -1 for d in info.shape]
            assert list(tensor.dims) == (dims[1:] if batched else dims)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("triton")
    result = run(SMALL, "-o", root / "out", "--no-check", "--triton-repo", root / "repo")
    assert result.exit_code == 0, result.output
    return root


def test_onnx_runtime_entry_parses_and_matches_the_onnx_file(exported):
    entry = exported / "repo" / "na1d-causal"
    assert sorted(p.name for p in entry.iterdir()) == ["1", "config.pbtxt", "serve.sh"]
    config = parse(entry / "config.pbtxt")
    assert (config.name, config.platform, config.default_model_filename) == ("na1d-causal", "onnxruntime_onnx",
                                                                            "model.onnx")
    assert config.max_batch_size == 16  # --max-batch: no engine profile to follow
    assert config.HasField("dynamic_batching")
    matches_onnx(config, exported / "out" / "model.onnx", batched=True)
    assert (entry / "1" / "model.onnx").read_bytes() == (exported / "out" / "model.onnx").read_bytes()
    serve = (entry / "serve.sh").read_text()
    assert 'exec tritonserver --model-repository="$(dirname "$here")"' in serve and "plugins" not in serve


def test_static_batch_has_no_batching(tmp_path):
    result = run(SMALL, "-o", tmp_path / "out", "--no-check", "--static-batch", "--triton-repo", tmp_path / "repo",
                 "--triton-name", "tokens_static")
    assert result.exit_code == 0, result.output
    config = parse(tmp_path / "repo" / "tokens_static" / "config.pbtxt")
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    matches_onnx(config, tmp_path / "out" / "model.onnx", batched=False)


def test_tensorrt_entry_from_profiles(tmp_path):
    """The engine entry without TensorRT: a fake plan and plugin library, the profiles of --shapes / --profile."""
    import onnx.helper as h

    graph = h.make_graph([h.make_node("Identity", ["x"], ["y"])], "g",
                         [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT16, ["batch", 3, "h", 64])],
                         [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT16, ["batch", 3, "h", 64])])
    onnx.save(h.make_model(graph), tmp_path / "model.onnx")
    (tmp_path / "model.engine").write_bytes(b"plan")
    (tmp_path / "libattnx_trt_plugins.so").write_bytes(b"\x7fELF")
    profiles = shapes.parse_profiles(["x=1x3x32x64:8x3x32x64:32x3x32x64"], ["x=1x3x32x64:4x3x32x64:64x3x32x64"])
    entry = triton.entry_for(tmp_path / "model.onnx", "seg", "engine", profiles)
    folder = tmp_path / "repo" / "seg"
    line = triton.write_entry(folder, entry, tmp_path / "model.engine", tmp_path / "libattnx_trt_plugins.so")
    config = parse(folder / "config.pbtxt")
    assert (config.platform, config.default_model_filename) == ("tensorrt_plan", "model.plan")
    assert config.max_batch_size == 64  # the largest batch of any profile
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]  # the profiles' opt batches
    assert list(config.input[0].dims) == [3, 32, 64]  # h is dynamic in the file but pinned by every profile
    assert model_config.DataType.Name(config.input[0].data_type) == "TYPE_FP16"
    assert model_config.ModelInstanceGroup.Kind.Name(config.instance_group[0].kind) == "KIND_GPU"
    assert (folder / "1" / "model.plan").read_bytes() == b"plan"
    assert (folder / "plugins" / "libattnx_trt_plugins.so").read_bytes() == b"\x7fELF"
    assert line == ('exec tritonserver --model-repository="$(dirname "$here")" '
                    '--backend-config=tensorrt,plugins="$here/plugins/libattnx_trt_plugins.so" "$@"')
    assert line in (folder / "serve.sh").read_text() and "LD_PRELOAD" in (folder / "serve.sh").read_text()
    with pytest.raises(AttnExportError, match="needs the plugin library"):
        triton.write_entry(tmp_path / "other", entry, tmp_path / "model.engine", None)
    # An attention-lowered engine (--lowering attention) runs on TensorRT's own layers: no library, no plugins flag.
    line = triton.write_entry(tmp_path / "lowered", entry, tmp_path / "model.engine", None, needs_plugins=False)
    assert "plugins=" not in line and not (tmp_path / "lowered" / "plugins").exists()
    assert (tmp_path / "lowered" / "1" / "model.plan").read_bytes() == b"plan"
    assert "no plugin library" in (tmp_path / "lowered" / "serve.sh").read_text()


def test_a_run_replaces_its_entry_whole_and_leaves_other_models(tmp_path):
    repo = tmp_path / "repo"
    assert run(SMALL, "-o", tmp_path / "out", "--no-check", "--triton-repo", repo).exit_code == 0
    (repo / "na1d-causal" / "2").mkdir()
    (repo / "na1d-causal" / "2" / "model.onnx").write_text("a stale version")
    (repo / "other").mkdir()
    (repo / "other" / "config.pbtxt").write_text('name: "other"')
    assert run(SMALL, "-o", tmp_path / "out", "--no-check", "--triton-repo", repo).exit_code == 0
    assert sorted(p.name for p in (repo / "na1d-causal").iterdir()) == ["1", "config.pbtxt", "serve.sh"]
    assert (repo / "other" / "config.pbtxt").read_text() == 'name: "other"'
    assert sorted(p.name for p in repo.iterdir()) == ["na1d-causal", "other"]  # no staging folder left


def test_bad_triton_paths(tmp_path):
    (tmp_path / "file").write_text("x")
    assert_one_line_error(run(SMALL, "-o", tmp_path / "out", "--triton-repo", tmp_path / "file"), 2,
                          "--triton-repo " + str(tmp_path / "file") + " is a file; pass a folder")
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "na1d-causal").write_text("x")
    assert_one_line_error(run(SMALL, "-o", tmp_path / "out", "--triton-repo", tmp_path / "repo"), 2,
                          "is a file; remove it or pass --triton-name")
    assert_one_line_error(run(SMALL, "-o", tmp_path / "out", "--triton-repo", tmp_path / "repo", "--triton-name",
                              "a/b"), 2, "--triton-name 'a/b' must be letters")
    assert not (tmp_path / "out").exists() and (tmp_path / "file").read_text() == "x"


def test_model_names():
    assert triton.model_name("zoo:nat-tiny") == "nat-tiny"
    assert triton.model_name("/data/ckpt v2.pt") == "ckpt_v2"
    assert triton.model_name("<MyNet>") == "MyNet"
    assert triton.model_name("zoo:x", "custom.name") == "custom.name"
