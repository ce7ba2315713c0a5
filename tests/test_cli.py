"""The CLI end to end, and every bad input: one line on stderr, the right exit code, nothing written."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from helpers import SMALL, TinyModel, assert_one_line_error, build_tiny, console, factory_checkpoint, run  # noqa: F401

# ------------------------------------------------------------------------------------------- happy paths


def test_console_script_exports_and_reports_pass(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "attn_export.cli", SMALL, "-o", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "[2/3] export to ONNX:" in proc.stderr and "[3/3] check parity" in proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "pass"
    assert report["model"] == SMALL
    assert set(report["versions"]) >= {"torch", "onnx", "onnxruntime", "polygraphy"}
    assert report["command"][1:3] == [SMALL, "-o"]
    for comparison in report["comparisons"]:
        for out_stats in comparison["outputs"].values():
            assert {"max_abs_error", "max_rel_error", "atol", "rtol", "passed"} <= set(out_stats)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    tokens = np.random.default_rng(0).integers(0, 256, size=(2, 64))
    assert session.run(None, {"tokens": tokens})[0].shape == (2, 64, 256)
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "reference.npz", "report.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "staging folder left behind"


def test_check_command_passes_and_fails_with_exit_1_on_a_mismatch(tmp_path):
    assert run(SMALL, "-o", tmp_path).exit_code == 0
    assert (tmp_path / "report.json").exists()
    assert run(SMALL, "-o", tmp_path, "--no-check").exit_code == 0
    assert not (tmp_path / "report.json").exists(), "a stale report.json must not describe the new model"
    ok = run("check", SMALL, tmp_path / "model.onnx", "--report", tmp_path / "check.json")
    assert ok.exit_code == 0, ok.output
    assert json.loads((tmp_path / "check.json").read_text())["status"] == "pass"
    # Break the ONNX weights: the check must notice.
    proto = onnx.load(tmp_path / "model.onnx")
    weight = max(proto.graph.initializer, key=lambda t: len(t.raw_data))
    arr = onnx.numpy_helper.to_array(weight).copy()
    arr.flat[::7] += 0.5
    weight.CopyFrom(onnx.numpy_helper.from_array(arr, weight.name))
    onnx.save(proto, tmp_path / "broken.onnx")
    bad = run("check", SMALL, tmp_path / "broken.onnx", "--report", tmp_path / "bad.json")
    assert bad.exit_code == 1
    assert "FAIL" in bad.output
    assert json.loads((tmp_path / "bad.json").read_text())["status"] == "fail"


def test_tight_tolerance_makes_export_exit_1_but_keeps_complete_artifacts(tmp_path):
    result = run(SMALL, "-o", tmp_path, "--atol", "0", "--rtol", "output=0")
    assert result.exit_code == 1
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["status"] == "fail"
    assert report["comparisons"][0]["outputs"]["output"]["atol"] == 0.0
    onnx.checker.check_model(str(tmp_path / "model.onnx"))


@pytest.mark.parametrize("dynamic", [False, True])
def test_pt2_archive_keeps_its_own_dynamic_shapes(tmp_path, dynamic):
    model = build_tiny()
    shapes = {"x": {0: torch.export.Dim("batch", min=1, max=8)}} if dynamic else None
    program = torch.export.export(model, (torch.randn(2, 12, 16),), dynamic_shapes=shapes)
    torch.export.save(program, tmp_path / "tiny.pt2")
    result = run(tmp_path / "tiny.pt2", "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["status"] == "pass"
    assert report["inputs"]["x"]["shapes"] == ([[2, 12, 16], [3, 12, 16]] if dynamic else [[2, 12, 16]])


def test_checkpoint_with_factory_file_and_user_inputs(tmp_path):
    torch.save(build_tiny().state_dict(), tmp_path / "tiny.pt")
    (tmp_path / "factory.py").write_text(
        "from helpers import TinyModel\n\ndef build():\n    return TinyModel()\n")
    np.savez(tmp_path / "inputs.npz", x=np.random.default_rng(0).standard_normal((3, 10, 16)).astype(np.float32))
    result = run(tmp_path / "tiny.pt", "--factory", f"{tmp_path / 'factory.py'}:build",
                 "--input-shape", "x=1x10x16", "--inputs", tmp_path / "inputs.npz", "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["inputs"]["x"]["shapes"] == [[3, 10, 16]]
    assert report["inputs"]["x"]["source"].endswith("inputs.npz")


def test_pickled_module_only_with_trust_pickle(tmp_path):
    torch.save(build_tiny(), tmp_path / "whole.pt")
    refused = run(tmp_path / "whole.pt", "-o", tmp_path / "out", "--input-shape", "x=1x9x16")
    assert_one_line_error(refused, 2, "loading it runs arbitrary code: pass --trust-pickle")
    assert not (tmp_path / "out").exists()
    trusted = run(tmp_path / "whole.pt", "--trust-pickle", "-o", tmp_path / "out", "--input-shape", "x=1x9x16")
    assert trusted.exit_code == 0, trusted.output


def test_zoo_listing_and_help():
    listing = run("zoo")
    assert listing.exit_code == 0
    assert "nat-tiny" in listing.output and "images=1x3x64x64" in listing.output
    from attn_export.models import zoo

    rows = listing.output.splitlines()
    assert [row.split()[0] for row in rows] == zoo.names()
    # every description starts in one column, whatever the length of a model's input list (paro-dit-tiny's)
    starts = {row.index(zoo.entry(row.split()[0]).description) for row in rows}
    assert len(starts) == 1, rows
    helped = run("--help")
    assert helped.exit_code == 0 and "check" in helped.output and "zoo:nat-tiny" in helped.output
    assert "--dynamic-batch" in run("export", "--help").output


# ------------------------------------------------------------------------------------------- bad input


def test_missing_model_file(tmp_path):
    assert_one_line_error(run(tmp_path / "nope.pt", "-o", tmp_path / "out"), 2, "does not exist")
    assert not (tmp_path / "out").exists()


def test_corrupt_files(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"PK\x03\x04 not really a zip")
    assert_one_line_error(run(tmp_path / "bad.pt", "-o", tmp_path / "o"), 2, "cannot read")
    (tmp_path / "bad.pt2").write_bytes(b"garbage")
    assert_one_line_error(run(tmp_path / "bad.pt2", "-o", tmp_path / "o"), 2, "as a torch.export archive")
    good = tmp_path / "good.pt"
    torch.save(build_tiny().state_dict(), good)
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    factory = "helpers:build_tiny"
    assert_one_line_error(run(tmp_path / "cut.pt", "--factory", factory, "-o", tmp_path / "o"), 2, "cannot read")
    assert not (tmp_path / "o").exists()


def test_state_dict_without_factory_and_mismatched_checkpoint(tmp_path):
    torch.save(build_tiny().state_dict(), tmp_path / "sd.pt")
    assert_one_line_error(run(tmp_path / "sd.pt", "-o", tmp_path / "o"), 2, "pass --factory")
    torch.save({"other.weight": torch.zeros(2)}, tmp_path / "wrong.pt")
    assert_one_line_error(run(tmp_path / "wrong.pt", "--factory", "helpers:build_tiny", "-o", tmp_path / "o"),
                          2, "does not fit the model")
    assert_one_line_error(run(tmp_path / "sd.pt", "--factory", "no_such_module_xyz:build", "-o", tmp_path / "o"),
                          2, "cannot import no_such_module_xyz")


def test_factory_that_raises_and_inputs_the_model_rejects(tmp_path):
    (tmp_path / "factory.py").write_text("def build():\n    raise RuntimeError('no weights here')\n")
    torch.save(build_tiny().state_dict(), tmp_path / "sd.pt")
    factory = f"{tmp_path / 'factory.py'}:build"
    assert_one_line_error(run(tmp_path / "sd.pt", "--factory", factory, "-o", tmp_path / "o"),
                          2, "--factory " + str(tmp_path / "factory.py") + ":build failed: no weights here")
    result = run(tmp_path / "sd.pt", "--factory", "helpers:build_tiny", "--input-shape", "x=1x10x8",
                 "-o", tmp_path / "o")
    assert_one_line_error(result, 2, "running the model on inputs x=1x10x8 failed")
    assert not (tmp_path / "o").exists()


def test_unknown_zoo_name(tmp_path):
    assert_one_line_error(run("zoo:resnet", "-o", tmp_path / "o"), 2, "unknown zoo model 'resnet'; available:")


@pytest.mark.parametrize("shape, fragment", [
    ("images=1x3xAx64", "is not NAME=DIMS"),
    ("images=1x3x0x64", "is not NAME=DIMS"),
    ("pixels=1x3x64x64", "--input-shape names ['pixels']"),
    ("images=1x3x64", "has 3 dims; the model's input has 4"),
])
def test_bad_input_shape(tmp_path, shape, fragment):
    assert_one_line_error(run("zoo:nat-tiny", "--input-shape", shape, "-o", tmp_path / "o"), 2, fragment)
    assert not (tmp_path / "o").exists()


def test_invalid_attention_parameters_for_the_input(tmp_path):
    result = run("zoo:nat-tiny", "--input-shape", "images=1x3x16x16", "-o", tmp_path / "o")
    assert_one_line_error(result, 2, "layer 'stages.0.0.attn': neighborhood_attention: kernel_size*dilation=7*1=7 "
                                     "on axis 0 exceeds the axis length 4")
    assert not (tmp_path / "o").exists()
    assert not list(tmp_path.iterdir())


def test_output_path_that_is_a_file(tmp_path):
    (tmp_path / "taken").write_text("x")
    assert_one_line_error(run(SMALL, "-o", tmp_path / "taken"), 2, "is a file; pass a folder with -o")
    assert (tmp_path / "taken").read_text() == "x"


def test_bad_user_inputs_and_tolerances(tmp_path):
    np.savez(tmp_path / "wrong.npz", ids=np.zeros((1, 64), np.int64))
    assert_one_line_error(run(SMALL, "--inputs", tmp_path / "wrong.npz", "-o", tmp_path / "o"), 2,
                          "holds ['ids']; the model's inputs are ['tokens']")
    np.savez(tmp_path / "float.npz", tokens=np.zeros((1, 64), np.float32))
    assert_one_line_error(run(SMALL, "--inputs", tmp_path / "float.npz", "-o", tmp_path / "o"), 2,
                          "'tokens' is float32; the model takes int64")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    assert_one_line_error(run(SMALL, "--inputs", tmp_path / "junk.npz", "-o", tmp_path / "o"), 2,
                          "cannot read --inputs")
    assert_one_line_error(run(SMALL, "--atol", "tiny", "-o", tmp_path / "o"), 2, "--atol 'tiny' is not a number")
    assert_one_line_error(run(SMALL, "--atol", "logits=1e-3", "-o", tmp_path / "o"), 2,
                          "tolerance given for unknown output(s) ['logits']")
    assert_one_line_error(run(SMALL, "--opset", "11", "-o", tmp_path / "o"), 2,
                          "opset 11 is not supported; use one of 18 to 23")
    assert not (tmp_path / "o").exists()


def test_check_with_missing_or_invalid_onnx(tmp_path):
    assert_one_line_error(run("check", SMALL, tmp_path / "none.onnx"), 2, "does not exist")
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    assert_one_line_error(run("check", SMALL, tmp_path / "bad.onnx"), 2, "is not a valid ONNX model")


def test_refused_pickle_was_never_unpickled(tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump(Evil(), f)
    assert_one_line_error(run(tmp_path / "evil.pt", "-o", tmp_path / "o"), 2, "--trust-pickle")
    assert not marker.exists()


def test_static_export_and_inputs_the_onnx_model_rejects(tmp_path):
    result = run(SMALL, "--static-batch", "--static-spatial", "-o", tmp_path)
    assert result.exit_code == 0, result.output
    dims = onnx.load(tmp_path / "model.onnx").graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 128]
    report = json.loads((tmp_path / "report.json").read_text())
    assert len(report["comparisons"]) == 1  # a static batch is checked at its own size only
    np.savez(tmp_path / "short.npz", tokens=np.zeros((1, 64), np.int64))
    rejected = run("check", SMALL, tmp_path / "model.onnx", "--inputs", tmp_path / "short.npz")
    assert_one_line_error(rejected, 2, "running the models on the check inputs failed")


# ------------------------------------------------------------------------------------------- issue 13 defects


def test_module_entry_point_knows_every_command():
    proc = subprocess.run([sys.executable, "-m", "attn_export.cli", "plugins", "path"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode in (0, 3), proc.stderr
    assert proc.stdout.startswith("kernels: ") and "plugins: " in proc.stdout


def test_random_bytes_give_one_line_and_no_torch_traceback(tmp_path):
    (tmp_path / "junk.pt2").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    proc = console(tmp_path / "junk.pt2", "-o", tmp_path / "o")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "torch/export" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "not a zip archive" in errors[0], proc.stderr


def test_torchscript_files_are_named_and_refused(tmp_path):
    torch.jit.save(torch.jit.script(torch.nn.Linear(4, 2)), tmp_path / "scripted.pt")
    for extra in ([], ["--trust-pickle"], ["--factory", "helpers:build_tiny"]):
        result = run(tmp_path / "scripted.pt", "-o", tmp_path / "o", *extra)
        assert_one_line_error(result, 2, "is a TorchScript archive (torch.jit.save), which torch.export cannot trace")
    assert not (tmp_path / "o").exists()


def test_export_archives_are_recognised_by_content_not_name(tmp_path):
    program = torch.export.export(build_tiny(), (torch.randn(2, 12, 16),))
    torch.export.save(program, tmp_path / "program.pt2")
    (tmp_path / "program.pt2").rename(tmp_path / "model.pt")
    result = run(tmp_path / "model.pt", "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "out" / "report.json").read_text())["status"] == "pass"


def test_trust_pickle_imports_the_users_module_from_the_current_folder(tmp_path):
    (tmp_path / "mymodels.py").write_text(
        "import torch\n\nclass Doubler(torch.nn.Module):\n    def forward(self, x):\n        return 2 * x\n")
    code = ("import sys, torch; sys.path.insert(0, '.'); import mymodels; "
            "torch.save(mymodels.Doubler(), 'whole.pt')")
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = console("whole.pt", "--trust-pickle", "--input-shape", "x=1x4", "-o", "out", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "out" / "report.json").read_text())["status"] == "pass"


def test_dynamic_spatial_is_refused_where_it_cannot_apply(tmp_path):
    torch.save(build_tiny().state_dict(), tmp_path / "tiny.pt")
    result = run(tmp_path / "tiny.pt", "--factory", "helpers:build_tiny", "--input-shape", "x=1x10x16",
                 "--dynamic-spatial", "-o", tmp_path / "o")
    assert_one_line_error(result, 2, "--dynamic-spatial: ")
    assert "declares no dynamic spatial dims" in result.stderr
    program = torch.export.export(build_tiny(), (torch.randn(2, 12, 16),))
    torch.export.save(program, tmp_path / "tiny.pt2")
    assert_one_line_error(run(tmp_path / "tiny.pt2", "--static-spatial", "-o", tmp_path / "o"), 2,
                          "exported with the dynamic shapes it was saved with")
    assert not (tmp_path / "o").exists()
    ok = run(tmp_path / "tiny.pt", "--factory", "helpers:build_tiny", "--input-shape", "x=1x10x16",
             "--static-spatial", "-o", tmp_path / "o")
    assert ok.exit_code == 0, ok.output


def test_bad_calibration_data_fails_before_the_export(tmp_path):
    np.savez(tmp_path / "calib.npz", tokens=np.zeros((4, 128), np.float32))  # the model takes int64 tokens
    result = run(SMALL, "-o", tmp_path / "o", "--int8", "--calib-data", tmp_path / "calib.npz")
    assert_one_line_error(result, 2, "calibration sample 0: 'tokens' is float32; the model takes int64")
    assert "export to ONNX" not in result.stderr
    np.savez(tmp_path / "short.npz", tokens=np.zeros((4, 64, 2), np.int64))
    result = run(SMALL, "-o", tmp_path / "o", "--int8", "--calib-data", tmp_path / "short.npz")
    assert_one_line_error(result, 2, "'tokens' has shape [1, 64, 2]; the model takes 2 dims")
    assert not (tmp_path / "o").exists()


FLEX_MODEL = """
import torch
from torch.nn.attention.flex_attention import create_block_mask, flex_attention


def soft_cap(score, b, h, q_idx, kv_idx):
    return 20 * torch.tanh(score / 20)


class SlidingWindow(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = torch.nn.Linear(16, 48)

    def forward(self, x):
        q, k, v = self.qkv(x).reshape(x.shape[0], 32, 3, 2, 8).permute(2, 0, 3, 1, 4)
        mask = create_block_mask(lambda b, h, i, j: (i - j).abs() <= 4, None, None, 32, 32, device="cpu")
        return flex_attention(q, k, v, score_mod=soft_cap, block_mask=mask)


def build():
    return SlidingWindow(), (torch.randn(1, 32, 16),)
"""


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")
def test_unconvertible_flex_attention_calls_are_named_not_blamed_on_gradients(tmp_path):
    checkpoint, factory = factory_checkpoint(tmp_path, FLEX_MODEL, "flexmodel")
    result = run(checkpoint, "--factory", factory, "-o", tmp_path / "o")
    assert_one_line_error(result, 2, "flex_attention at flexmodel.py:18: its score_mod soft_cap is not additive")
    assert "backward" not in result.stderr
    assert not (tmp_path / "o").exists()


def test_parity_reference_falls_back_to_the_converted_model_and_says_why(tmp_path, monkeypatch):
    from attn_export import convert

    from helpers import GpuOnlyAttention, build_gpu_only

    converter = convert.Converter("gpu-only", lambda m: isinstance(m, GpuOnlyAttention), lambda m: m.inner)
    monkeypatch.setattr(convert, "CONVERTERS", (converter,))
    torch.save(build_gpu_only().state_dict(), tmp_path / "m.pt")
    result = run(tmp_path / "m.pt", "--factory", "helpers:build_gpu_only", "--input-shape", "x=1x10x16",
                 "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    reference = json.loads((tmp_path / "out" / "report.json").read_text())["reference"]
    assert reference["runner"] == "pytorch-converted"
    assert "the original cannot run here (this kernel needs a CUDA device)" in reference["model"]
    assert "pytorch-converted vs onnxruntime-cpu" in result.output
