"""Option groups (attn_export.options): every flag declared once, validated before torch loads; the engine command."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from attn_export.options import GROUPS, BenchOptions, ExportOptions, ModelSource, WorkflowFlags

from helpers import SMALL, run

NO_TORCH = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == 'torch':
            raise ImportError('imported before the flags were valid: ' + name)
sys.meta_path.insert(0, Block())
from attn_export.cli import main
main({argv!r}, prog_name='attn-export')
"""


@pytest.mark.parametrize("argv, message", [
    (["zoo:nat-tiny", "--int8", "--int4"], "--int8 and --int4 are exclusive"),
    (["zoo:nat-tiny", "--int8", "--calib-method", "nope"], "nope"),
    (["zoo:nat-tiny", "--opset", "5"], "opset 5 is not supported"),
    (["zoo:nat-tiny", "--paro-density", "2"], "--paro-density 2.0 must lie in (0, 1]"),
    (["zoo:nat-tiny", "--atol", "x"], "--atol 'x' is not a number"),
    (["zoo:nat-tiny", "--int4", "--opset", "19"], "--int4 needs --opset 21"),
    (["zoo:nat-tiny", "--smooth", "0.5"], "--smooth applies to quantization"),
    (["zoo:nat-tiny", "--input-shape", "images=1xq"], "--input-shape 'images=1xq'"),
    (["zoo:nat-tiny", "--lowering", "attention", "--opset", "21"], "--lowering attention needs --opset 23"),
    (["check", "zoo:nat-tiny", "m.onnx", "--quant-min-top1", "2"], "--quant-min-top1 2.0 must lie in [0, 1]"),
    (["check", "--reference", "r.npz", "m.onnx", "--factory", "a:b"], "--reference checks the saved inputs"),
    (["check", "zoo:nat-tiny"], "check needs MODEL and ONNX"),
    (["zoo:nat-tiny", "--paro", "--paro-grid", "1x8x8", "--dynamic-spatial"], "a PARO plan is made for one token"),
])
def test_flag_errors_are_answered_before_torch_loads(argv, message):
    # torch is blocked: a flag checked after it loads fails with ImportError instead (issue 30: flag errors < 0.5 s)
    proc = subprocess.run([sys.executable, "-c", NO_TORCH.format(argv=argv)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


ALL_GROUPS = (*GROUPS, ModelSource, BenchOptions, WorkflowFlags)


def test_every_flag_has_one_home():
    for command in ("export", "check", "engine", "bench", "ci-template"):  # one declaration per flag and command
        names = [flag.name for group in ALL_GROUPS for flag in group.FLAGS if command in flag.commands]
        assert len(names) == len(set(names)), f"{command}: a flag declared twice"
    for group in ALL_GROUPS:  # each flag sets a field of its own group (--atol / --rtol: the tolerances field)
        own = {f.name for f in dataclasses.fields(group)}
        for flag in group.FLAGS:
            assert flag.field in own or (flag.field in ("atol", "rtol") and "tolerances" in own), flag.name


def test_calibration_methods_are_the_calibrators():
    from attn_export import defaults
    from attn_export.calib.calibrators import CALIBRATORS

    assert tuple(CALIBRATORS) == defaults.CALIB_METHODS


def test_defaults_come_from_the_group_fields():
    result = run("export", "--help")
    assert result.exit_code == 0
    help_text = " ".join(result.output.split())
    assert "[default: plugin]" in help_text and "[default: 128]" in help_text  # --lowering, --calib-samples


def test_flags_reach_the_api_fields(tmp_path):
    from attn_export.options.check import CheckGroup

    values = CheckGroup.from_flags({"atol": ("1e-3", "output=2e-3"), "rtol": ("5e-4",)})
    tolerances = values["tolerances"]
    assert (tolerances.atol, tolerances.rtol, dict(tolerances.per_output_atol)) == (1e-3, 5e-4, {"output": 2e-3})
    opts = ExportOptions(quantize="int8", calib_samples=16).prepare()
    assert opts.quant.mode == "int8" and opts.quant.samples == 16 and opts.opset == 18


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("engine") / "out"
    result = run(SMALL, "-o", out, "--no-engine")
    assert result.exit_code == 0, result.output
    return out


def test_engine_command_needs_shapes_for_dynamic_dims(exported):
    result = run("engine", exported / "model.onnx")
    assert result.exit_code == 2
    assert "has dynamic dims" in result.output and "--reference" in result.output


def test_engine_command_without_tensorrt_exits_3_and_writes_nothing(exported, tmp_path):
    engine = tmp_path / "e" / "model.engine"
    result = run("engine", exported / "model.onnx", "--reference", exported / "reference.npz", "-o", engine)
    assert result.exit_code == 3, result.output
    assert "TensorRT" in result.output
    assert not engine.exists() and not (tmp_path / "e" / "engine.json").exists()


# Every flag each command had before the option groups (issue 30 kept them all), plus the new ones.
EXPECTED_FLAGS = {
    "export": {"--allow-inconclusive", "--atol", "--auto-exclude", "--calib-cache", "--calib-data", "--calib-method",
               "--calib-preprocess", "--calib-samples", "--check-samples", "--debug", "--dtype", "--dynamic-batch",
               "--dynamic-spatial", "--engine", "--exclude", "--factory", "--input-shape", "--inputs", "--int4",
               "--int4-block", "--int8", "--junit", "--lowering", "--max-batch", "--no-check", "--no-engine",
               "--no-paro", "--opset", "--output", "--paro", "--paro-block", "--paro-buckets", "--paro-density",
               "--paro-grid", "--paro-plan", "--paro-prefix", "--paro-pv", "--paro-qk", "--profile",
               "--quant-max-error", "--quant-min-cosine", "--quant-min-sample-cosine", "--quant-min-top1", "--rtol",
               "--seed", "--sensitivity", "--shapes", "--smooth", "--static-batch", "--static-spatial", "--summary",
               "--timing-cache", "--triton-name", "--triton-repo", "--trust-pickle"},
    "check": {"--calib-data", "--calib-preprocess", "--reference", "--report", "--engine", "--junit", "--summary",
              "--quant-min-cosine", "--quant-max-error", "--quant-min-sample-cosine", "--quant-min-top1",
              "--check-samples", "--allow-inconclusive", "--input-shape", "--factory", "--trust-pickle", "--inputs",
              "--atol", "--rtol", "--seed", "--debug"},
    "engine": {"--output", "--reference", "--max-batch", "--timing-cache", "--shapes", "--profile", "--debug"},
    "bench": {"--runtime", "--batch", "--iters", "--warmup", "--onnx", "--model", "--factory", "--trust-pickle",
              "--debug"},
    "ci-template": {"--output", "--gpu", "--model", "--onnx", "--factory", "--input-shape", "--install", "--force",
                    "--debug"},
}


@pytest.mark.parametrize("command", sorted(EXPECTED_FLAGS))
def test_each_command_keeps_its_flags(command):
    from attn_export.cli import main

    params = main.commands[command].params
    flags = {opt for p in params for opt in (*p.opts, *p.secondary_opts) if opt.startswith("--")}
    assert flags == EXPECTED_FLAGS[command]


def test_engine_command_takes_shapes_for_dynamic_dims(exported, tmp_path):
    # --shapes names every dynamic input: the profile is complete, so the command reaches TensorRT (absent: exit 3)
    import onnx

    inputs = onnx.load(str(exported / "model.onnx"), load_external_data=False).graph.input
    dims = {i.name: [d.dim_value or 1 for d in i.type.tensor_type.shape.dim] for i in inputs}
    ranges = [f"{n}={'x'.join(map(str, d))}:{'x'.join(map(str, d))}:{'x'.join(map(str, [2 * d[0], *d[1:]]))}"
              for n, d in dims.items()]
    result = run("engine", exported / "model.onnx", *(a for r in ranges for a in ("--shapes", r)),
                 "-o", tmp_path / "m.engine")
    assert result.exit_code == 3, result.output
    assert not (tmp_path / "m.engine").exists()


def test_engine_command_refuses_another_exports_reference(exported, tmp_path):
    other = tmp_path / "other"
    assert run("zoo:nat-tiny", "-o", other, "--no-engine").exit_code == 0
    result = run("engine", exported / "model.onnx", "--reference", other / "reference.npz")
    assert result.exit_code == 2 and "belongs to another export" in result.output
