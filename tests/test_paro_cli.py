"""PARO through the command line: the zoo model with its shipped plan, a user's own SDPA model, plans reused
and checked, timestep buckets, --int8 together with PARO, and every bad input (one line, exit 2, nothing
written)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from attn_export.models.paro import grid_permutation
from attn_export.registry import DOMAIN, PARO

from helpers import assert_one_line_error, build_no_attention, build_sdpa_grid_model, run

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

OWN = ["--factory", "helpers:build_sdpa_grid_model", "--paro", "--paro-grid", "2x4x4", "--paro-prefix", "2",
       "--paro-block", "8"]


def paro_nodes(path):
    model = onnx.load(str(path))
    return model, [n for n in model.graph.node if n.domain == DOMAIN and n.op_type == PARO.onnx_op_type]


@pytest.fixture(scope="module")
def zoo_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("paro") / "out"
    result = run("zoo:paro-dit-tiny", "-o", out)
    return result, out


def test_zoo_model_exports_one_node_per_call_with_its_function_plan_and_report(zoo_export):
    result, out = zoo_export
    assert result.exit_code == 0, result.output
    model, nodes = paro_nodes(out / "model.onnx")
    assert len(nodes) == 2  # one per block
    assert [f.name for f in model.functions if f.domain == DOMAIN] == [PARO.onnx_op_type]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nodes[0].attribute}
    assert (attrs["block"], attrs["qk_bits"], attrs["pv_bits"]) == (16, 8, 8)
    assert {"plugin_version", "plugin_namespace"} <= set(attrs)
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "paro_plan.json", "paro_plan.npz", "reference.npz",
                                                     "report.json"]
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "pass" and report["paro"]["parity"]["status"] == "pass"
    assert report["paro"]["planned"] is False  # the zoo model ships its plan
    head = report["paro"]["calls"][0]["per_head"][0]
    assert set(head["costs"]) == {"FHW", "FWH", "HWF", "HFW", "WHF", "WFH"}
    assert {"chosen_int8", "FHW_int8", "chosen_fp16", "FHW_int4"} <= set(head["held_out"])
    assert "rel L2 chosen / FHW" in result.output and "paro-int8 thresholds" in result.output
    # the heads attend along frames, rows, columns: their orders put that axis innermost
    orders = [h["order"] for h in report["paro"]["calls"][0]["per_head"]]
    assert orders[0][-1] == "F" and orders[1][-1] == "H" and orders[2][-1] == "W"


def test_check_command_judges_the_paro_file_against_the_dense_model(zoo_export, tmp_path):
    _, out = zoo_export
    ok = run("check", "zoo:paro-dit-tiny", out / "model.onnx", "--report", tmp_path / "check.json")
    assert ok.exit_code == 0, ok.output
    assert "pytorch-cpu vs onnxruntime-paro-int8" in ok.output and "fused" not in ok.output
    model = onnx.load(str(out / "model.onnx"))
    perm = next(i for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT32 and len(i.dims) == 2)
    values = onnx.numpy_helper.to_array(perm).copy()
    values[:] = grid_permutation("FHW", (4, 8, 8), 8).numpy()  # every head in the identity order: wrong masks
    perm.CopyFrom(onnx.numpy_helper.from_array(values.astype(np.int32), perm.name))
    for node in model.graph.node:  # and logits of the wrong sign
        for attribute in node.attribute:
            if node.op_type == PARO.onnx_op_type and attribute.name == "scale":
                attribute.f *= -1
    onnx.save(model, str(tmp_path / "broken.onnx"))
    bad = run("check", "zoo:paro-dit-tiny", tmp_path / "broken.onnx", "--report", tmp_path / "bad.json")
    assert bad.exit_code == 1, bad.output
    assert json.loads((tmp_path / "bad.json").read_text())["status"] == "fail"


def test_a_users_own_sdpa_model_is_planned_and_exported(tmp_path):
    torch.save(build_sdpa_grid_model()[0].state_dict(), tmp_path / "own.pt")
    result = run(tmp_path / "own.pt", *OWN, "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    _, nodes = paro_nodes(tmp_path / "out" / "model.onnx")
    assert len(nodes) == 2  # the cross-attention call stays dense, and says so
    assert "call 2 left dense: q, k, v differ in shape" in result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["paro"]["planned"] is True and report["paro"]["skipped_calls"] == {
        "2": "q, k, v differ in shape (cross or grouped-query attention)"}
    # reuse the plan: the same orders and layouts
    again = run(tmp_path / "own.pt", *OWN, "--paro-plan", tmp_path / "out" / "paro_plan.json", "-o", tmp_path / "re")
    assert again.exit_code == 0, again.output
    first, second = (np.load(tmp_path / d / "paro_plan.npz") for d in ("out", "re"))
    assert all(np.array_equal(first[k], second[k]) for k in first.files)


def test_paro_with_int8_quantizes_the_linears_and_keeps_paro(tmp_path):
    result = run("zoo:paro-dit-tiny", "--int8", "--calib-samples", "8", "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    _, nodes = paro_nodes(tmp_path / "out" / "model.int8.onnx")
    assert len(nodes) == 2
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["quantization"]["parity"]["reference"] == "pytorch-dense"
    assert report["quantization"]["parity"]["status"] == "pass"


def test_timestep_buckets_select_the_layout_by_an_input(tmp_path):
    result = run("zoo:paro-dit-tiny", "--paro-buckets", "2", "--calib-samples", "16", "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    model, _ = paro_nodes(tmp_path / "out" / "model.onnx")
    bucket = next(i for i in model.graph.input if i.name == "paro_bucket")
    assert bucket.type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert json.loads((tmp_path / "out" / "paro_plan.json").read_text())["buckets"] == 2
    assert run("check", "zoo:paro-dit-tiny", tmp_path / "out" / "model.onnx").exit_code == 0


@pytest.mark.parametrize("args, fragment", [
    (["--paro-grid", "2x4x5"], "call 0 is refused because it attends 34 tokens, not the 42 of the PARO grid"),
    (["--paro-grid", "2x4"], "is not FxHxW"),
    (["--paro-density", "1.5"], "--paro-density 1.5 must lie in (0, 1]"),
    (["--paro-qk", "int3"], "--paro-qk 'int3' is not one of int8, int4, fp16"),
    (["--paro-buckets", "2"], "--paro-buckets needs a model input named 'timestep'"),
    (["--dynamic-spatial"], "--dynamic-spatial: a PARO plan is made for one token count"),
])
def test_bad_paro_input_is_one_line_exit_2_and_nothing_written(args, fragment, tmp_path):
    torch.save(build_sdpa_grid_model()[0].state_dict(), tmp_path / "own.pt")
    result = run(tmp_path / "own.pt", *OWN, *args, "-o", tmp_path / "out")
    assert_one_line_error(result, 2, fragment)
    assert not (tmp_path / "out").exists()


def test_paro_refusals_for_models_and_plans_that_do_not_fit(tmp_path, zoo_export):
    _, zoo_out = zoo_export
    torch.save(build_no_attention()[0].state_dict(), tmp_path / "plain.pt")
    assert_one_line_error(run(tmp_path / "plain.pt", "--factory", "helpers:build_no_attention", "--paro",
                              "--paro-grid", "1x2x5", "-o", tmp_path / "o"), 2, "makes no torch.nn.functional")
    torch.save(build_sdpa_grid_model()[0].state_dict(), tmp_path / "own.pt")
    other = run(tmp_path / "own.pt", *OWN, "--paro-block", "32", "--paro-plan", zoo_out / "paro_plan.json",
                "-o", tmp_path / "o")
    assert_one_line_error(other, 2, "was made for grid 4x8x8, prefix 8, block 16")
    assert_one_line_error(run(tmp_path / "own.pt", "--factory", "helpers:build_sdpa_grid_model", "--paro",
                              "-o", tmp_path / "o"), 2, "--paro needs --paro-grid FxHxW")
    assert_one_line_error(run("zoo:paro-dit-tiny", "--no-paro", "--paro-density", "0.5", "-o", tmp_path / "o"),
                          2, "--paro-density applies to PARO: drop --no-paro")
    assert not (tmp_path / "o").exists()


def test_no_paro_exports_the_zoo_model_dense(tmp_path):
    result = run("zoo:paro-dit-tiny", "--no-paro", "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    _, nodes = paro_nodes(tmp_path / "out" / "model.onnx")
    assert nodes == [] and not (tmp_path / "out" / "paro_plan.json").exists()


def test_the_shipped_plan_is_what_the_planner_makes_today():
    """zoo:paro-dit-tiny ships the plan of scripts/plan_paro_dit_tiny.py: if the model or the planner changes,
    the shipped plan must be made again."""
    import itertools

    from attn_export import paro_export
    from attn_export.calib.paro import ParoPlan
    from attn_export.loader import load_model
    from attn_export.models import zoo
    from attn_export.pipeline import ExportOptions, calibration_source

    defaults = zoo.entry("paro-dit-tiny").paro
    loaded = load_model("zoo:paro-dit-tiny")
    settings = paro_export.ParoSettings(defaults.grid, defaults.prefix, defaults.block, defaults.density, 8, 8)
    source = calibration_source(loaded, ExportOptions())
    fresh = paro_export.prepare(loaded, settings, itertools.islice(source.feeds, ExportOptions().calib_samples),
                                source.description).plan
    shipped = ParoPlan.load(defaults.plan_path())
    assert [c.head_info for c in shipped.calls] == [c.head_info for c in fresh.calls]
    for a, b in zip(shipped.calls, fresh.calls):
        assert np.array_equal(a.perm_idx, b.perm_idx) and np.array_equal(a.kv_index, b.kv_index)
