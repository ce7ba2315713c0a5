"""--dtype fp16 / bf16: the exported file is in that precision (attention nodes included), the check compares it with
the fp32 PyTorch model under the precision's printed tolerances, and what ONNX Runtime's CPU provider cannot run is
refused plainly (exit 3, nothing written), never passed."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from attn_export import defaults, precision
from attn_export.errors import AttnExportError
from attn_export.parity import Tolerances

from helpers import SMALL, assert_one_line_error, run

FP16 = onnx.TensorProto.FLOAT16


def _value_types(proto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(proto)
    return {v.name: v.type.tensor_type.elem_type
            for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}


@pytest.fixture(scope="module")
def fp16_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("fp16") / "out"
    result = run(SMALL, "-o", out, "--dtype", "fp16")
    return out, result


def test_fp16_export_is_fp16_through_the_attention_nodes(fp16_export):
    out, result = fp16_export
    assert result.exit_code == 0, result.output
    proto = onnx.load(out / "model.onnx")
    assert {o.type.tensor_type.elem_type for o in proto.graph.output} == {FP16}
    assert precision.onnx_precision(out / "model.onnx") == "fp16"
    types = _value_types(proto)
    nodes = [n for n in proto.graph.node if n.domain == "attn_export"]
    assert nodes, "the attention must stay one custom node"
    for node in nodes:  # q, k, v and the output in fp16: the node's type constraint T, not a cast around it
        assert {types[name] for name in [*node.input[:3], *node.output]} == {FP16}, node.name
    floats = [i for i in proto.graph.initializer if i.data_type in (onnx.TensorProto.FLOAT, FP16)]
    assert floats and all(i.data_type == FP16 for i in floats if len(i.dims) == 2)  # the Linear weights


def test_fp16_check_uses_the_printed_precision_tolerances(fp16_export):
    out, result = fp16_export
    tol = defaults.DTYPE_TOLERANCES["fp16"]
    assert f"precision: fp16 file against the fp32 reference; tolerances: atol {tol:g} x mean |reference| per " \
           f"output, rtol {tol:g}" in result.output
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "pass" and report["precision"] == "fp16" and report["export"]["precision"] == "fp16"
    for comparison in report["comparisons"]:
        stats = comparison["outputs"]["output"]
        assert stats["atol"] == pytest.approx(tol * np.mean([c["outputs"]["output"]["reference_mean_abs"]
                                                             for c in report["comparisons"]]), rel=1e-6)
        assert stats["rtol"] == tol
        assert 0 < stats["max_abs_error"] < stats["atol"]  # fp16 rounding is visible, and within bounds
    assert report["inputs"]["tokens"]["dtype"] == "int64"  # integer inputs stay as they are


def test_check_command_reads_the_precision_from_the_file_and_fails_a_broken_one(fp16_export, tmp_path):
    out, _ = fp16_export
    ok = run("check", SMALL, out / "model.onnx", "--report", tmp_path / "ok.json")
    assert ok.exit_code == 0, ok.output
    assert json.loads((tmp_path / "ok.json").read_text())["precision"] == "fp16"
    # fp32 tolerances on the fp16 file: its rounding error is far above 1e-4
    strict = run("check", SMALL, out / "model.onnx", "--atol", "1e-4", "--rtol", "1e-4")
    assert strict.exit_code == 1, strict.output
    proto = onnx.load(out / "model.onnx")
    weight = max(proto.graph.initializer, key=lambda t: len(t.raw_data))
    array = onnx.numpy_helper.to_array(weight).copy()
    array.flat[::5] += np.float16(0.25)
    weight.CopyFrom(onnx.numpy_helper.from_array(array, weight.name))
    onnx.save(proto, tmp_path / "broken.onnx")
    broken = run("check", SMALL, tmp_path / "broken.onnx")
    assert broken.exit_code == 1 and "FAIL" in broken.output


def test_scale_relative_atol():
    tolerances = precision.tolerances("fp16", Tolerances(None, None, {"logits": 0.5}))
    assert tolerances.atol_scale and tolerances.for_output("output", scale=3.0) == pytest.approx((0.03, 0.01))
    assert tolerances.for_output("logits", scale=3.0) == (0.5, 0.01)  # a per-output atol stays absolute
    given = precision.tolerances("fp16", Tolerances(1e-3, None))
    assert not given.atol_scale and given.for_output("output", scale=3.0) == (1e-3, 0.01)
    fp32 = precision.tolerances("fp32", Tolerances(None, None))
    assert (fp32.atol, fp32.rtol, fp32.atol_scale) == (defaults.ATOL, defaults.RTOL, False)


def test_bf16_is_exported_at_opset_22_and_refused_where_onnx_runtime_cannot_run_it(tmp_path):
    out = tmp_path / "out"
    result = run(SMALL, "-o", out, "--dtype", "bf16", "--junit", out / "junit.xml", "--summary", out / "summary.md",
                 "--triton-repo", tmp_path / "triton")
    if result.exit_code == 0:  # an ONNX Runtime with bfloat16 CPU kernels: then the check must really run
        assert json.loads((out / "report.json").read_text())["precision"] == "bf16"
        pytest.skip("this ONNX Runtime runs bfloat16 on the CPU: the check ran and passed")
    assert_one_line_error(result, 3, "the bf16 file model.onnx cannot be checked here: ONNX Runtime's CPU provider "
                                     "cannot run it (Could not find an implementation for")
    assert "--no-check" in result.stderr
    assert not list(tmp_path.iterdir()), "a refused check must leave no file (report, JUnit, summary, Triton entry)"
    unchecked = run(SMALL, "-o", out, "--dtype", "bf16", "--no-check")
    assert unchecked.exit_code == 0, unchecked.output
    proto = onnx.load(out / "model.onnx")
    assert precision.onnx_precision(out / "model.onnx") == "bf16"
    assert next(o.version for o in proto.opset_import if o.domain == "") >= defaults.BF16_MIN_OPSET
    checked = run("check", SMALL, out / "model.onnx")
    assert_one_line_error(checked, 3, "cannot be checked here")
    assert "--engine ENGINE" in checked.stderr


@pytest.mark.parametrize("args, fragment", [
    (["--dtype", "fp8"], "--dtype fp8 is not one of fp32, fp16, bf16"),
    (["--dtype", "fp16", "--int8"], "--dtype fp16 and --int8 are exclusive"),
    (["--dtype", "bf16", "--opset", "21"], "--dtype bf16 needs --opset 22 or newer"),
    (["--dtype", "fp16", "--paro"], "--dtype fp16 does not apply to PARO exports"),
])
def test_bad_precision_flags(tmp_path, args, fragment):
    assert_one_line_error(run(SMALL, "-o", tmp_path / "out", *args), 2, fragment)
    assert not (tmp_path / "out").exists()


def test_skipping_onnx_runtime_needs_another_candidate(tmp_path):
    from attn_export import export
    from attn_export.models import zoo
    from attn_export.parity import check_parity

    model, examples = zoo.create("na1d-causal")
    export(model, examples, tmp_path / "m.onnx", input_names=["tokens"], output_names=["output"])
    feeds = [{"tokens": examples[0].numpy()}]
    with pytest.raises(AttnExportError, match="nothing can run .* here: no bfloat16 kernels"):
        check_parity(model, tmp_path / "m.onnx", feeds, skip_onnxruntime="no bfloat16 kernels")
