"""Verdicts of the quality gates (INT8, INT4, PARO): judged on held-out real samples where real data exists,
per-sample worst cosine and top-1 agreement, a null control that must fail, and a loud warning for random-only
checks. Every gate is run against a deliberately broken model here: a gate that passes one is a defect."""

from __future__ import annotations

import json

import numpy as np
import pytest

from attn_export.check_inputs import combine, hold_out_count, real_batches, split_held_out
from attn_export.quality import QUANT_THRESHOLDS, shuffled_outputs, summarize

from helpers import factory_checkpoint, run

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


# ------------------------------------------------------------------------------------------ units


def test_hold_out_takes_at_most_a_quarter_of_a_known_source():
    assert hold_out_count(128, 32) == 32
    assert hold_out_count(20, 32) == 5
    assert hold_out_count(3, 32) == 0
    assert hold_out_count(None, 32) == 32  # a stream of unknown length


def test_split_holds_out_rows_and_streams_the_rest():
    feeds = [{"x": np.full((2, 3), i, np.float32)} for i in range(5)]
    held, rest = split_held_out(iter(feeds), 3)
    assert [f["x"].shape[0] for f in held] == [2, 1]  # 3 rows: the second batch is split
    assert [(int(f["x"][0, 0]), f["x"].shape[0]) for f in rest] == [(1, 1), (2, 2), (3, 2), (4, 2)]


def test_real_batches_respect_a_static_batch_and_name_every_sample():
    held = [{"x": np.arange(i * 3, i * 3 + 3, dtype=np.float32)[None]} for i in range(5)]
    feeds, samples = real_batches(held, "data.npz", batch=2, cap=8)
    assert [f["x"].shape for f in feeds] == [(2, 3), (2, 3)]  # the fifth sample fills no batch of 2
    assert samples == [["data.npz #0", "data.npz #1"], ["data.npz #2", "data.npz #3"]]
    feeds, samples = real_batches(held, "data.npz", batch=None, cap=3)
    assert [f["x"].shape[0] for f in feeds] == [3, 2] and samples[1] == ["data.npz #3", "data.npz #4"]


def test_one_collapsed_sample_fails_the_per_sample_gate_though_the_mean_passes():
    rng = np.random.default_rng(0)
    ref = 8 * rng.standard_normal((16, 10)).astype(np.float32)  # a confident classifier's scores
    cand = ref.copy()
    cand[5] = -ref[5]  # one sample's scores inverted
    inputs = combine([{"x": np.zeros((16, 1), np.float32)}], "", user=True)
    summary = summarize("c", "out", [ref], [cand], inputs, QUANT_THRESHOLDS["int8"])
    assert summary.worst_sample == "--inputs #5" and summary.worst_cosine < 0 and not summary.passed
    assert summary.top1_agree == 15 and summary.top1_total == 16


def test_top1_agreement_is_judged_on_real_samples_only():
    rng = np.random.default_rng(1)
    ref = 8 * rng.standard_normal((8, 10)).astype(np.float32)
    cand = ref[::-1].copy()  # every sample answers for another: top-1 agreement collapses
    random_inputs = combine([{"x": np.zeros((8, 1), np.float32)}], "random", user=False)
    t = QUANT_THRESHOLDS["int8"]
    assert summarize("c", "out", [ref], [cand], random_inputs, t).top1_agreement is None
    real = combine([{"x": np.zeros((8, 1), np.float32)}], "", user=True)
    assert summarize("c", "out", [ref], [cand], real, t).top1_agreement < 0.5


def test_the_shuffle_control_gives_every_sample_another_samples_output():
    refs = [{"y": np.arange(4, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)},
            {"y": np.full((1, 3), 9, np.float32)}, {"y": np.ones((1, 5), np.float32)}]
    feeds = [{"x": np.zeros((4, 2), np.float32)}, {"x": np.zeros((1, 2), np.float32)},
             {"x": np.zeros((1, 7), np.float32)}]
    inputs = combine(feeds, "", user=True)
    covered, shuffled = shuffled_outputs(refs, inputs)
    assert covered == [0, 1]  # the third sample's output shape is its own: no partner
    assert shuffled[0]["y"][:, 0].tolist() == [1, 2, 3, 9] and shuffled[1]["y"][0, 0] == 0
    assert shuffled_outputs([refs[1]], combine([feeds[1]], "", user=True)) == ([], [])  # one sample: no partner
    sequence_first = [{"y": np.arange(12, dtype=np.float32).reshape(3, 4, 1)}]  # [T, B, D]: no batch axis first
    assert shuffled_outputs(sequence_first, combine([feeds[0]], "", user=True)) == ([], [])
    twins = [{"y": np.ones((2, 3), np.float32)}]  # two samples with equal outputs: a swap breaks nothing
    assert shuffled_outputs(twins, combine([{"x": np.zeros((2, 2), np.float32)}], "", user=True)) == ([], [])


# ------------------------------------------------------------------------------------------ INT8 end to end


@pytest.fixture(scope="module")
def collapsed_cache(tmp_path_factory):
    """nat-mnist's calibration cache with the first convolution's input clipped at the background value (0.424,
    the failure of the issue: 96.7% -> 18.7% top-1)."""
    folder = tmp_path_factory.mktemp("collapse")
    assert run("zoo:nat-mnist", "-o", folder / "good", "--int8", "--no-check").exit_code == 0
    cache = json.loads((folder / "good" / "calib_cache.json").read_text())
    first = min(cache["amax"], key=lambda name: 0 if name == "div" else 1)  # the normalized image feeds the stem
    assert first == "div"
    cache["amax"][first] = 0.424
    (folder / "collapsed.json").write_text(json.dumps(cache))
    return folder


def test_a_collapsed_int8_model_fails_on_held_out_real_data(collapsed_cache, tmp_path):
    out = tmp_path / "out"
    result = run("zoo:nat-mnist", "-o", out, "--int8", "--calib-cache", collapsed_cache / "collapsed.json")
    assert result.exit_code == 1, result.output
    assert "int8 parity FAILED" in result.stderr
    report = json.loads((out / "report.json").read_text())
    quant = report["quantization"]["parity"]
    assert report["status"] == "fail" and quant["status"] == "fail"
    assert report["check_inputs"]["kind"] == "real"
    gate = [s for s in quant["samples"] if s["candidate"] == "onnxruntime-int8"][0]
    assert gate["top1_agreement"] < 0.9 and gate["worst_sample"].startswith("zoo:nat-mnist calibration data #")
    assert quant["control"]["passed"] is False  # real digits tell a broken model from a working one


def test_a_collapsed_int8_model_checked_on_random_inputs_is_never_a_pass(collapsed_cache, tmp_path):
    """On random inputs the collapsed file can meet relaxed thresholds; the null control then meets them too, so
    the verdict is inconclusive (exit 1), and a pass needs the user's explicit --allow-inconclusive."""
    onnx_file = tmp_path / "out" / "model.int8.onnx"
    run("zoo:nat-mnist", "-o", tmp_path / "out", "--int8", "--calib-cache", collapsed_cache / "collapsed.json",
        "--no-check")
    relaxed = ["--check-samples", "0", "--quant-min-cosine", "0.9", "--quant-max-error", "1",
               "--quant-min-sample-cosine", "0.9"]
    result = run("check", "zoo:nat-mnist", onnx_file, "--report", tmp_path / "r.json", *relaxed)
    assert result.exit_code == 1, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["status"] == "inconclusive" and report["control"]["passed"] is True
    assert "RANDOM" in result.stderr and "cannot tell this model from a broken one" in result.stderr
    accepted = run("check", "zoo:nat-mnist", onnx_file, "--report", tmp_path / "a.json", *relaxed,
                   "--allow-inconclusive")
    assert accepted.exit_code == 0, accepted.output
    assert json.loads((tmp_path / "a.json").read_text())["status"] == "pass"
    assert "accepted with --allow-inconclusive" in accepted.stderr


def test_a_good_int8_model_passes_on_held_out_real_data_with_a_failing_control(tmp_path):
    out = tmp_path / "out"
    result = run("zoo:nat-mnist", "-o", out, "--int8")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    quant = report["quantization"]
    assert report["check_inputs"]["kind"] == "real" and "RANDOM" not in result.stderr
    origins = [f["origin"] for f in report["check_inputs"]["feeds"]]
    assert origins.count("held-out real") == 4 and origins[-1] == "random"  # 32 digits, then the batch proof
    assert quant["samples"] == 128 and "after the 32 sample(s) held out" in quant["calibration_data"]
    assert quant["parity"]["control"]["passed"] is False
    gate = [s for s in quant["parity"]["samples"] if s["candidate"] == "onnxruntime-int8"][0]
    assert gate["top1_total"] == 32 and gate["top1_agreement"] >= 0.9


SMALL_CLASSIFIER = """
import torch

class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.head = torch.nn.Linear(8 * 36, 4)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).flatten(1))

def build():
    torch.manual_seed(0)
    return Net().eval(), (torch.rand(1, 1, 6, 6),)
"""


def test_calib_data_gives_a_quarter_to_the_check_and_inputs_win(tmp_path):
    checkpoint, factory = factory_checkpoint(tmp_path, SMALL_CLASSIFIER)
    data = np.random.default_rng(0).random((20, 1, 6, 6)).astype(np.float32)
    np.save(tmp_path / "calib.npy", data)
    out = tmp_path / "out"
    result = run(checkpoint, "--factory", factory, "-o", out, "--int8", "--calib-data", tmp_path / "calib.npy")
    assert result.exit_code in (0, 1), result.output
    report = json.loads((out / "report.json").read_text())
    assert report["quantization"]["samples"] == 15  # 5 of 20 held out, never calibrated on
    names = [s for f in report["check_inputs"]["feeds"] for s in f["samples"]]
    assert names[:5] == [f"{tmp_path / 'calib.npy'} (npy) #{i}" for i in range(5)]
    np.savez(tmp_path / "mine.npz", x=data[:3])
    mine = run(checkpoint, "--factory", factory, "-o", tmp_path / "mine", "--int8", "--calib-data",
               tmp_path / "calib.npy", "--inputs", tmp_path / "mine.npz")
    report = json.loads((tmp_path / "mine" / "report.json").read_text())
    assert report["check_inputs"]["kind"] == "user" and report["quantization"]["samples"] == 20
    assert "RANDOM" not in mine.stderr


def test_int4_without_real_data_warns_that_its_check_was_random(tmp_path):
    result = run("zoo:na1d-causal", "-o", tmp_path / "out", "--int4")
    assert result.exit_code == 0, result.output
    assert "WARNING: the int4 check ran on seeded RANDOM inputs only" in result.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["check_inputs"]["kind"] == "random"
    assert any("RANDOM" in w for w in report["quantization"]["parity"]["warnings"])


# ------------------------------------------------------------------------------------------ PARO


WEAK_ATTENTION = """
import torch
from attn_export.models.layers import ParoAttention

class Weak(torch.nn.Module):
    '''Attention whose output hardly reaches the model's output: a PARO gate must not call it verified.'''

    def __init__(self):
        super().__init__()
        self.attn = ParoAttention(32, 2, (2, 4, 4), 0)
        self.mlp = torch.nn.Linear(32, 32)

    def forward(self, tokens):
        return self.mlp(tokens) + 1e-4 * self.attn(tokens)

def build():
    torch.manual_seed(0)
    return Weak().eval(), (torch.randn(1, 32, 32),)
"""


def test_paro_whose_attention_does_not_matter_is_inconclusive(tmp_path):
    checkpoint, factory = factory_checkpoint(tmp_path, WEAK_ATTENTION)
    args = [checkpoint, "--factory", factory, "--paro", "--paro-grid", "2x4x4", "--paro-block", "8"]
    result = run(*args, "-o", tmp_path / "out")
    assert result.exit_code == 1, result.output
    assert "PARO quality INCONCLUSIVE" in result.stderr
    assert "WARNING: PARO was planned on seeded RANDOM inputs" in result.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["status"] == "inconclusive" and report["paro"]["parity"]["control"]["passed"] is True
    assert "attention calls zeroed" in report["paro"]["parity"]["control"]["description"]
    accepted = run(*args, "-o", tmp_path / "ok", "--allow-inconclusive")
    assert accepted.exit_code == 0, accepted.output


def test_a_paro_file_with_its_attention_zeroed_fails_the_check(tmp_path):
    """The deliberately broken PARO model of the issue (every attention output zero) never gets a PASS."""
    import onnx

    from attn_export.controls import attention_zeroed

    out = tmp_path / "out"
    assert run("zoo:paro-dit-tiny", "-o", out, "--no-check").exit_code == 0
    broken = onnx.load_from_string(attention_zeroed(out / "model.onnx").model)
    onnx.save(broken, str(tmp_path / "zeroed.onnx"))
    result = run("check", "zoo:paro-dit-tiny", tmp_path / "zeroed.onnx", "--report", tmp_path / "r.json")
    assert result.exit_code == 1, result.output
    assert json.loads((tmp_path / "r.json").read_text())["status"] == "fail"


def test_zoo_paro_names_its_loaded_plan_and_compares_with_a_calibration_planned_fhw(tmp_path):
    result = run("zoo:paro-dit-tiny", "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "load the PARO plan paro_dit_tiny_plan.json" in result.stderr
    plan = json.loads((tmp_path / "out" / "paro_plan.json").read_text())
    assert plan["quality_inputs"] == "2 seeded random input sets"
    assert all("fhw_mask" not in h for c in plan["calls"] for h in c["per_head"])  # FHW from the plan, not fitted
    planned = run("zoo:paro-dit-tiny", "-o", tmp_path / "planned", "--paro-density", "0.5")
    assert "plan PARO attention" in planned.stderr


def test_the_paro_gate_sees_the_attention_of_the_zoo_dit(tmp_path):
    """paro-dit-tiny's attention carries weight: its zeroed-attention control fails, so its PASS means something."""
    out = tmp_path / "out"
    result = run("zoo:paro-dit-tiny", "-o", out)
    assert result.exit_code == 0, result.output
    control = json.loads((out / "report.json").read_text())["paro"]["parity"]["control"]
    assert control["passed"] is False


def test_calib_data_with_a_calibration_cache_feeds_the_check_only(tmp_path):
    checkpoint, factory = factory_checkpoint(tmp_path, SMALL_CLASSIFIER)
    np.save(tmp_path / "calib.npy", np.random.default_rng(0).random((20, 1, 6, 6)).astype(np.float32))
    first = run(checkpoint, "--factory", factory, "-o", tmp_path / "a", "--int8", "--calib-data",
                tmp_path / "calib.npy")
    assert first.exit_code in (0, 1), first.output
    again = run(checkpoint, "--factory", factory, "-o", tmp_path / "b", "--int8", "--calib-data",
                tmp_path / "calib.npy", "--calib-cache", tmp_path / "a" / "calib_cache.json")
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert report["check_inputs"]["kind"] == "real", again.output
    assert report["quantization"]["calibration_data"].startswith("calibration cache")


# ------------------------------------------------------------------------------------------ review cases


def test_a_loaders_batch_is_split_at_the_hold_out_boundary():
    batch = {"x": np.arange(64, dtype=np.float32)[:, None]}
    held, rest = split_held_out(iter([batch]), 16)
    assert [f["x"].shape[0] for f in held] == [16]
    (remaining,) = list(rest)
    assert remaining["x"][0, 0] == 16 and remaining["x"].shape[0] == 48  # calibration keeps the other 48 rows


def test_rows_of_different_shapes_batch_apart():
    held = [{"t": np.zeros((1, n), np.int64)} for n in (128, 160, 128)]
    feeds, samples = real_batches(held, "data", batch=None, cap=8)
    assert sorted(f["t"].shape for f in feeds) == [(1, 160), (2, 128)] and ["data #1"] in samples


def test_an_embedding_is_not_judged_by_top1_agreement():
    rng = np.random.default_rng(2)
    ref = rng.standard_normal((32, 512)).astype(np.float32)  # not a classifier's scores: nearly flat softmax
    cand = ref + 0.05 * rng.standard_normal(ref.shape).astype(np.float32)
    real = combine([{"x": np.zeros((32, 1), np.float32)}], "", user=True)
    summary = summarize("c", "emb", [ref], [cand], real, QUANT_THRESHOLDS["int8"])
    assert summary.top1_agreement is None and summary.passed


NAN_SAMPLE = SMALL_CLASSIFIER


def test_a_bad_held_out_sample_is_a_data_error(tmp_path):
    checkpoint, factory = factory_checkpoint(tmp_path, NAN_SAMPLE)
    data = np.random.default_rng(0).random((20, 1, 6, 6)).astype(np.float32)
    data[3, 0, 0, 0] = np.nan  # inside the held-out quarter
    np.save(tmp_path / "calib.npy", data)
    result = run(checkpoint, "--factory", factory, "-o", tmp_path / "out", "--int8", "--calib-data",
                 tmp_path / "calib.npy")
    assert result.exit_code == 2 and "calibration sample 3" in result.stderr and "NaN" in result.stderr
    assert not (tmp_path / "out").exists()


def test_paro_alone_plans_and_checks_on_real_calib_data(tmp_path):
    checkpoint, factory = factory_checkpoint(tmp_path, WEAK_ATTENTION.replace("1e-4 * ", ""))
    np.save(tmp_path / "calib.npy", np.random.default_rng(1).standard_normal((12, 32, 32)).astype(np.float32))
    result = run(checkpoint, "--factory", factory, "--paro", "--paro-grid", "2x4x4", "--paro-block", "8",
                 "--calib-data", tmp_path / "calib.npy", "-o", tmp_path / "out")
    assert result.exit_code in (0, 1), result.output  # random weights: PARO may well approximate them badly
    assert "RANDOM" not in result.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["check_inputs"]["kind"] == "real"  # 3 of 12 held out, 9 planned on
    plan = json.loads((tmp_path / "out" / "paro_plan.json").read_text())
    assert plan["calibration_samples"] == 9 and plan["quality_inputs"] == "3 held-out real sample(s)"
