"""BlockSparseAttention in ONNX: the local function against the reference on random layouts, export
structure (one node per call, static layouts as initializers, routing as standard ops), zoo parity on
ONNX Runtime, and bad layouts from the CLI."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from attn_export.loader import load_model
from attn_export.models import zoo
from attn_export.models.layers import BlockSparseSelfAttention
from attn_export.onnx_export import attach_local_functions
from attn_export.parity import Tolerances
from attn_export.pipeline import ExportOptions, export_job
from attn_export.registry import BLOCK_SPARSE, DOMAIN

from helpers import assert_one_line_error, factory_checkpoint, random_block_bias, random_case, run
from oracle import block_sparse_reference

FLOAT = {torch.float32: TensorProto.FLOAT, torch.float16: TensorProto.FLOAT16}


def one_node_session(block_q, block_kv, scale, dtype=torch.float32, opset=18, with_bias=False):
    def sym(*names):  # every tensor symbolic: one session serves all shapes
        return [helper.make_tensor_value_info(n, t, [f"{n}{i}" for i in range(rank)]) for n, t, rank in names]

    inputs = ["q", "k", "v", "kv_count", "kv_index"] + (["block_bias"] if with_bias else [])
    node = helper.make_node(BLOCK_SPARSE.onnx_op_type, inputs, ["out"],
                            domain=DOMAIN, block_q=block_q, block_kv=block_kv, scale=scale,
                            plugin_version="1", plugin_namespace="attn_export")
    graph = helper.make_graph(
        [node], "bsa",
        sym(("q", FLOAT[dtype], 4), ("k", FLOAT[dtype], 4), ("v", FLOAT[dtype], 4), ("kv_count", TensorProto.INT32, 3),
            ("kv_index", TensorProto.INT32, 4), *([("block_bias", FLOAT[dtype], 6)] if with_bias else [])),
        sym(("out", FLOAT[dtype], 4)))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(DOMAIN, 1)])
    model = attach_local_functions(model)
    onnx.checker.check_model(model, full_check=True)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("seed", range(30))
def test_local_function_matches_reference(seed):
    q, k, v, count, index, bq, bkv, scale = random_case(seed)
    scale_value = q.shape[-1] ** -0.5 if scale is None else scale
    session = one_node_session(bq, bkv, scale_value, opset=18 + seed % 6)
    out = session.run(None, {"q": q.numpy(), "k": k.numpy(), "v": v.numpy(), "kv_count": count.numpy(),
                             "kv_index": index.numpy()})[0]
    ref = block_sparse_reference(q, k, v, count, index, bq, bkv, scale_value)
    np.testing.assert_allclose(out, ref.numpy(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("seed", range(20))
def test_block_bias_overload_matches_reference(seed):
    q, k, v, count, index, bq, bkv, scale = random_case(seed)
    bias = random_block_bias(seed, q, count, index, bq, bkv)
    scale_value = q.shape[-1] ** -0.5 if scale is None else scale
    session = one_node_session(bq, bkv, scale_value, opset=18 + seed % 6, with_bias=True)
    out = session.run(None, {"q": q.numpy(), "k": k.numpy(), "v": v.numpy(), "kv_count": count.numpy(),
                             "kv_index": index.numpy(), "block_bias": bias.numpy()})[0]
    ref = block_sparse_reference(q, k, v, count, index, bq, bkv, scale_value, bias)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, ref.numpy(), atol=1e-5, rtol=0)


def test_local_function_in_fp16():
    q, k, v, count, index, bq, bkv, _ = random_case(4)
    session = one_node_session(bq, bkv, q.shape[-1] ** -0.5, torch.float16)
    out = session.run(None, {"q": q.half().numpy(), "k": k.half().numpy(), "v": v.half().numpy(),
                             "kv_count": count.numpy(), "kv_index": index.numpy()})[0]
    assert out.dtype == np.float16 and np.isfinite(out).all()
    np.testing.assert_allclose(out.astype(np.float64), block_sparse_reference(q, k, v, count, index, bq, bkv).numpy(),
                               atol=1e-2, rtol=0)


def test_local_function_memory_follows_listed_blocks():
    """At Sq = Skv = 16384 with 2 blocks of 64 per row, an S x S score matrix would take 1 GiB per
    head; ONNX Runtime runs the function on a few MB of gathered blocks."""
    import resource

    s, block, heads, dim = 16384, 64, 1, 16
    n_blocks = s // block
    rows = torch.arange(n_blocks)
    index = torch.stack([rows, (rows + 1) % n_blocks], -1).sort(-1).values[None, None].to(torch.int32)
    count = torch.full((1, 1, n_blocks), 2, dtype=torch.int32)
    session = one_node_session(block, block, dim ** -0.5)
    q = np.random.default_rng(0).standard_normal((1, heads, s, dim)).astype(np.float32)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = session.run(None, {"q": q, "k": q, "v": q, "kv_count": count.numpy(), "kv_index": index.numpy()})[0]
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    assert out.shape == q.shape and grown < 300, f"peak RSS grew by {grown:.0f} MB"


class TwoLayers(torch.nn.Module):
    def __init__(self, routed: bool):
        super().__init__()
        kw = dict(topk=2) if routed else dict(layout=zoo.local_global_layout(4))
        self.a = BlockSparseSelfAttention(32, 2, 4, **kw)
        self.b = BlockSparseSelfAttention(32, 2, 4, **kw)

    def forward(self, x):
        return self.b(self.a(x))


@pytest.mark.parametrize("routed", [False, True], ids=["static", "routed"])
def test_export_structure(routed, tmp_path):
    from attn_export.onnx_export import export

    torch.manual_seed(0)
    model = TwoLayers(routed).eval()
    x = torch.randn(2, 16, 32)
    proto = export(model, (x,), tmp_path / "m.onnx", dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
                   input_names=["x"])
    nodes = [n for n in proto.graph.node if n.domain == DOMAIN]
    assert [n.op_type for n in nodes] == ["BlockSparseAttention"] * 2  # one node per call
    attrs = {a.name: helper.get_attribute_value(a) for a in nodes[0].attribute}
    assert attrs["block_q"] == attrs["block_kv"] == 4 and attrs["plugin_version"] == b"1"
    assert attrs["plugin_namespace"] == b"attn_export" and attrs["scale"] == pytest.approx(16 ** -0.5)
    assert [(f.domain, f.name) for f in proto.functions] == [(DOMAIN, "BlockSparseAttention")]
    initializers = {i.name for i in proto.graph.initializer}
    assert (nodes[0].input[4] in initializers) != routed  # static layouts are initializers
    ops = Counter(n.op_type for n in proto.graph.node)
    if routed:
        assert ops["TopK"] == 2 and ops["ReduceMean"] >= 4
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        xb = torch.randn(batch, 16, 32)
        np.testing.assert_allclose(session.run(None, {"x": xb.numpy()})[0], model(xb).detach().numpy(),
                                   atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["bsa-vit", "biformer-tiny"])
def test_zoo_model_parity_on_onnxruntime(name, tmp_path):
    import contextlib

    loaded = load_model(f"zoo:{name}")
    result = export_job(loaded, tmp_path, ExportOptions(tolerances=Tolerances(1e-4, 1e-4)),
                        lambda title: contextlib.nullcontext())
    assert result.report.passed, result.report.table()
    assert len(result.report.comparisons) == 2  # batch 1 and 2
    proto = onnx.load(result.onnx_path)
    assert sum(n.op_type == "BlockSparseAttention" for n in proto.graph.node) == 2


def test_bad_layout_from_the_cli_is_exit_2(tmp_path):
    checkpoint, factory = factory_checkpoint(tmp_path, (
        "import torch\n"
        "from attn_export.models.layers import BlockSparseSelfAttention\n"
        "class Bad(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.attn = BlockSparseSelfAttention(16, 2, 4, layout=torch.ones(1, 1, 2, 2, dtype=torch.bool))\n"
        "        self.attn.kv_index[0, 0, 1, 1] = 7  # a block past the 2 kv blocks\n"
        "    def forward(self, x):\n"
        "        return self.attn(x)\n"
        "def build():\n"
        "    return Bad()\n"))
    out = tmp_path / "out"
    result = run(checkpoint, "--factory", factory, "--input-shape", "x=1x8x16", "-o", out)
    assert_one_line_error(result, 2, "layer 'attn': block_sparse_attention: kv_index lists block 7")
    assert not out.exists()
