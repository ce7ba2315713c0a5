"""ONNX export: one custom node per call, its attributes, the local function, and ORT parity."""

from __future__ import annotations

import random

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from attn_export import AttnExportError, export
from attn_export.models import NeighborhoodAttention1D, NeighborhoodAttention2D, NeighborhoodAttention3D
from attn_export.registry import DOMAIN, NEIGHBORHOOD

from helpers import na_single_node_model
from oracle import make_inputs, neighborhood_attention_reference, random_config


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("seed", range(150))
def test_local_function_matches_reference_on_random_configs(seed):
    cfg = random_config(random.Random(1000 + seed))
    q, k, v, rpb = make_inputs(cfg, seed)
    scale = None if seed % 2 else 0.37
    model = na_single_node_model(cfg, scale=scale)
    onnx.checker.check_model(model, full_check=True)
    feed = {"q": q.numpy(), "k": k.numpy(), "v": v.numpy()}
    if rpb is not None:
        feed["rpb"] = rpb.numpy()
    (got,) = _session(model).run(None, feed)
    want = neighborhood_attention_reference(q, k, v, cfg["kernel"], cfg["stride"], cfg["dilation"], cfg["causal"],
                                            scale=scale, rpb=rpb)
    np.testing.assert_allclose(got, want.numpy(), atol=1e-5, rtol=0, err_msg=str(cfg))


def test_one_function_serves_different_shapes_and_batches():
    cfg = dict(spatial=[9, 10], kernel=[3, 4], stride=[2, 1], dilation=[1, 2], causal=[False, True],
               heads=2, dim=8, batch=1, rpb=False)
    session = _session(na_single_node_model(cfg))
    for spatial, batch in (([9, 10], 1), ([14, 8], 3)):
        cfg2 = dict(cfg, spatial=spatial, batch=batch)
        q, k, v, _ = make_inputs(cfg2, 7)
        (got,) = session.run(None, {"q": q.numpy(), "k": k.numpy(), "v": v.numpy()})
        want = neighborhood_attention_reference(q, k, v, cfg["kernel"], cfg["stride"], cfg["dilation"], cfg["causal"])
        np.testing.assert_allclose(got, want.numpy(), atol=1e-5, rtol=0)


def test_inputs_too_short_for_the_window_give_nan_not_a_wrong_answer():
    cfg = dict(spatial=[9, 10], kernel=[3, 4], stride=[1, 1], dilation=[2, 1], causal=[False, True],
               heads=2, dim=8, batch=1, rpb=False)
    session = _session(na_single_node_model(cfg))
    for spatial, bad in (([6, 4], False), ([5, 10], True), ([9, 3], True)):  # k*d = 6 and 4
        q, k, v, _ = make_inputs(dict(cfg, spatial=spatial), 0)
        (got,) = session.run(None, {"q": q.numpy(), "k": k.numpy(), "v": v.numpy()})
        assert np.isnan(got).all() if bad else np.isfinite(got).all(), spatial


@pytest.mark.parametrize("dtype, atol", [(TensorProto.FLOAT16, 1e-2)])
def test_local_function_runs_in_half_precision(dtype, atol):
    cfg = dict(spatial=[8, 9], kernel=[3, 5], stride=[1, 2], dilation=[2, 1], causal=[False, False],
               heads=2, dim=16, batch=2, rpb=True)
    q, k, v, rpb = make_inputs(cfg, 1)
    (got,) = _session(na_single_node_model(cfg, dtype)).run(
        None, {n: t.half().numpy() for n, t in zip(("q", "k", "v", "rpb"), (q, k, v, rpb))})
    want = neighborhood_attention_reference(q, k, v, cfg["kernel"], cfg["stride"], cfg["dilation"], cfg["causal"],
                                            rpb=rpb)
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float32), want.numpy(), atol=atol, rtol=0)


class ThreeKinds(torch.nn.Module):
    """1-D causal, 2-D with rpb and dilation, 3-D strided: every branch of the exporter."""

    def __init__(self):
        super().__init__()
        self.na1 = NeighborhoodAttention1D(16, 2, 4, is_causal=True)
        self.na2 = NeighborhoodAttention2D(16, 2, (3, 5), dilation=(2, 1), rel_pos_bias=True)
        self.na3 = NeighborhoodAttention3D(16, 4, (2, 3, 3), stride=(1, 2, 3))

    def forward(self, seq, image, video):
        return self.na1(seq), self.na2(image), self.na3(video)


@pytest.fixture(scope="module")
def three_kinds(tmp_path_factory):
    torch.manual_seed(0)
    model = ThreeKinds().eval()
    inputs = (torch.randn(2, 20, 16), torch.randn(2, 10, 11, 16), torch.randn(2, 4, 6, 7, 16))
    path = tmp_path_factory.mktemp("export") / "three.onnx"
    batch = torch.export.Dim("batch", min=1, max=64)
    dynamic = {"seq": {0: batch}, "image": {0: batch}, "video": {0: batch}}
    proto = export(model, inputs, path, dynamic_shapes=dynamic, input_names=["seq", "image", "video"],
                   output_names=["y1", "y2", "y3"])
    return model, inputs, path, proto


def test_each_call_is_exactly_one_node_with_its_attributes(three_kinds):
    model, _, path, _ = three_kinds
    proto = onnx.load(path)
    nodes = [n for n in proto.graph.node if n.domain == DOMAIN]
    assert [n.op_type for n in nodes] == [NEIGHBORHOOD.onnx_op_type] * 3
    attrs = [{a.name: helper.get_attribute_value(a) for a in n.attribute} for n in nodes]
    expected = [
        dict(kernel_size=[4], stride=[1], dilation=[1], is_causal=[1]),
        dict(kernel_size=[3, 5], stride=[1, 1], dilation=[2, 1], is_causal=[0, 0]),
        dict(kernel_size=[2, 3, 3], stride=[1, 2, 3], dilation=[1, 1, 1], is_causal=[0, 0, 0]),
    ]
    layers = [model.na1, model.na2, model.na3]
    for got, want, layer in zip(attrs, expected, layers):
        assert {k: got[k] for k in want} == want
        assert got["plugin_version"] == b"1" and got["plugin_namespace"] == DOMAIN.encode()
        assert got["scale"] == pytest.approx(layer.scale)
    assert [len(n.input) for n in nodes] == [3, 4, 3]
    # Spatial dims static (only the batch is dynamic): each node's overload is specialised for its shape.
    assert [n.overload for n in nodes] == ["@20", "rpb@10x11", "@4x6x7"]
    # No attention is left decomposed in the main graph: no Softmax outside the local functions.
    assert not any(n.op_type == "Softmax" for n in proto.graph.node)


def test_local_functions_use_standard_ops_only_and_pass_the_checker(three_kinds):
    proto = onnx.load(three_kinds[2])
    onnx.checker.check_model(proto, full_check=True)
    functions = {(f.domain, f.name, f.overload): f for f in proto.functions}
    assert set(functions) == {(DOMAIN, NEIGHBORHOOD.onnx_op_type, overload) for overload in ("@20", "rpb@10x11",
                                                                                           "@4x6x7")}
    for f in functions.values():
        assert {n.domain for n in f.node} == {""}
        assert "Gather" in {n.op_type for n in f.node}
    assert any(o.domain == DOMAIN and o.version == 1 for o in proto.opset_import)


def test_exported_model_runs_in_plain_onnxruntime_at_two_batch_sizes(three_kinds):
    model, inputs, path, _ = three_kinds
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        xs = [torch.randn(batch, *x.shape[1:]) for x in inputs]
        with torch.no_grad():
            want = model(*xs)
        got = session.run(None, {n: x.numpy() for n, x in zip(("seq", "image", "video"), xs)})
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w.numpy(), atol=1e-5, rtol=0)


def test_invalid_attention_parameters_fail_export_with_the_op_error(tmp_path):
    layer = NeighborhoodAttention2D(8, 2, 7).eval()
    with pytest.raises(AttnExportError) as info:
        export(layer, (torch.randn(1, 5, 9, 8),), tmp_path / "m.onnx")
    assert "kernel_size*dilation=7*1=7 on axis 0 exceeds the axis length 5" in str(info.value)
    assert not (tmp_path / "m.onnx").exists()


def test_unsupported_opset_is_rejected(tmp_path):
    with pytest.raises(AttnExportError, match="opset 12 is not supported"):
        export(NeighborhoodAttention1D(8, 2, 3), (torch.randn(1, 9, 8),), tmp_path / "m.onnx", opset=12)


@pytest.mark.parametrize("opset", [18, 21, 23])
def test_every_supported_opset_exports_and_runs(opset, tmp_path):
    torch.manual_seed(0)
    layer = NeighborhoodAttention2D(16, 2, 3, dilation=2, rel_pos_bias=True).eval()
    x = torch.randn(2, 9, 8, 16)
    proto = export(layer, (x,), tmp_path / "m.onnx", opset=opset, input_names=["x"], output_names=["y"])
    assert next(o.version for o in proto.opset_import if o.domain == "") == opset
    assert all(f.opset_import[0].version == opset for f in proto.functions)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"x": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(got, layer(x).numpy(), atol=1e-5, rtol=0)


def test_half_precision_model_exports_and_runs(tmp_path):
    torch.manual_seed(0)
    layer = NeighborhoodAttention2D(16, 2, 3, rel_pos_bias=True).eval()
    x = torch.randn(2, 9, 8, 16)
    with torch.no_grad():
        want = layer(x).numpy()
    export(layer.half(), (x.half(),), tmp_path / "m.onnx", input_names=["x"], output_names=["y"])
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"x": x.half().numpy()})
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float32), want, atol=1e-2, rtol=0)
