"""The tiled NeighborhoodAttention local function: random tile shapes (patched into the function) and the shipped
ones at tile edges against the oracle, one session over many shapes, agreement with the torch op, and the
CUDA provider."""

from __future__ import annotations

import random

import numpy as np
import onnxruntime as ort
import pytest
import torch

import attn_export.onnx_functions as onnx_functions
from attn_export.models import neighborhood_attention

from helpers import na_single_node_model
from oracle import make_inputs, neighborhood_attention_reference, random_config


def feed_of(q, k, v, rpb=None) -> dict:
    feed = {"q": q.numpy(), "k": k.numpy(), "v": v.numpy()}
    if rpb is not None:
        feed["rpb"] = rpb.numpy()
    return feed


def run_cpu(model, feed):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feed)[0]


def reference(cfg, q, k, v, rpb):
    return neighborhood_attention_reference(q, k, v, cfg["kernel"], cfg["stride"], cfg["dilation"], cfg["causal"],
                                            rpb=rpb).numpy()


@pytest.mark.parametrize("seed", range(60))
def test_random_tiles_match_reference(seed, monkeypatch):
    """Tiles of 1 to 9 queries per axis: partial tiles, tiles past short dilation groups, strides, causal, rpb."""
    rng = random.Random(30_000 + seed)
    cfg = random_config(rng)
    tiles = tuple(tuple([1] * (3 - r) + [rng.randint(1, 9) for _ in range(r)]) for r in (1, 2, 3))
    monkeypatch.setattr(onnx_functions, "_NA_TILES", tiles)
    q, k, v, rpb = make_inputs(cfg, seed)
    got = run_cpu(na_single_node_model(cfg), feed_of(q, k, v, rpb))
    np.testing.assert_allclose(got, reference(cfg, q, k, v, rpb), atol=1e-5, rtol=0, err_msg=f"{cfg} {tiles}")


def edge_config(rng: random.Random) -> dict:
    """Axes whose dilation groups straddle a multiple of the shipped tile (16 in 1-D, 4 x 8 in 2-D, 2/2/4 in 3-D)."""
    rank = rng.choice([1, 2, 3])
    tile = onnx_functions._NA_TILES[rank - 1][3 - rank:]
    kernel = [rng.randint(2, 5) for _ in range(rank)]
    dilation = [rng.choice([1, 2, 3]) for _ in range(rank)]
    spatial = [max(k * d, t * d * rng.randint(1, 2) + rng.randint(-d, d)) for k, d, t in zip(kernel, dilation, tile)]
    causal = [rng.random() < 0.3 for _ in range(rank)]
    return dict(spatial=spatial, kernel=kernel, stride=[rng.randint(1, k) for k in kernel], dilation=dilation,
                causal=causal, heads=2, dim=8, batch=rng.randint(1, 2), rpb=not any(causal) and rng.random() < 0.5)


@pytest.mark.parametrize("seed", range(30))
def test_shipped_tiles_at_their_edges_match_reference(seed):
    """At every supported opset (18 to 23, one per seed in turn)."""
    cfg = edge_config(random.Random(seed))
    q, k, v, rpb = make_inputs(cfg, seed)
    got = run_cpu(na_single_node_model(cfg, opset=18 + seed % 6), feed_of(q, k, v, rpb))
    np.testing.assert_allclose(got, reference(cfg, q, k, v, rpb), atol=1e-5, rtol=0, err_msg=str(cfg))


def test_one_session_serves_every_spatial_size():
    cfg = dict(spatial=[9, 10], kernel=[3, 5], stride=[1, 2], dilation=[2, 1], causal=[False, False],
               heads=2, dim=8, batch=1, rpb=True)
    session = ort.InferenceSession(na_single_node_model(cfg).SerializeToString(), providers=["CPUExecutionProvider"])
    for spatial, batch in (([9, 10], 1), ([16, 16], 2), ([17, 5], 3), ([6, 33], 1)):
        shaped = dict(cfg, spatial=spatial, batch=batch)
        q, k, v, rpb = make_inputs(shaped, batch)
        got = session.run(None, feed_of(q, k, v, rpb))[0]
        np.testing.assert_allclose(got, reference(shaped, q, k, v, rpb), atol=1e-5, rtol=0, err_msg=str(spatial))


@pytest.mark.parametrize("cfg", [
    dict(spatial=[61, 45], kernel=[7, 5], stride=[2, 1], dilation=[2, 3], causal=[False, False], rpb=True),
    dict(spatial=[300], kernel=[13], stride=[4], dilation=[3], causal=[True], rpb=False),
    dict(spatial=[9, 14, 13], kernel=[3, 5, 3], stride=[1, 2, 3], dilation=[1, 2, 1], causal=[True, False, False],
         rpb=False),
], ids=["2d", "1d-causal", "3d"])
def test_function_agrees_with_the_torch_op_on_larger_inputs(cfg):
    cfg = dict(cfg, heads=3, dim=16, batch=2)
    q, k, v, rpb = make_inputs(cfg, 1)
    got = run_cpu(na_single_node_model(cfg), feed_of(q, k, v, rpb))
    want = neighborhood_attention(q, k, v, cfg["kernel"], cfg["stride"], cfg["dilation"], cfg["causal"], rpb=rpb)
    np.testing.assert_allclose(got, want.numpy(), atol=1e-5, rtol=0)


def test_cuda_provider_accepts_the_function():
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime build has no CUDA provider (onnxruntime-gpu has one)")
    cfg = dict(spatial=[11, 12], kernel=[3, 5], stride=[1, 2], dilation=[2, 1], causal=[False, True],
               heads=2, dim=8, batch=2, rpb=False)
    model = na_single_node_model(cfg)
    model.ir_version = 10  # the lowest with function overloads: onnxruntime-gpu releases may lag the CPU package
    session = ort.InferenceSession(model.SerializeToString(), providers=["CUDAExecutionProvider",
                                                                         "CPUExecutionProvider"])
    if "CUDAExecutionProvider" not in session.get_providers():
        pytest.skip("the CUDA provider did not start here (no GPU or no CUDA libraries); the session fell back "
                    "to the CPU")
    q, k, v, _ = make_inputs(cfg, 0)
    got = session.run(None, feed_of(q, k, v))[0]
    np.testing.assert_allclose(got, reference(cfg, q, k, v, None), atol=1e-4, rtol=0)


def test_no_tensor_grows_with_n_squared():
    """Every value of the function body at 2-D 40x40 (N = 1600), run inlined with each value as an output, is far
    smaller than one N x N matrix."""
    from onnx import helper, inliner

    cfg = dict(spatial=[40, 40], kernel=[7, 7], stride=[1, 1], dilation=[1, 1], causal=[False, False],
               heads=1, dim=4, batch=1, rpb=True)
    model = inliner.inline_local_functions(na_single_node_model(cfg))
    assert any(n.op_type == "Softmax" for n in model.graph.node)
    del model.graph.output[:]
    model.graph.output.extend(helper.make_empty_tensor_value_info(name) for n in model.graph.node for name in n.output)
    q, k, v, rpb = make_inputs(cfg, 0)
    sizes = [value.size for value in run_all(model, feed_of(q, k, v, rpb))]
    assert len(sizes) > 100 and max(sizes) < 1600 * 1600 / 8, max(sizes)


def run_all(model, feed):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)


@pytest.mark.parametrize("opset", [18, 23])
def test_half_precision_tiles(opset):
    cfg = dict(spatial=[13, 18], kernel=[5, 3], stride=[2, 1], dilation=[1, 2], causal=[False, False],
               heads=2, dim=16, batch=2, rpb=True)
    q, k, v, rpb = make_inputs(cfg, 4)
    from onnx import TensorProto

    got = run_cpu(na_single_node_model(cfg, TensorProto.FLOAT16, opset=opset),
                  feed_of(q.half(), k.half(), v.half(), rpb.half()))
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float32), reference(cfg, q, k, v, rpb), atol=1e-2, rtol=0)
    assert torch.isfinite(torch.from_numpy(got.astype(np.float32))).all()


def _static_spatial(model, spatial):
    """The file states q's spatial dims as numbers (a --static-spatial export): only batch stays symbolic."""
    for value in model.graph.input[:3]:
        for dim, size in zip(list(value.type.tensor_type.shape.dim)[1:-2], spatial):
            dim.dim_value = size
    return model


def _optimized_nodes(model, tmp_path) -> int:
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    import onnx

    return len(onnx.load(str(tmp_path / "optimized.onnx")).graph.node)


@pytest.mark.parametrize("seed", range(12))
def test_static_spatial_overload_matches_the_oracle_and_folds_its_index_math(seed, tmp_path):
    """Where the file knows the spatial shape, the node takes the overload "BASE@HxW", whose body has that shape as
    constants: same outputs, and ONNX Runtime folds the index nodes (the dynamic body keeps ~250 nodes)."""
    from attn_export.onnx_ops import attach_local_functions

    cfg = random_config(random.Random(5000 + seed))
    q, k, v, rpb = make_inputs(cfg, seed)
    dynamic = na_single_node_model(cfg)
    model = na_single_node_model(cfg)
    del model.functions[:]
    model = attach_local_functions(_static_spatial(model, cfg["spatial"]))
    node = model.graph.node[0]
    assert node.overload == ("rpb" if cfg["rpb"] else "") + "@" + "x".join(map(str, cfg["spatial"]))
    assert [f.overload for f in model.functions] == [node.overload]
    np.testing.assert_allclose(run_cpu(model, feed_of(q, k, v, rpb)), reference(cfg, q, k, v, rpb), atol=1e-5,
                               rtol=0, err_msg=str(cfg))
    if seed < 2:
        static_nodes, dynamic_nodes = _optimized_nodes(model, tmp_path), _optimized_nodes(dynamic, tmp_path)
        assert static_nodes < 40 < 150 < dynamic_nodes, (static_nodes, dynamic_nodes)
