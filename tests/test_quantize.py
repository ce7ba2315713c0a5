"""Explicit quantization: the Q/DQ follows TensorRT's rules (placement, axis, zero points, block
sizes, dtypes), the custom attention node is untouched, the result runs in plain ONNX Runtime close to
fp32, calibration data sources and every bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from attn_export.calib import qdq, quantize
from attn_export.calib.qdq import QuantOptions
from attn_export.errors import AttnExportError
from attn_export.onnx_export import export
from attn_export.registry import DOMAIN

from helpers import Small, assert_one_line_error, run


@pytest.fixture(scope="module")
def small_onnx(tmp_path_factory):
    torch.manual_seed(0)
    model = Small().eval()
    x = torch.randn(1, 3, 8, 8)
    paths = {}
    for opset in (18, 21):
        path = tmp_path_factory.mktemp("q") / f"small{opset}.onnx"
        export(model, (x,), path, dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, input_names=["x"], opset=opset)
        paths[opset] = path
    return model, paths


def feeds(count=16, seed=0):
    rng = np.random.default_rng(seed)
    return ({"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(count))


def producers(model):
    return {o: n for n in model.graph.node for o in n.output}


def init_map(model):
    return {i.name: i for i in model.graph.initializer}


def run_model(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_int8_placement_axes_and_zero_points(small_onnx):
    _, paths = small_onnx
    float_model = onnx.load(paths[18])
    result = quantize(float_model, feeds(), "int8", "max")
    model = result.model
    made, inits = producers(model), init_map(model)
    targets = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm", "Conv")]
    assert len(targets) >= 4  # conv, qkv, proj, head
    for node in targets:
        act = made[node.input[0]]
        assert act.op_type == "DequantizeLinear" and made[act.input[0]].op_type == "QuantizeLinear"
        scale, zp = inits[act.input[1]], inits[act.input[2]]
        assert list(scale.dims) == [] and scale.data_type == TensorProto.FLOAT  # per tensor
        assert zp.data_type == TensorProto.INT8 and numpy_helper.to_array(zp) == 0
        wdq = made[node.input[1]]
        assert wdq.op_type == "DequantizeLinear"  # weights: int8 initializer -> DQ, per output channel
        w = numpy_helper.to_array(inits[wdq.input[0]])
        assert w.dtype == np.int8 and w.min() >= -127 and w.max() <= 127
        axis = helper.get_attribute_value(next(a for a in wdq.attribute if a.name == "axis"))
        if node.op_type == "Conv":
            expected_axis = 0
        elif node.op_type == "Gemm":
            trans_b = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "transB"), 0)
            expected_axis = 0 if trans_b else 1
        else:
            expected_axis = w.ndim - 1
        assert axis == expected_axis, node.name
        scales = numpy_helper.to_array(inits[wdq.input[1]])
        assert scales.shape == (w.shape[axis],)
        assert not numpy_helper.to_array(inits[wdq.input[2]]).any()
    # The attention node keeps its float inputs, attributes and local functions.
    attention = [n for n in model.graph.node if n.domain == DOMAIN]
    before = [n for n in float_model.graph.node if n.domain == DOMAIN]
    assert [n.attribute for n in attention] == [n.attribute for n in before]
    assert all(made[i].op_type != "DequantizeLinear" for n in attention for i in n.input if i in made)
    assert [f.name for f in model.functions] == [f.name for f in float_model.functions]
    # Every quantized tensor is listed with its scale and method.
    kinds = {(t.kind, t.name) for t in result.tensors}
    assert sum(k == "weight" for k, _ in kinds) == len({n.input[1] for n in targets})
    assert all(t.method == "max" for t in result.tensors if t.kind == "activation")


def test_int8_weights_dequantize_to_the_originals(small_onnx):
    _, paths = small_onnx
    float_model = onnx.load(paths[18])
    originals = {i.name: numpy_helper.to_array(i) for i in float_model.graph.initializer}
    model = quantize(float_model, feeds(), "int8").model
    inits = init_map(model)
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0].endswith("_quantized") and node.input[0] in inits:
            name = node.input[0][: -len("_quantized")]
            if name not in originals:
                continue
            q = numpy_helper.to_array(inits[node.input[0]]).astype(np.float32)
            scale = numpy_helper.to_array(inits[node.input[1]])
            axis = helper.get_attribute_value(node.attribute[0])
            shape = [1] * q.ndim
            shape[axis] = -1
            np.testing.assert_allclose(q * scale.reshape(shape), originals[name], atol=float(scale.max()) / 2 + 1e-7)


def test_int8_runs_in_onnxruntime_close_to_fp32(small_onnx):
    torch_model, paths = small_onnx
    model = quantize(onnx.load(paths[18]), feeds(64), "int8").model
    x = np.random.default_rng(9).standard_normal((3, 3, 8, 8)).astype(np.float32)
    ref = torch_model(torch.from_numpy(x)).detach().numpy()
    out = run_model(model, x)
    cosine = float((ref * out).sum() / np.linalg.norm(ref) / np.linalg.norm(out))
    assert cosine > 0.99 and not np.allclose(out, ref, atol=1e-6)  # quantized: close, not identical


@pytest.mark.parametrize("block", [128, 16])
def test_int4_blocks_along_the_input_dimension(small_onnx, block):
    torch_model, paths = small_onnx
    model = quantize(onnx.load(paths[21]), None, "int4", int4_block=block).model
    assert not any(n.op_type == "QuantizeLinear" for n in model.graph.node)  # weight-only
    made, inits = producers(model), init_map(model)
    targets = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm")]
    assert targets and not any(made.get(n.input[1]) is None for n in targets)
    for node in targets:
        dq = made[node.input[1]]
        attrs = {a.name: helper.get_attribute_value(a) for a in dq.attribute}
        assert attrs["block_size"] == block
        w = inits[dq.input[0]]
        assert w.data_type == TensorProto.INT4
        values = numpy_helper.to_array(w)
        assert values.min() >= -7 and values.max() <= 7
        zp = inits[dq.input[2]]
        assert zp.data_type == TensorProto.INT4 and not numpy_helper.to_array(zp).any()
        scale = numpy_helper.to_array(inits[dq.input[1]])
        k_axis = attrs["axis"]
        trans_b = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "transB"), 0)
        assert k_axis == (1 if node.op_type == "Gemm" and trans_b else 0)  # the input (reduction) dim
        assert scale.shape[k_axis] == -(-values.shape[k_axis] // block)
        assert scale.shape[1 - k_axis] == values.shape[1 - k_axis]
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    assert conv.input[1] in inits  # Conv stays float under INT4
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    ref = torch_model(torch.from_numpy(x)).detach().numpy()
    out = run_model(model, x)
    assert float((ref * out).sum() / np.linalg.norm(ref) / np.linalg.norm(out)) > 0.98


def test_exclude_keeps_nodes_and_weights_float(small_onnx):
    _, paths = small_onnx
    model = onnx.load(paths[18])
    head = next(n for n in model.graph.node if n.op_type in ("Gemm", "MatMul") and "head" in n.input[1])
    result = quantize(model, feeds(), "int8", exclude=["*head*"])
    names = {t.name for t in result.tensors}
    assert not any("head" in n for n in names)
    kept = next(n for n in result.model.graph.node if n.op_type == head.op_type and "head" in "".join(n.input))
    assert kept.input[1] in init_map(result.model)


def test_int4_needs_opset_21(small_onnx):
    _, paths = small_onnx
    with pytest.raises(AttnExportError, match="opset >= 21"):
        quantize(onnx.load(paths[18]), None, "int4")


@pytest.mark.parametrize("bad, fragment", [
    (lambda: iter([]), "calibration data is empty"),
    (lambda: iter([{"y": np.zeros((1, 3, 8, 8), np.float32)}]), "sample 0 has inputs ['y']"),
    (lambda: iter([{"x": np.zeros((1, 3, 8, 8), np.float64)}]), "'x' is float64; the model takes float32"),
    (lambda: iter([{"x": np.zeros((1, 3, 9, 8), np.float32)}]), "axis 2 must be 8"),
    (lambda: iter([{"x": np.zeros((3, 8, 8), np.float32)}]), "has shape [3, 8, 8]"),
    (lambda: iter([{"x": np.ones((1, 3, 8, 8), np.float32)}, {"x": np.full((1, 3, 8, 8), np.nan, np.float32)}]),
     "sample 1: 'x' contains NaN"),
    (lambda: iter([{"x": np.full((1, 3, 8, 8), np.inf, np.float32)}]), "sample 0: 'x' contains Inf"),
    (lambda: iter([np.zeros(3)]), "sample 0 is a ndarray"),
])
def test_bad_calibration_data(small_onnx, bad, fragment):
    _, paths = small_onnx
    with pytest.raises(AttnExportError) as info:
        quantize(onnx.load(paths[18]), bad(), "int8")
    assert fragment in str(info.value)


def test_unknown_method_and_bad_options(small_onnx):
    _, paths = small_onnx
    with pytest.raises(AttnExportError, match="unknown calibration method 'minmax'"):
        quantize(onnx.load(paths[18]), feeds(), "int8", "minmax")
    with pytest.raises(AttnExportError, match="--int4-block 100"):
        QuantOptions("int4", int4_block=100).validate()


def test_nothing_to_quantize():
    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    with pytest.raises(AttnExportError, match="nothing to quantize: the model has no MatMul, Gemm, Conv"):
        quantize(model, feeds(), "int8")


# ------------------------------------------------------------------------------------------ data sources


def test_calibration_sources(small_onnx, tmp_path):
    from attn_export.calib import data

    _, paths = small_onnx
    infos = data.input_infos(onnx.load(paths[18]))
    stack = np.random.default_rng(0).standard_normal((5, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "c.npz", x=stack)
    np.save(tmp_path / "c.npy", stack)
    (tmp_path / "loader.py").write_text(
        "import numpy as np\n\ndef load_data():\n"
        "    for i in range(4):\n        yield {'x': np.full((1, 3, 8, 8), float(i), np.float32)}\n")
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image

    for i in range(3):
        Image.fromarray(np.full((12, 10, 3), 40 * i, np.uint8)).save(images / f"{i}.png")
    got = {spec: list(data.from_spec(spec, infos).feeds) for spec in
           (str(tmp_path / "c.npz"), str(tmp_path / "c.npy"), f"{tmp_path / 'loader.py'}:load_data", str(images))}
    assert [f["x"].shape for f in got[str(tmp_path / "c.npz")]] == [(1, 3, 8, 8)] * 5
    np.testing.assert_array_equal(got[str(tmp_path / "c.npy")][3]["x"][0], stack[3])
    assert [float(f["x"].max()) for f in got[f"{tmp_path / 'loader.py'}:load_data"]] == [0.0, 1.0, 2.0, 3.0]
    image_feeds = got[str(images)]
    assert len(image_feeds) == 3 and image_feeds[2]["x"].shape == (1, 3, 8, 8)  # resized to the input
    assert float(image_feeds[2]["x"].max()) == pytest.approx(80.0)  # raw pixels
    unit = list(data.from_spec(str(images), infos, "unit").feeds)
    assert float(unit[2]["x"].max()) == pytest.approx(80 / 255)


def test_bad_calibration_sources(small_onnx, tmp_path):
    from attn_export.calib import data

    _, paths = small_onnx
    infos = data.input_infos(onnx.load(paths[18]))
    np.savez(tmp_path / "wrong.npz", images=np.zeros((2, 3, 8, 8), np.float32))
    cases = [(str(tmp_path / "missing.npz"), "does not exist"), (str(tmp_path / "wrong.npz"), "holds ['images']"),
             (str(tmp_path / "nothing.txt"), "does not exist"), (str(tmp_path), "holds no images")]
    for spec, fragment in cases:
        with pytest.raises(AttnExportError, match=None) as info:
            list(data.from_spec(spec, infos).feeds)
        assert fragment in str(info.value), (spec, str(info.value))


def test_calibration_streams_its_data():
    """Peak memory does not grow with the number of samples: 64 vs 1024 samples of 1 MB each."""
    script = """
import resource, sys, numpy as np, onnx
from onnx import TensorProto, helper, numpy_helper
from attn_export.calib import quantize
w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32), "w")
graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4096, 64])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4096, 64])], initializer=[w])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
n = int(sys.argv[1])
rng = np.random.default_rng(1)
feeds = ({"x": rng.standard_normal((1, 4096, 64)).astype(np.float32)} for _ in range(n))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
quantize(model, feeds, "int8", "entropy", samples=n)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""
    grown = [float(subprocess.run([sys.executable, "-c", script, str(n)], capture_output=True, text=True,
                                  check=True).stdout) for n in (64, 1024)]
    assert grown[1] - grown[0] < 64, grown  # keeping 1024 samples would take 1 GB


# ------------------------------------------------------------------------------------------ CLI


def test_cli_int8_writes_the_quantized_model_and_report(tmp_path):
    out = tmp_path / "out"
    result = run("zoo:na1d-causal", "-o", out, "--int8", "--calib-samples", "8", "--calib-method", "percentile")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    quant = report["quantization"]
    assert quant["onnx"] == "model.int8.onnx" and quant["method"] == "percentile" and quant["samples"] == 8
    assert quant["parity"]["status"] == "pass" and quant["warning"] is None
    assert {t["kind"] for t in quant["tensors"]} == {"activation", "weight"}
    assert all("scale" in t and t["method"] for t in quant["tensors"])
    assert "cosine" in result.output and "int8 thresholds" in result.output
    onnx.checker.check_model(str(out / "model.int8.onnx"), full_check=True)


def test_cli_random_calibration_warns_loudly(tmp_path):
    (tmp_path / "factory.py").write_text("from helpers import Small\n\ndef build():\n    return Small()\n")
    torch.manual_seed(0)
    torch.save(Small().state_dict(), tmp_path / "small.pt")
    out = tmp_path / "out"
    result = run(tmp_path / "small.pt", "--factory", f"{tmp_path / 'factory.py'}:build", "--input-shape", "x=1x3x8x8",
                 "-o", out, "--int8", "--calib-samples", "4")
    assert result.exit_code == 0, result.output
    assert "WARNING: no --calib-data: calibrating on seeded RANDOM inputs" in result.stderr
    assert "RANDOM" in json.loads((out / "report.json").read_text())["quantization"]["warning"]


@pytest.mark.parametrize("args, fragment", [
    (["--int8", "--int4"], "exclusive"),
    (["--int4", "--opset", "18"], "--int4 needs --opset 21"),
    (["--int8", "--calib-method", "kl"], "unknown calibration method 'kl'"),
    (["--int8", "--calib-samples", "0"], "--calib-samples 0"),
    (["--calib-data", "x.npz"], "add --int8 or --int4"),
    (["--int8", "--calib-data", "missing.npz"], "does not exist"),
])
def test_cli_bad_quantization_input_is_exit_2(args, fragment, tmp_path):
    out = tmp_path / "out"
    result = run("zoo:na1d-causal", "-o", out, *args)
    assert_one_line_error(result, 2, fragment)
    assert not out.exists()


def test_writer_inserts_nodes_in_topological_order(small_onnx):
    _, paths = small_onnx
    model = quantize(onnx.load(paths[18]), feeds(), "int8").model
    seen = {i.name for i in model.graph.input} | {i.name for i in model.graph.initializer}
    for node in model.graph.node:
        assert all(not name or name in seen for name in node.input), node.name
        seen.update(node.output)
    assert qdq.MODES == ("int8", "int4")


def test_check_command_uses_the_quantized_criterion_and_catches_a_broken_scale(tmp_path):
    out = tmp_path / "out"
    assert run("zoo:na1d-causal", "-o", out, "--int8", "--calib-samples", "4", "--no-check").exit_code == 0
    good = run("check", "zoo:na1d-causal", out / "model.int8.onnx", "--report", tmp_path / "good.json")
    assert good.exit_code == 0, good.output
    assert "int8 thresholds" in good.output
    model = onnx.load(str(out / "model.int8.onnx"))
    weight_scales = [i for i in model.graph.initializer if i.name.endswith("_scale") and len(i.dims) == 1]
    broken = numpy_helper.to_array(weight_scales[0]) * 8.0  # one layer's weights dequantize 8x too large
    weight_scales[0].CopyFrom(numpy_helper.from_array(broken.astype(np.float32), weight_scales[0].name))
    onnx.save(model, str(tmp_path / "broken.onnx"))
    bad = run("check", "zoo:na1d-causal", tmp_path / "broken.onnx", "--report", tmp_path / "bad.json")
    assert bad.exit_code == 1, bad.output
    assert json.loads((tmp_path / "bad.json").read_text())["status"] == "fail"


def test_calibration_cache_reproduces_the_scales(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    assert run("zoo:na1d-causal", "-o", first, "--int8", "--calib-samples", "6", "--no-check").exit_code == 0
    cache = json.loads((first / "calib_cache.json").read_text())
    assert cache["samples"] == 6 and cache["method"] == "max" and cache["amax"]
    result = run("zoo:na1d-causal", "-o", second, "--int8", "--calib-cache", first / "calib_cache.json")
    assert result.exit_code == 0, result.output

    def scales(folder):
        model = onnx.load(str(folder / "model.int8.onnx"))
        return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer if i.name.endswith("_scale")}

    a, b = scales(first), scales(second)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    report = json.loads((second / "report.json").read_text())["quantization"]
    assert report["calibration_data"].startswith("calibration cache")


def test_bad_calibration_cache_is_exit_2(tmp_path):
    cache = tmp_path / "cache.json"
    cache.write_text(json.dumps({"format": "attn-export calibration cache 1", "amax": {"elsewhere": 1.0}}))
    (tmp_path / "junk.json").write_text("{not json")
    cases = [(["--int8", "--calib-cache", cache], "has no amax for"),
             (["--int8", "--calib-cache", tmp_path / "junk.json"], "is not a JSON calibration cache"),
             (["--int8", "--calib-cache", tmp_path / "none.json"], "does not exist"),
             (["--int4", "--calib-cache", cache], "add --int8")]
    for args, fragment in cases:
        out = tmp_path / "out"
        assert_one_line_error(run("zoo:na1d-causal", "-o", out, *args), 2, fragment)
        assert not out.exists()


def test_export_fails_and_says_so_when_the_quantized_check_fails(tmp_path):
    out = tmp_path / "out"
    result = run("zoo:na1d-causal", "-o", out, "--int8", "--calib-samples", "4", "--quant-min-cosine", "1.5")
    assert result.exit_code == 1, result.output
    assert "int8 parity FAILED" in result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "fail" and report["quantization"]["parity"]["status"] == "fail"
    assert all(c["passed"] for c in report["comparisons"])  # the float check itself passed


def test_int4_reads_no_calibration_data(tmp_path):
    out = tmp_path / "out"
    assert run("zoo:na1d-causal", "-o", out, "--int4").exit_code == 0
    quant = json.loads((out / "report.json").read_text())["quantization"]
    assert quant["calibration_data"] == "none (INT4 is weight-only)" and quant["warning"] is None
    assert not (out / "calib_cache.json").exists()


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantized_parity_judges_the_model_as_tensorrt_runs_it(small_onnx, mode, tmp_path):
    """The gate evaluates Q/DQ exactly (as TensorRT does), not through ONNX Runtime's CPU integer kernels,
    whose results depend on the CPU (AVX2 saturation; INT4 MatMulNBits quantizes activations)."""
    from attn_export.quality import QUANT_THRESHOLDS, check_quantized, quant_metrics

    torch_model, paths = small_onnx
    path = tmp_path / f"small.{mode}.onnx"
    qdq.save(quantize(onnx.load(paths[21 if mode == "int4" else 18]), feeds(), mode).model, path)
    x = np.random.default_rng(4).standard_normal((2, 3, 8, 8)).astype(np.float32)
    report = check_quantized(torch_model, path, [{"x": x}], mode)
    # Every graph optimization off: QuantizeLinear, DequantizeLinear and float MatMul/Conv exactly as written.
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    exact = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    with torch.inference_mode():
        ref = torch_model(torch.from_numpy(x)).numpy()
    want = quant_metrics("y", 0, ref, exact, QUANT_THRESHOLDS[mode])
    (got,) = [r for c, r in report.outputs if c == f"onnxruntime-{mode}"]
    assert got.mean_abs_error == pytest.approx(want.mean_abs_error, rel=1e-5, abs=1e-7)
    assert got.max_abs_error == pytest.approx(want.max_abs_error, rel=1e-5, abs=1e-7)
    data = report.to_dict()
    assert data["runtime"][f"onnxruntime-{mode}"]["session_config"] == {"session.disable_quant_qdq": "1"}
    # ONNX Runtime's fused CPU kernels are shown, labelled with the CPU, and never decide the result.
    fused = f"onnxruntime-{mode}-fused"
    assert report.informational == [fused] and data["runtime"][fused]["cpu_isa"]
    assert all(not o["gating"] for o in data["outputs"] if o["candidate"] == fused)
    assert f"{fused}: informational, not a gate" in report.table()
    for _, result in report.outputs:
        result.passed = result.passed if _ != fused else False  # a failing informational row ...
    assert report.passed  # ... does not fail the check
