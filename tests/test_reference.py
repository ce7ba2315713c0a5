"""Reference outputs as an artifact: every export writes OUTDIR/reference.npz (check inputs and the reference
model's outputs), and `attn-export check --reference FILE ONNX` judges a file without the PyTorch model, by the
criterion the file calls for."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from attn_export.reference import load

from helpers import assert_one_line_error, run

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "out"
    result = run("zoo:na1d-causal", "-o", out, "--int8", "--calib-samples", "8")
    assert result.exit_code == 0, result.output
    return out


def test_the_export_saves_its_check_inputs_and_reference_outputs(exported):
    saved = load(exported / "reference.npz")
    report = json.loads((exported / "report.json").read_text())
    assert report["reference_outputs"] == "reference.npz"
    assert [list(f["tokens"].shape) for f in saved.feeds] == [[1, 128], [2, 128], [1, 129]]
    assert saved.meta["reference"]["runner"] == "pytorch-cpu" and saved.meta["model"] == "zoo:na1d-causal"
    assert saved.meta["check_inputs"]["kind"] == "random" and saved.output_names == ["output"]


def test_check_against_the_reference_passes_the_exported_files(exported, tmp_path):
    float_check = run("check", "--reference", exported / "reference.npz", exported / "model.onnx",
                      "--report", tmp_path / "f.json")
    assert float_check.exit_code == 0, float_check.output
    assert json.loads((tmp_path / "f.json").read_text())["status"] == "pass"
    quant_check = run("check", "--reference", exported / "reference.npz", exported / "model.int8.onnx",
                      "--report", tmp_path / "q.json")
    assert quant_check.exit_code == 0, quant_check.output
    assert "int8 thresholds" in quant_check.output


def test_a_broken_file_fails_against_the_reference(exported, tmp_path):
    model = onnx.load(str(exported / "model.onnx"))
    weight = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    array = onnx.numpy_helper.to_array(weight).copy()
    array.flat[::5] += 0.5
    weight.CopyFrom(onnx.numpy_helper.from_array(array, weight.name))
    onnx.save(model, str(tmp_path / "broken.onnx"))
    result = run("check", "--reference", exported / "reference.npz", tmp_path / "broken.onnx")
    assert result.exit_code == 1, result.output


def test_bad_reference_use_is_one_line_exit_2(exported, tmp_path):
    ref = exported / "reference.npz"
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    cases = [
        (["check", "--reference", ref, "zoo:na1d-causal", exported / "model.onnx"], "--reference replaces MODEL"),
        (["check", "--reference", tmp_path / "none.npz", exported / "model.onnx"], "does not exist"),
        (["check", "--reference", tmp_path / "other.npz", exported / "model.onnx"], "is not an attn-export reference"),
        (["check", "--reference", ref, exported / "model.onnx", "--factory", "helpers:build_tiny"], "drop --factory"),
        (["check", "zoo:na1d-causal"], "check needs MODEL and ONNX"),
    ]
    for args, fragment in cases:
        assert_one_line_error(run(*args), 2, fragment)


def test_a_reference_from_another_export_is_refused(exported, tmp_path):
    other = tmp_path / "other"
    assert run("zoo:nat-tiny", "-o", other, "--no-check").exit_code == 0
    assert_one_line_error(run("check", "--reference", exported / "reference.npz", other / "model.onnx"), 2,
                          "belongs to another export")
