"""--lowering attention: every custom node as standard ops around one ONNX Attention node (opset 23) with an
exact mask. The lowered graphs are compared with the brute-force oracles (tests/oracle.py) on ONNX Runtime;
the size guard, the opset rule and the engine step without a plugin library are checked here too."""

from __future__ import annotations

import json
import random

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from attn_export import defaults, trt
from attn_export.errors import AttnExportError
from attn_export.lowering import attention_opset, evaluate_dim, lower_to_attention
from attn_export.onnx_ops import attach_local_functions
from attn_export.registry import BLOCK_SPARSE, DOMAIN, PARO

from helpers import SMALL, assert_one_line_error, na_single_node_model, random_block_bias, random_case, run
from oracle import (
    block_sparse_reference,
    make_inputs,
    neighborhood_attention_reference,
    paro_reference,
    random_config,
)

OPSET = defaults.ATTENTION_MIN_OPSET


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    onnx.checker.check_model(model, full_check=True)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _assert_lowered(model: onnx.ModelProto, calls: int = 1) -> None:
    assert not [n for n in model.graph.node if n.domain == DOMAIN]
    assert not model.functions and all(o.domain != DOMAIN for o in model.opset_import)
    assert sum(n.op_type == "Attention" for n in model.graph.node) == calls


def _static_heads(model: onnx.ModelProto, heads: int, dim: int, spatial=()) -> onnx.ModelProto:
    """The file states heads and head_dim as numbers (as torch.export writes them): the 3-D Attention form; with
    ``spatial`` also the spatial dims (a --static-spatial export: the mask's sizes become constants)."""
    for value in list(model.graph.input[:3]) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        dims[-2].dim_value, dims[-1].dim_value = heads, dim
        for axis, size in enumerate(spatial):
            dims[1 + axis].dim_value = size
    return model


@pytest.mark.parametrize("seed", range(60))
def test_neighborhood_lowering_matches_the_oracle_on_random_configs(seed):
    """Kernel, stride, dilation, causality per axis, 1-3 axes, rpb: the mask is exact (3-D and 4-D forms)."""
    cfg = random_config(random.Random(1000 + seed))
    q, k, v, rpb = make_inputs(cfg, seed)
    scale = None if seed % 3 else 0.37
    model = na_single_node_model(cfg, scale=scale, opset=OPSET)
    if seed % 2:
        model = _static_heads(model, cfg["heads"], cfg["dim"], cfg["spatial"] if seed % 4 == 3 else ())
    model = lower_to_attention(model)
    _assert_lowered(model)
    feed = {"q": q.numpy(), "k": k.numpy(), "v": v.numpy()} | ({"rpb": rpb.numpy()} if rpb is not None else {})
    (got,) = _session(model).run(None, feed)
    want = neighborhood_attention_reference(q, k, v, cfg["kernel"], cfg["stride"], cfg["dilation"], cfg["causal"],
                                            scale=scale, rpb=rpb)
    np.testing.assert_allclose(got, want.numpy(), atol=1e-5, rtol=0, err_msg=str(cfg))


def test_neighborhood_lowering_is_dynamic_in_batch_and_spatial_size():
    cfg = dict(spatial=[9, 10], kernel=[3, 4], stride=[2, 1], dilation=[1, 2], causal=[False, True],
               heads=2, dim=8, batch=1, rpb=True)
    session = _session(lower_to_attention(_static_heads(na_single_node_model(cfg, opset=OPSET), 2, 8)))
    for spatial, batch in (([9, 10], 1), ([14, 8], 3)):
        q, k, v, rpb = make_inputs(dict(cfg, spatial=spatial, batch=batch), 7)
        (got,) = session.run(None, {"q": q.numpy(), "k": k.numpy(), "v": v.numpy(), "rpb": rpb.numpy()})
        want = neighborhood_attention_reference(q, k, v, cfg["kernel"], cfg["stride"], cfg["dilation"],
                                                cfg["causal"], rpb=rpb)
        np.testing.assert_allclose(got, want.numpy(), atol=1e-5, rtol=0)


def test_neighborhood_lowering_gives_nan_for_an_axis_shorter_than_the_window():
    cfg = dict(spatial=[9, 10], kernel=[3, 4], stride=[1, 1], dilation=[2, 1], causal=[False, True],
               heads=2, dim=8, batch=1, rpb=False)
    session = _session(lower_to_attention(na_single_node_model(cfg, opset=OPSET)))
    for spatial, bad in (([6, 4], False), ([5, 10], True)):  # k*d = 6 and 4
        q, k, v, _ = make_inputs(dict(cfg, spatial=spatial), 0)
        (got,) = session.run(None, {"q": q.numpy(), "k": k.numpy(), "v": v.numpy()})
        assert np.isnan(got).all() if bad else np.isfinite(got).all(), spatial


def _single_node(spec, inputs: dict, attrs: dict) -> onnx.ModelProto:
    """One custom node of ``spec`` over graph inputs named like its formal inputs, every dim symbolic."""
    values = []
    for name, array in inputs.items():
        elem = helper.np_dtype_to_tensor_dtype(array.dtype)
        values.append(helper.make_tensor_value_info(name, elem, [f"{name}{i}" for i in range(array.ndim)]))
    node = helper.make_node(spec.onnx_op_type, list(inputs), ["out"], domain=DOMAIN, plugin_version="1",
                            plugin_namespace=DOMAIN, **attrs)
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["o0", "o1", "o2", "o3"])
    graph = helper.make_graph([node], "g", values, [out])
    return attach_local_functions(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]))


@pytest.mark.parametrize("seed", range(40))
def test_block_sparse_lowering_matches_the_oracle(seed):
    """Random padded-ELL layouts (broadcast batch/heads, -1 padding, empty rows) and, on odd seeds, block_bias
    with -inf keys and fully masked queries: same outputs as the oracle, zeros where a query has no key."""
    q, k, v, count, index, block_q, block_kv, scale = random_case(seed)
    bias = random_block_bias(seed, q, count, index, block_q, block_kv) if seed % 2 else None
    inputs = {"q": q.numpy(), "k": k.numpy(), "v": v.numpy(), "kv_count": count.numpy(), "kv_index": index.numpy()}
    if bias is not None:
        inputs["block_bias"] = bias.numpy()
    model = lower_to_attention(_single_node(BLOCK_SPARSE, inputs, dict(
        block_q=block_q, block_kv=block_kv, scale=q.shape[-1] ** -0.5 if scale is None else scale)))
    _assert_lowered(model)
    (got,) = _session(model).run(None, inputs)
    want = block_sparse_reference(q, k, v, count, index, block_q, block_kv, scale=scale, block_bias=bias)
    np.testing.assert_allclose(got, want.numpy(), atol=1e-5, rtol=0)


def _paro_case(seed: int, n: int = 70, heads: int = 2, block: int = 16):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, heads, n, 8, generator=gen) for _ in range(3))
    perm = torch.stack([torch.randperm(n, generator=gen) for _ in range(heads)]).int()
    nb = -(-n // block)
    mask = torch.rand(1, heads, nb, nb, generator=gen) < 0.4
    mask |= torch.eye(nb, dtype=torch.bool)  # every row keeps a block, as the planner guarantees
    from attn_export.models import block_layout

    count, index = block_layout.from_block_mask(mask)
    return q, k, v, perm, count, index


def _paro_model(inputs: dict, block: int, qk_bits: int = 16, pv_bits: int = 16) -> onnx.ModelProto:
    return _single_node(PARO, inputs, dict(block=block, qk_bits=qk_bits, pv_bits=pv_bits, q_group=32, k_group=64,
                                           smooth_k=1, scale=8 ** -0.5))


@pytest.mark.parametrize("seed", range(4))
def test_paro_lowering_matches_float_paro(seed):
    q, k, v, perm, count, index = _paro_case(seed)
    inputs = {"q": q.numpy(), "k": k.numpy(), "v": v.numpy(), "perm_idx": perm.numpy(), "kv_count": count.numpy(),
              "kv_index": index.numpy()}
    model = lower_to_attention(_paro_model(inputs, 16))
    _assert_lowered(model)
    (got,) = _session(model).run(None, inputs)
    want = paro_reference(q, k, v, perm, count, index, 16, qk_bits=16, pv_bits=16)
    np.testing.assert_allclose(got, want.numpy(), atol=1e-5, rtol=0)


def test_paro_lowering_refuses_quantized_nodes_naming_the_flags():
    q, k, v, perm, count, index = _paro_case(0)
    inputs = {"q": q.numpy(), "k": k.numpy(), "v": v.numpy(), "perm_idx": perm.numpy(), "kv_count": count.numpy(),
              "kv_index": index.numpy()}
    with pytest.raises(AttnExportError, match="--paro-qk fp16 --paro-pv fp16"):
        lower_to_attention(_paro_model(inputs, 16, qk_bits=8))


def test_size_guard_names_the_call_and_the_size_per_call_and_per_model():
    cfg = dict(spatial=[16, 16], kernel=[3, 3], stride=[1, 1], dilation=[1, 1], causal=[False, False],
               heads=2, dim=8, batch=1, rpb=False)
    dims = {"batch": 1, "s0": 16, "s1": 16, "heads": 2, "dim": 8}
    with pytest.raises(AttnExportError, match=r"NeighborhoodAttention node '.*' needs a 256x256 bool mask .*per call"):
        lower_to_attention(na_single_node_model(cfg, opset=OPSET), dims, call_budget=256 * 256 - 1)
    lower_to_attention(na_single_node_model(cfg, opset=OPSET), dims, call_budget=256 * 256)  # at the budget: fine
    with pytest.raises(AttnExportError, match="per model"):
        lower_to_attention(na_single_node_model(cfg, opset=OPSET), dims, model_budget=100)


def test_size_guard_sizes_a_block_sparse_mask_by_the_layout_broadcast():
    """A layout shared by batch and heads ([1, 1, nQB]) gives a 1 x 1 x Sq x Skv mask, whatever B and H are."""
    q, k, v, count, index, block_q, block_kv, _ = random_case(3)
    inputs = {"q": q.numpy(), "k": k.numpy(), "v": v.numpy(), "kv_count": count[:1, :1].numpy(),
              "kv_index": index[:1, :1].numpy()}
    model = _single_node(BLOCK_SPARSE, inputs, dict(block_q=block_q, block_kv=block_kv, scale=0.5))
    dims = {f"{name}{i}": size for name, array in inputs.items() for i, size in enumerate(array.shape)}
    sq, skv = q.shape[2], k.shape[2]
    with pytest.raises(AttnExportError, match=f"needs a 1x1x{sq}x{skv} bool mask"):
        lower_to_attention(model, dims, call_budget=sq * skv - 1)


def test_dims_evaluate_from_torch_symbols_and_input_names():
    assert evaluate_dim("4*s16", {"s16": 5}) == 20
    assert evaluate_dim("batch", {"batch": 3}) == 3
    with pytest.raises(KeyError):
        evaluate_dim("s1 + 1", {})


def test_opset_below_23_is_refused_and_the_default_rises():
    with pytest.raises(AttnExportError, match="needs --opset 23 or newer"):
        attention_opset(22)
    assert attention_opset(None) == OPSET


def test_export_options_resolve_the_opset_of_the_attention_lowering():
    from attn_export.pipeline import ExportOptions

    assert ExportOptions(lowering="attention", engine=False).prepare().opset == OPSET
    assert ExportOptions(lowering="attention", engine=False, quantize="int4").prepare().opset == OPSET
    assert ExportOptions(engine=False).prepare().opset == defaults.OPSET  # the plugin lowering keeps its default
    with pytest.raises(AttnExportError, match="--opset 22"):
        ExportOptions(lowering="attention", opset=22, engine=False).prepare()


@pytest.mark.parametrize("args, fragment", [
    (["--lowering", "attention", "--opset", "21"], "--lowering attention needs --opset 23"),
    (["--lowering", "onnx"], "--lowering onnx is not one of plugin, attention"),
    (["--lowering", "attention", "--paro", "--paro-grid", "1x8x16", "--paro-qk", "int8"], "--paro-qk int8"),
])
def test_cli_refuses_bad_lowering_flags_before_any_work(args, fragment, tmp_path):
    out = tmp_path / "out"
    assert_one_line_error(run(SMALL, "-o", out, *args), 2, fragment)
    assert not out.exists()


def test_cli_size_guard_exits_2_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(defaults, "ATTENTION_MASK_BUDGET_CALL", 128 * 128 - 1)  # na1d-causal: 128 tokens
    out = tmp_path / "out"
    result = run(SMALL, "-o", out, "--lowering", "attention", "--no-check")
    assert_one_line_error(result, 2, "needs a 128x128 bool mask")
    assert not out.exists()


def test_attention_engine_needs_no_plugin_library_and_records_no_plugin_layers(tmp_path, monkeypatch):
    """The engine step of an attention-lowered file: TensorRT (faked, as the engine tests do) without any plugin
    library; the parsed network is not checked for plugin layers and engine.json lists none."""
    from polygraphy.backend import trt as poly

    class FakeTensorRT:
        __version__ = "10.14.1"
        Builder = object

    monkeypatch.setattr(trt, "tensorrt_module", lambda: FakeTensorRT)
    monkeypatch.setattr(trt, "plugin_library", lambda: pytest.fail("the attention lowering needs no plugin library"))
    monkeypatch.setattr(poly, "Profile", type("Profile", (dict,), {"add": lambda self, name, *s: None}))
    monkeypatch.setattr(poly, "CreateConfig", lambda **kw: kw)
    monkeypatch.setattr(poly, "NetworkFromOnnxPath", lambda path, **kw: (lambda: ("builder", None, "parser")))
    monkeypatch.setattr(poly, "LoadPlugins", lambda **kw: pytest.fail("no plugins to load"))
    monkeypatch.setattr(poly, "EngineBytesFromNetwork", lambda network, **kw: (lambda: b"engine"))
    cfg = dict(spatial=[8], kernel=[3], stride=[1], dilation=[1], causal=[False], heads=2, dim=8, batch=1, rpb=False)
    onnx_path = tmp_path / "model.onnx"
    onnx.save(lower_to_attention(na_single_node_model(cfg, opset=OPSET)), onnx_path)
    assert trt.engine_available(plugins=False)
    profile = {"q": trt.ShapeRange((1, 8, 2, 8), (1, 8, 2, 8), (1, 8, 2, 8))}
    meta = trt.build_engine(onnx_path, tmp_path / "model.engine", profile, meta_path=tmp_path / "engine.json")
    assert meta["plugin_layers"] == [] and meta["plugin_library"] is None
    assert json.loads((tmp_path / "engine.json").read_text())["plugin_layers"] == []
    assert not trt.engine_needs_plugins(tmp_path / "model.engine")


def test_attention_lowering_refuses_tensorrt_older_than_10_14(monkeypatch):
    monkeypatch.setattr(trt, "tensorrt_module", lambda: type("T", (), {"__version__": "10.13.2", "Builder": object}))
    with pytest.raises(AttnExportError, match="TensorRT 10.14 or newer") as info:
        trt.require_attention_tensorrt()
    assert info.value.exit_code == 3
    assert not trt.engine_available(plugins=False)


def _no_progress(title):
    import contextlib

    return contextlib.nullcontext()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(__import__("attn_export.models.zoo", fromlist=["names"]).names()))
def test_every_zoo_model_exports_with_attention_lowering_and_passes_parity(name, tmp_path):
    """No custom node, exactly one Attention node per call (the calls counted in the plugin lowering's file),
    ONNX Runtime parity against the original model, and where the file is dynamic a second batch and a second
    spatial size in the check (the masks follow Shape(q))."""
    from attn_export.loader import load_model
    from attn_export.pipeline import ExportOptions, export_job

    loaded = load_model(f"zoo:{name}")
    result = export_job(loaded, tmp_path / "attention", ExportOptions(lowering="attention"), _no_progress)
    assert result.passed, result.report.table()
    lowered = onnx.load(result.onnx_path)
    plugin = export_job(loaded, tmp_path / "plugin", ExportOptions(check=False), _no_progress)
    calls = sum(n.domain == DOMAIN for n in onnx.load(plugin.onnx_path).graph.node)
    assert calls > 0
    _assert_lowered(lowered, calls)
    report = json.loads(result.report_path.read_text())
    assert report["export"]["lowering"] == "attention" and report["export"]["opset"] == OPSET
    shapes = result.report.inputs[loaded.input_names[0]]["shapes"]
    dims = lowered.graph.input[0].type.tensor_type.shape.dim
    if dims[0].dim_param:  # dynamic batch: checked at batch 2 too
        assert any(s[0] == 2 for s in shapes), shapes
    if any(d.dim_param for d in list(dims)[1:]):  # dynamic spatial: checked at a second size
        assert len({tuple(s[1:]) for s in shapes}) > 1, shapes
    if result.paro_report is not None:  # `check` judges the lowered PARO file as the export did: by its criterion
        from attn_export.pipeline import check_job

        checked = check_job(loaded, result.onnx_path, None, ExportOptions())
        assert checked.mode == result.paro_report.mode == "paro-fp16" and checked.passed, checked.table()


def test_cli_export_with_attention_lowering_passes_parity_at_a_second_batch_and_length(tmp_path):
    """The fast end-to-end case (the zoo-wide one is marked slow): report.json names the lowering, the file has no
    attn_export node and one Attention node per layer, and the check ran at batch 2 and at another length."""
    out = tmp_path / "out"
    result = run(SMALL, "-o", out, "--lowering", "attention")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["export"]["lowering"] == "attention" and report["export"]["custom_nodes"] == {}
    model = onnx.load(out / "model.onnx")
    _assert_lowered(model, calls=2)  # na1d-causal: two neighborhood layers
    shapes = report["inputs"]["tokens"]["shapes"]
    assert [1, 128] in shapes and [2, 128] in shapes and any(s[1] != 128 for s in shapes), shapes
    square = [i.name for i in model.graph.initializer if len(i.dims) >= 2 and min(i.dims[-2:]) >= 128]
    assert not square, f"N x N initializers: {square}"  # the masks are computed in the graph, never stored
