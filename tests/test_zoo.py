"""Every zoo model: small, seeded, exports with one node per attention call, passes ORT parity."""

from __future__ import annotations

import onnx
import pytest
import torch

from attn_export import AttnExportError
from attn_export.loader import load_model
from attn_export.models import zoo
from attn_export.models.layers import NeighborhoodAttentionND
from attn_export.parity import Tolerances
from attn_export.pipeline import ExportOptions, check_feeds, export_job
from attn_export.registry import DOMAIN

REQUIRED = {"nat-tiny", "dinat-tiny", "na1d-causal", "na3d-video"}


def _no_progress(title):
    import contextlib

    return contextlib.nullcontext()


def test_zoo_has_the_required_models_each_well_under_5m_parameters():
    assert REQUIRED <= set(zoo.names())
    for name in zoo.names():
        model, inputs = zoo.create(name)
        assert not model.training
        assert sum(p.numel() for p in model.parameters()) < 2_000_000
        assert all(isinstance(x, torch.Tensor) for x in inputs)


def test_zoo_models_are_seeded():
    a, xa = zoo.create("na3d-video")
    b, xb = zoo.create("na3d-video")
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert torch.equal(xa[0], xb[0])


def test_zoo_models_use_what_their_names_promise():
    def layers(name):
        return [m for m in zoo.create(name)[0].modules() if isinstance(m, NeighborhoodAttentionND)]

    assert all(m.rpb is not None and m.rank == 2 for m in layers("nat-tiny"))
    assert any(max(m.params.dilation) > 1 for m in layers("dinat-tiny"))
    assert all(m.rank == 1 and all(m.params.is_causal) for m in layers("na1d-causal"))
    assert all(m.rank == 3 and max(m.params.stride) > 1 for m in layers("na3d-video"))


def test_unknown_zoo_name_lists_the_available_ones():
    with pytest.raises(AttnExportError, match="unknown zoo model 'nope'; available: nat-tiny"):
        zoo.create("nope")


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_zoo_model_exports_and_passes_parity_at_two_batch_sizes_and_two_spatial_sizes(name, tmp_path):
    loaded = load_model(f"zoo:{name}")
    opts = ExportOptions(dynamic_batch=True, dynamic_spatial=True, tolerances=Tolerances(atol=1e-4, rtol=1e-4))
    result = export_job(loaded, tmp_path, opts, _no_progress)
    report = result.report
    assert report.passed, report.table()
    base, batch2, grown = report.inputs[loaded.input_names[0]]["shapes"]
    assert base[0] == grown[0] == 1 and batch2 == [2, *base[1:]]
    spatial = zoo.entry(name).spatial[loaded.input_names[0]]
    assert all(grown[a] == base[a] + d.multiple for a, d in spatial.items())
    assert len(report.comparisons) == 3
    for comparison in report.comparisons:
        for out in comparison.outputs:
            assert out.max_abs_error < 1e-4
    proto = onnx.load(result.onnx_path)
    n_layers = sum(isinstance(m, NeighborhoodAttentionND) for m in loaded.module.modules())
    assert sum(n.domain == DOMAIN for n in proto.graph.node) == n_layers
    onnx.checker.check_model(proto, full_check=True)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param, "batch must be dynamic"
    assert any(d.dim_param for d in list(dims)[2 if name != "na1d-causal" else 1:]), "spatial must be dynamic"


def test_dynamic_spatial_export_runs_at_another_resolution(tmp_path):
    import onnxruntime as ort

    loaded = load_model("zoo:nat-tiny")
    export_job(loaded, tmp_path, ExportOptions(dynamic_spatial=True, check=False), _no_progress)
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    x = torch.rand(2, 3, 96, 80)
    with torch.no_grad():
        want = loaded.module(x).numpy()
    (got,) = session.run(None, {"images": x.numpy()})
    assert abs(got - want).max() < 1e-4


def test_check_feeds_are_seeded_and_vary_only_the_dims_the_onnx_file_keeps_dynamic(tmp_path):
    loaded = load_model("zoo:na1d-causal")
    for folder, opts in (("dyn", ExportOptions()), ("batch", ExportOptions(dynamic_spatial=False)),
                         ("static", ExportOptions(dynamic_batch=False, dynamic_spatial=False))):
        export_job(loaded, tmp_path / folder, ExportOptions(**{**opts.__dict__, "check": False}), _no_progress)
    feeds, source = check_feeds(loaded, tmp_path / "dyn" / "model.onnx", seed=3)
    again, _ = check_feeds(loaded, tmp_path / "dyn" / "model.onnx", seed=3)
    assert source == "random, seeds 3 to 5"
    assert [f["tokens"].shape for f in feeds] == [(1, 128), (2, 128), (1, 129)]
    assert (feeds[0]["tokens"] == again[0]["tokens"]).all()
    assert feeds[0]["tokens"].std() > 10
    batch_only, _ = check_feeds(loaded, tmp_path / "batch" / "model.onnx", seed=3)
    assert [f["tokens"].shape for f in batch_only] == [(1, 128), (2, 128)]
    static, _ = check_feeds(loaded, tmp_path / "static" / "model.onnx", seed=3)
    assert [f["tokens"].shape for f in static] == [(1, 128)]
