"""The parity check itself: it must fail on every kind of mismatch and write strict JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from attn_export import AttnExportError, export
from attn_export.models import NeighborhoodAttention1D
from attn_export.parity import Tolerances, check_parity


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = NeighborhoodAttention1D(16, 2, 5, is_causal=True).eval()
    path = tmp_path_factory.mktemp("parity") / "m.onnx"
    export(model, (torch.randn(1, 12, 16),), path, input_names=["x"], output_names=["y"])
    feeds = [{"x": np.random.default_rng(0).standard_normal((1, 12, 16)).astype(np.float32)}]
    return model, path, feeds


class Shifted(torch.nn.Module):
    def __init__(self, model, fn):
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self, x):
        return self.fn(self.model(x))


def test_matching_model_passes_with_small_errors(exported):
    model, path, feeds = exported
    report = check_parity(model, path, feeds)
    assert report.passed
    (out,) = report.comparisons[0].outputs
    assert 0 <= out.max_abs_error < 1e-5 and out.note == ""


@pytest.mark.parametrize("fn, note", [
    (lambda y: y + 1e-3, ""),
    (lambda y: y[:, :-1], "shape (1, 11, 16) vs (1, 12, 16)"),
    (lambda y: y * float("nan"), "non-finite values"),
])
def test_every_kind_of_mismatch_fails_and_the_report_is_strict_json(exported, fn, note):
    model, path, feeds = exported
    report = check_parity(Shifted(model, fn), path, feeds)
    assert not report.passed
    (out,) = report.comparisons[0].outputs
    assert out.note == note and not out.passed
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["status"] == "fail"
    assert "FAIL" in report.table()


def test_per_output_tolerance_decides(exported):
    model, path, feeds = exported
    shifted = Shifted(model, lambda y: y + 1e-3)
    assert check_parity(shifted, path, feeds, Tolerances(atol=2e-3, rtol=0)).passed
    assert check_parity(shifted, path, feeds, Tolerances(atol=0, rtol=0, per_output_atol={"y": 2e-3})).passed
    assert not check_parity(shifted, path, feeds, Tolerances(atol=1, rtol=1, per_output_atol={"y": 5e-4},
                                                             per_output_rtol={"y": 0})).passed


def test_bad_feeds_are_rejected(exported):
    model, path, _ = exported
    with pytest.raises(AttnExportError, match="needs at least one input set"):
        check_parity(model, path, [])
    with pytest.raises(AttnExportError, match=r"has inputs \['z'\]; the ONNX model needs \['x'\]"):
        check_parity(model, path, [{"z": np.zeros((1, 12, 16), np.float32)}])
    with pytest.raises(AttnExportError, match="running the models on the check inputs failed"):
        check_parity(model, path, [{"x": np.zeros((1, 12, 8), np.float32)}])
    with pytest.raises(AttnExportError, match=r"unknown output\(s\) \['logits'\]"):
        check_parity(model, path, [{"x": np.zeros((1, 12, 16), np.float32)}], Tolerances(per_output_atol={"logits": 1}))


def test_table_names_the_reference_input_shapes_scale_and_overall_verdict(exported):
    model, path, feeds = exported
    report = check_parity(model, path, feeds)
    table = report.table()
    assert table.splitlines()[0].startswith("reference: pytorch-cpu = ")
    assert "input shape" in table and "x=1x12x16" in table
    assert table.splitlines()[-1] == "overall: PASS (1 of 1 outputs within tolerance)"
    (out,) = report.comparisons[0].outputs
    ref = model(torch.from_numpy(feeds[0]["x"])).detach().numpy()
    assert out.reference_mean_abs == pytest.approx(float(np.abs(ref).mean()), rel=1e-6)
    assert out.reference_std == pytest.approx(float(ref.std()), rel=1e-5)
    data = report.to_dict()
    assert data["comparisons"][0]["input_shapes"] == "x=1x12x16" and data["warnings"] == []
    assert data["reference"]["runner"] == "pytorch-cpu"
    failed = check_parity(Shifted(model, lambda y: y + 1e-3), path, feeds).table()
    assert failed.splitlines()[-1] == "overall: FAIL (0 of 1 outputs within tolerance)"


def test_vacuous_references_are_warned_about(exported):
    model, path, _ = exported
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.standard_normal((1, 12, 16)).astype(np.float32)} for _ in range(2)]
    zeroed = Shifted(model, lambda y: y * 0.0)  # e.g. a residual branch whose last norm starts at zero
    report = check_parity(zeroed, path, feeds, Tolerances(atol=10, rtol=10))
    assert report.passed  # the tolerances are loose: only the warning tells the user
    assert any("is the constant 0 on every check input" in w for w in report.warnings), report.warnings
    assert report.to_dict()["warnings"] == report.warnings
    ignores_input = Shifted(model, lambda y: torch.ones_like(y).cumsum(-1))
    warnings = check_parity(ignores_input, path, feeds, Tolerances(atol=100, rtol=100)).warnings
    assert any("identical for input sets 0 and 1" in w for w in warnings), warnings
    assert check_parity(model, path, feeds).warnings == []


class ChannelsLast(torch.nn.Module):
    """A Conv2d whose output leaves permuted (many vision models end so): a non-contiguous reference output."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        return self.conv(x).permute(0, 2, 3, 1)


def test_non_contiguous_outputs_and_inputs_are_compared(tmp_path):
    torch.manual_seed(0)
    model = ChannelsLast().eval()
    path = tmp_path / "perm.onnx"
    export(model, (torch.randn(1, 3, 8, 8),), path, input_names=["x"], output_names=["y"])
    # a transposed user array as the input, too: both reach Polygraphy, which views raw buffers
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32).transpose(0, 1, 3, 2)
    assert not x.flags["C_CONTIGUOUS"]
    report = check_parity(model, path, [{"x": x}])
    assert report.passed
    (out,) = report.comparisons[0].outputs
    assert out.max_abs_error < 1e-5
    # and a wrong model still fails through the same path
    assert not check_parity(Shifted(model, lambda y: y + 1e-2), path, [{"x": x}]).passed
