"""Failures inside the libraries we drive (torch.export, torch.onnx, onnx, ONNX Runtime) and failures no step
expected: each becomes one line naming the step and the library's own message, exit 2, nothing written; --debug
adds the traceback and keeps the exit code. Each test injects a failure at one step of a real export."""

from __future__ import annotations

import onnx
import onnxruntime
import pytest
import torch

from attn_export import onnx_export
from attn_export.steps import checks

from helpers import SMALL, assert_one_line_error, run


def _raise(exc: BaseException):
    def fail(*_args, **_kwargs):
        raise exc

    return fail


def _trace_fails(monkeypatch):
    monkeypatch.setattr(torch.export, "export", _raise(RuntimeError("injected trace failure\nsecond line")))


def _translation_fails(monkeypatch):
    table = onnx_export.custom_translation_table()
    broken = {op: _raise(ValueError("injected translation failure")) for op in table}
    monkeypatch.setattr(onnx_export, "custom_translation_table", lambda: broken)


def _checker_fails(monkeypatch):
    error = onnx.shape_inference.InferenceError("[ShapeInferenceError] (op_type:Squeeze) injected checker failure")
    monkeypatch.setattr(onnx.checker, "check_model", _raise(error))


def _onnxruntime_fails(monkeypatch):
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail

    monkeypatch.setattr(onnxruntime, "InferenceSession", _raise(Fail("injected ONNX Runtime failure")))


def _unexpected_failure(monkeypatch):
    monkeypatch.setattr(checks, "export_summary", _raise(KeyError("injected")))


STEPS = {
    "torch.export": (_trace_fails, ["torch.export (tracing the model", "injected trace failure"]),
    "torch.onnx": (_translation_fails, ["torch.onnx (translating the traced graph", "injected translation failure"]),
    "onnx": (_checker_fails, ["onnx.checker", "(onnx InferenceError)", "injected checker failure"]),
    "onnxruntime": (_onnxruntime_fails, ["running the models on the check inputs",
                                         "(ONNX Runtime Fail)", "injected ONNX Runtime failure"]),
    "unexpected": (_unexpected_failure, ["unexpected failure in attn-export (KeyError)"]),
}


@pytest.mark.parametrize("step", list(STEPS))
def test_a_failure_at_each_step_is_one_line_exit_2_and_nothing_written(tmp_path, monkeypatch, step):
    inject, fragments = STEPS[step]
    inject(monkeypatch)
    out = tmp_path / "out"
    result = run(SMALL, "-o", out)
    assert_one_line_error(result, 2, fragments[0])
    line = next(ln for ln in result.stderr.splitlines() if ln.startswith("error:"))
    for fragment in fragments[1:]:
        assert fragment in line, line
    assert "second line" not in result.stderr
    assert not out.exists() or not any(out.iterdir())


def test_debug_adds_the_traceback_and_keeps_the_exit_code(tmp_path, monkeypatch):
    _checker_fails(monkeypatch)
    result = run(SMALL, "-o", tmp_path / "out", "--debug")
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert "Traceback" in result.stderr and "injected checker failure" in result.stderr
    assert result.stderr.rstrip().splitlines()[-1].startswith("error: onnx.checker")


def test_debug_keeps_exit_2_for_bad_input(tmp_path):
    result = run("zoo:no-such-model", "-o", tmp_path / "out", "--debug")
    assert result.exit_code == 2, (result.exit_code, result.output)


@pytest.mark.parametrize("message, hinted", [
    ("injected trace failure", False),
    ("Constraints violated (batch)! The values of batch must always be related", True),
])
def test_the_static_shapes_hint_only_where_a_dynamic_dimension_is_the_cause(tmp_path, monkeypatch, message, hinted):
    monkeypatch.setattr(torch.export, "export", _raise(RuntimeError(message)))
    result = run(SMALL, "-o", tmp_path / "out")  # its batch is dynamic
    assert_one_line_error(result, 2, message.split("!")[0])
    assert ("export with --static-batch / --static-spatial" in result.stderr) == hinted, result.stderr
