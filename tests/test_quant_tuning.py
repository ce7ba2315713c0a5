"""Per-layer sensitivity, --auto-exclude and --smooth on a model with one deliberately fragile layer: the input of
its second Linear has one outlier channel, so a per-tensor INT8 scale leaves the other channels a few levels."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from attn_export.calib.smooth import smooth
from attn_export.parity import onnxruntime_session

from helpers import assert_one_line_error, factory_checkpoint, run

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

FRAGILE = """
import torch

class Fragile(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.first = torch.nn.Linear(32, 64)
        self.second = torch.nn.Linear(64, 64)  # its input: channel 7 is 300x the rest
        self.third = torch.nn.Linear(64, 10)
        gain = torch.ones(64)
        gain[7] = 300.0
        self.register_buffer("gain", gain)

    def forward(self, x):
        h = torch.relu(self.first(x)) * self.gain
        return self.third(torch.relu(self.second(h)))

def build():
    torch.manual_seed(0)
    model = Fragile().eval()
    with torch.no_grad():
        model.second.weight[:, 7] /= 300.0  # the outlier channel carries no more weight than the others
    return model, (torch.randn(1, 16, 32),)
"""


@pytest.fixture(scope="module")
def fragile(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fragile")
    checkpoint, factory = factory_checkpoint(folder, FRAGILE)
    np.save(folder / "calib.npy", np.random.default_rng(0).standard_normal((64, 16, 32)).astype(np.float32))
    return folder, [checkpoint, "--factory", factory, "--int8", "--calib-data", folder / "calib.npy"]


def test_sensitivity_names_the_fragile_layer_first(fragile):
    folder, args = fragile
    result = run(*args, "-o", folder / "sens", "--sensitivity")
    assert result.exit_code in (0, 1), result.output
    quant = json.loads((folder / "sens" / "report.json").read_text())["quantization"]
    layers = quant["sensitivity"]
    graph_order = [n.name for n in onnx.load(str(folder / "sens" / "model.onnx")).graph.node
                   if n.op_type in ("MatMul", "Gemm")]
    assert len(layers) == 3 and layers[0]["layer"] == graph_order[1]  # self.second, the fragile one
    assert layers[0]["relative_error"] > 3 * layers[1]["relative_error"]
    assert "quantization sensitivity" in result.output


def test_auto_exclude_keeps_the_fragile_layer_in_float_until_the_target_is_met(fragile):
    folder, args = fragile
    plain = run(*args, "-o", folder / "plain")
    worst_plain = _worst(folder / "plain")
    result = run(*args, "-o", folder / "auto", "--auto-exclude", "0.999")
    assert result.exit_code == 0, result.output
    quant = json.loads((folder / "auto" / "report.json").read_text())["quantization"]
    kept = quant["auto_exclude"]["kept_float"]
    assert kept == [quant["sensitivity"][0]["layer"]] and quant["auto_exclude"]["worst_cosine"] >= 0.999
    assert worst_plain < 0.999, plain.output  # without the fallback the target is missed
    model = onnx.load(str(folder / "auto" / "model.int8.onnx"))
    fragile_node = next(n for n in model.graph.node if n.name == kept[0])
    assert not any(i.endswith("_dequantized") for i in fragile_node.input)  # no Q/DQ in front of it
    assert f"kept in float: {kept[0]}" in result.output


def test_smoothing_recovers_the_fragile_layer(fragile):
    folder, args = fragile
    run(*args, "-o", folder / "raw", "--no-check")
    result = run(*args, "-o", folder / "smooth", "--smooth", "0.5")
    assert result.exit_code == 0, result.output
    quant = json.loads((folder / "smooth" / "report.json").read_text())["quantization"]
    (entry,) = [s for s in quant["smoothing"] if s["range_ratio_before"] > 100]
    assert entry["range_ratio_after"] < entry["range_ratio_before"] / 10
    x = np.random.default_rng(5).standard_normal((8, 16, 32)).astype(np.float32)
    reference = onnxruntime_session(folder / "raw" / "model.onnx").run(None, {"x": x})[0]
    errors = {name: _relative_error(reference, onnxruntime_session(folder / name / "model.int8.onnx",
                                                                    exact_qdq=True).run(None, {"x": x})[0])
              for name in ("raw", "smooth")}
    assert errors["smooth"] < errors["raw"] / 3, errors


def test_smoothing_keeps_the_float_model_exact(fragile):
    folder, _ = fragile
    run(*fragile[1], "-o", folder / "exact", "--no-check")
    model = onnx.load(str(folder / "exact" / "model.onnx"))
    data = np.random.default_rng(6).standard_normal((4, 16, 32)).astype(np.float32)
    smoothed, report = smooth(model, [{"x": data}], 0.5, 4)
    assert report
    want = onnxruntime_session(model.SerializeToString()).run(None, {"x": data})[0]
    got = onnxruntime_session(smoothed.SerializeToString()).run(None, {"x": data})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("args, fragment", [
    (["--sensitivity"], "--sensitivity applies to quantization"),
    (["--int8", "--auto-exclude", "1.5"], "must lie in (0, 1]"),
    (["--int4", "--smooth", "0.5"], "use it with --int8"),
    (["--int8", "--smooth", "2"], "must lie in [0, 1]"),
    (["--int8", "--sensitivity", "--no-check"], "drop --no-check"),
    (["--int8", "--auto-exclude", "0.99"], "--auto-exclude keeps layers in float until the check on real data"),
])
def test_bad_tuning_flags_are_exit_2(args, fragment, tmp_path):
    out = tmp_path / "out"
    assert_one_line_error(run("zoo:na1d-causal", "-o", out, *args), 2, fragment)
    assert not out.exists()


def _worst(folder) -> float:
    report = json.loads((folder / "report.json").read_text())["quantization"]["parity"]
    return min(s["worst_cosine"] for s in report["samples"] if s["candidate"] == "onnxruntime-int8")


def _relative_error(reference, got) -> float:
    return float(np.abs(reference - got).mean() / np.abs(reference).mean())
