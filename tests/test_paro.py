"""PARO attention: the op against a loop reference written from its contract, the ONNX function against the
op, the planner on a workload with known answers, plans that round-trip, and every bad argument."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from attn_export.calib import paro as planner
from attn_export.errors import AttnExportError
from attn_export.models import paro_attention
from attn_export.models.block_layout import from_block_mask
from attn_export.models.paro import (
    ORDER_NAMES,
    grid_permutation,
    quantize_channels,
    quantize_groups,
    quantize_tiles,
)
from attn_export.onnx_ops import attach_local_functions
from attn_export.registry import DOMAIN, PARO

from oracle import _fake_quant, paro_reference

BIT_PAIRS = list(itertools.product((16, 8, 4), repeat=2))


def random_case(seed: int, bits=(8, 8), smooth_k=True):
    """A random PARO call: grid and prefix (N rarely a multiple of the block), a different order per head,
    a random layout (diagonal always kept), broadcast over the batch or not."""
    rng = random.Random(seed)
    grid = (rng.randint(1, 4), rng.randint(2, 6), rng.randint(2, 6))
    prefix = rng.choice([0, 0, 3, 7])
    n = prefix + math.prod(grid)
    batch, heads, dim = rng.randint(1, 2), rng.randint(1, 3), rng.choice([4, 8, 16])
    block = rng.choice([4, 8, 16, 64])
    nb = -(-n // block)
    lead = rng.choice([1, batch])
    mask = torch.rand(lead, heads, nb, nb, generator=torch.Generator().manual_seed(seed)) < rng.choice([0.2, 0.5, 1])
    mask |= torch.eye(nb, dtype=torch.bool)
    count, index = from_block_mask(mask)
    perm = torch.stack([grid_permutation(rng.randrange(6), grid, prefix) for _ in range(heads)]).to(torch.int32)
    gen = torch.Generator().manual_seed(seed + 1)
    q, k, v = (torch.randn(batch, heads, n, dim, generator=gen) for _ in range(3))
    k = k + rng.choice([0.0, 2.0])  # an offset that K smoothing removes
    kw = dict(block=block, qk_bits=bits[0], pv_bits=bits[1], q_group=rng.choice([2, 4, 32]),
              k_group=rng.choice([3, 8, 64]), smooth_k=smooth_k, scale=rng.choice([None, 0.3]))
    return (q, k, v, perm, count, index), kw


# ------------------------------------------------------------------------------------------ orders


def test_grid_permutation_follows_the_contract_formula():
    grid, prefix = (2, 3, 4), 5
    sizes = dict(zip("FHW", grid))
    for order, name in enumerate(ORDER_NAMES):
        perm = grid_permutation(order, grid, prefix)
        assert torch.equal(perm, grid_permutation(name, grid, prefix))
        assert perm[:prefix].tolist() == list(range(prefix))  # prefix tokens never move
        axes = ["FHW".index(c) for c in name]
        for f, h, w in itertools.product(*(range(n) for n in grid)):
            c = (f, h, w)
            position = prefix + c[axes[0]] * sizes[name[1]] * sizes[name[2]] + c[axes[1]] * sizes[name[2]] + c[axes[2]]
            assert int(perm[position]) == prefix + f * 12 + h * 4 + w


@pytest.mark.parametrize("bad, fragment", [(6, "is not one of 0..5"), ("XYZ", "is not one of 0..5"),
                                           (True, "is not one of")])
def test_bad_orders_are_named(bad, fragment):
    with pytest.raises(AttnExportError, match=fragment):
        grid_permutation(bad, (2, 2, 2))


# ------------------------------------------------------------------------------------------ the op


@pytest.mark.parametrize("bits", BIT_PAIRS)
@pytest.mark.parametrize("smooth_k", [True, False])
def test_op_matches_the_loop_reference(bits, smooth_k):
    for seed in range(4):
        args, kw = random_case(100 * seed + bits[0] + bits[1], bits, smooth_k)
        got = paro_attention(*args, **kw)
        unquantized = bits == (16, 16)
        # fp32 agreement where nothing is quantized; otherwise the reference in the op's own precision, so that
        # both round the same values (fake quantization is exact, not approximately equal)
        want = paro_reference(*args, dtype=torch.float64 if unquantized else torch.float32, **kw)
        torch.testing.assert_close(got.double(), want.double(), atol=1e-5, rtol=0, msg=f"seed {seed} {kw}")


def test_fake_quantization_agrees_exactly_with_the_reference_rule():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 37, 8, generator=gen) * 3
    x[0, 0, :5] = 0  # an all-zero group gets scale 1
    for bits, group in ((8, 4), (4, 5), (8, 37)):
        want = x.clone()
        for b, h, start in itertools.product(range(2), range(3), range(0, 37, group)):
            want[b, h, start:start + group] = _fake_quant(x[b, h, start:start + group], bits)
        assert torch.equal(quantize_groups(x, group, bits), want)
        per_channel = x.clone()
        for b, h, d in itertools.product(range(2), range(3), range(8)):
            per_channel[b, h, :, d] = _fake_quant(x[b, h, :, d], bits)
        assert torch.equal(quantize_channels(x, bits), per_channel)
    p = torch.rand(2, 4, 3, 5, generator=gen)  # [tiles, bq, M, bkv]
    p[1, :, 2] = 0
    rows = torch.ones(4, 1, 1)
    quantized = quantize_tiles(p, rows, 8)
    assert torch.equal(quantized[1, :, 2], torch.zeros(4, 5))  # an all-zero tile stays zero (scale 1/qmax)
    peak = p[0, :, 1].max()
    assert torch.equal(quantized[0, :, 1], torch.clamp(torch.round(p[0, :, 1] / (peak / 127)), 0, 127) * (peak / 127))


def test_padded_query_rows_do_not_set_a_tile_scale():
    """The tail block's padding rows (beyond N) must not raise a tile's max: with 65 tokens and block 64 the
    second row block has one real query."""
    args, kw = random_case(7, (16, 8))
    q, k, v, _, _, _ = args
    grid, n = (1, 5, 13), 65
    q, k, v = (torch.randn(1, 1, n, 8, generator=torch.Generator().manual_seed(s)) for s in range(3))
    perm = grid_permutation(0, grid)[None].to(torch.int32)
    count, index = from_block_mask(torch.ones(1, 1, 2, 2, dtype=torch.bool))
    got = paro_attention(q, k, v, perm, count, index, block=64, qk_bits=16, pv_bits=8)
    want = paro_reference(q, k, v, perm, count, index, 64, 16, 8, dtype=torch.float32)
    torch.testing.assert_close(got, want.float(), atol=1e-5, rtol=0)


def test_sixteen_bits_and_the_full_layout_are_dense_attention_in_the_original_order():
    args, kw = random_case(11, (16, 16))
    q, k, v, perm, _, _ = args
    nb = -(-q.shape[2] // kw["block"])
    count, index = from_block_mask(torch.ones(1, q.shape[1], nb, nb, dtype=torch.bool))
    got = paro_attention(q, k, v, perm, count, index, **kw)
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=kw["scale"])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_gradients_flow_by_recomputation():
    args, kw = random_case(5, (16, 16))
    q, k, v = (t.clone().requires_grad_(True) for t in args[:3])
    paro_attention(q, k, v, *args[3:], **kw).square().sum().backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in (q, k, v))


@pytest.mark.parametrize("change, fragment", [
    (dict(qk_bits=6), "qk_bits=6 must be one of 16"),
    (dict(pv_bits=2), "pv_bits=2 must be one of 16"),
    (dict(block=0), "block=0 must be a positive int"),
    (dict(q_group=0), "q_group=0 must be a positive int"),
])
def test_bad_arguments_name_the_parameter(change, fragment):
    args, kw = random_case(2)
    with pytest.raises(AttnExportError, match=fragment):
        paro_attention(*args, **{**kw, **change})


def test_bad_permutations_and_empty_rows_are_refused():
    args, kw = random_case(3)
    q, k, v, perm, count, index = args
    twice = perm.clone()
    twice[0, 1] = twice[0, 0]
    with pytest.raises(AttnExportError, match="perm_idx of head 0 is not a permutation"):
        paro_attention(q, k, v, twice, count, index, **kw)
    with pytest.raises(AttnExportError, match="perm_idx must be int32"):
        paro_attention(q, k, v, perm.long(), count, index, **kw)
    empty = count.clone()
    empty[0, 0, 0] = 0
    with pytest.raises(AttnExportError, match="kv_count row 0 of head 0 lists no block"):
        paro_attention(q, k, v, perm, empty, index, **kw)


# ------------------------------------------------------------------------------------------ ONNX function


def single_node(kw: dict, opset: int, dtype=TensorProto.FLOAT) -> onnx.ModelProto:
    names = ["q", "k", "v", "perm_idx", "kv_count", "kv_index"]
    inputs = [helper.make_tensor_value_info(n, dtype, ["b", "h", "n", "d"]) for n in names[:3]]
    inputs += [helper.make_tensor_value_info("perm_idx", TensorProto.INT32, ["h", "n"]),
               helper.make_tensor_value_info("kv_count", TensorProto.INT32, ["x", "h", "nb"]),
               helper.make_tensor_value_info("kv_index", TensorProto.INT32, ["x", "h", "nb", "m"])]
    node = helper.make_node(PARO.onnx_op_type, names, ["out"], domain=DOMAIN, block=kw["block"],
                            qk_bits=kw["qk_bits"], pv_bits=kw["pv_bits"], q_group=kw["q_group"],
                            k_group=kw["k_group"], smooth_k=int(kw["smooth_k"]), scale=kw["scale"],
                            plugin_version="1", plugin_namespace=DOMAIN)
    output = helper.make_tensor_value_info("out", dtype, ["b", "h", "n", "d"])
    graph = helper.make_graph([node], "paro", inputs, [output])
    return attach_local_functions(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))


@pytest.mark.parametrize("bits", [(16, 16), (8, 8), (4, 4), (8, 16), (16, 4)])
@pytest.mark.parametrize("opset", [18, 21, 23])
def test_onnx_function_matches_the_op(bits, opset):
    for seed in range(3):
        args, kw = random_case(7 * seed + opset, bits, smooth_k=seed % 2 == 0)
        kw["scale"] = kw["scale"] or args[0].shape[-1] ** -0.5
        model = single_node(kw, opset)
        onnx.checker.check_model(model, full_check=True)
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        feed = dict(zip(["q", "k", "v", "perm_idx", "kv_count", "kv_index"], (a.numpy() for a in args)))
        (got,) = session.run(None, feed)
        np.testing.assert_allclose(got, paro_attention(*args, **kw).numpy(), atol=1e-5, rtol=0, err_msg=str(kw))


def test_p_tile_scale_is_floored_and_the_onnx_function_floors_alike():
    """A tile's P scale is max(tile max, 2^-30) / qmax (docs/ops/paro_attention.md): a tile whose largest probability
    is 2^-110 quantizes to zeros (unfloored it kept 127 levels of its own, and the kernels' online rescale
    overflowed); a tile at 2^-20 keeps its own scale. The ONNX function floors the same way on a layout whose second
    tile sits 110 (base 2) below the first."""
    p = torch.zeros(2, 4, 1, 5)
    p[0], p[1] = 2.0**-110, 2.0**-20
    quantized = quantize_tiles(p, torch.ones(4, 1, 1), 8)
    assert torch.equal(quantized[0], torch.zeros(4, 1, 5))
    torch.testing.assert_close(quantized[1], p[1], rtol=1e-6, atol=0)
    n, dim = 128, 8
    q, k = torch.zeros(1, 1, n, dim), torch.zeros(1, 1, n, dim)
    q[..., 0], k[:, :, 64:, 0] = 1.0, -110 * math.log(2)
    v = 1.0 + torch.rand(1, 1, n, dim, generator=torch.Generator().manual_seed(0))
    args = (q, k, v, torch.arange(n, dtype=torch.int32)[None], torch.tensor([[[2, 1]]], dtype=torch.int32),
            torch.tensor([[[[0, 1], [1, -1]]]], dtype=torch.int32))
    kw = dict(block=64, qk_bits=16, pv_bits=8, q_group=32, k_group=64, smooth_k=False, scale=1.0)
    session = ort.InferenceSession(single_node(kw, 18).SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, dict(zip(["q", "k", "v", "perm_idx", "kv_count", "kv_index"],
                                        (a.numpy() for a in args))))
    want = paro_attention(*args, **kw)
    np.testing.assert_allclose(got, want.numpy(), atol=1e-6, rtol=0)
    np.testing.assert_allclose(want.numpy(), paro_reference(*args, **kw, dtype=torch.float64).float().numpy(),
                               atol=1e-6, rtol=0)


def test_onnx_function_takes_float16():
    args, kw = random_case(9, (8, 8))
    kw["scale"] = 0.3
    model = single_node(kw, 18, TensorProto.FLOAT16)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    half = [a.half() if a.is_floating_point() else a for a in args]
    names = ["q", "k", "v", "perm_idx", "kv_count", "kv_index"]
    (got,) = session.run(None, dict(zip(names, (a.numpy() for a in half))))
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float32), paro_attention(*half, **kw).float().numpy(), atol=1e-2)


# ------------------------------------------------------------------------------------------ the planner


@pytest.fixture(scope="module")
def workload():
    pytest.importorskip("skimage", reason="the workload's content terms come from scikit-image's sample images")
    from attn_export.models.paro_workload import workload as make

    grid = (8, 16, 16)
    return grid, make(grid, 0, samples=4, seed=0), make(grid, 0, samples=2, seed=100)


def test_planner_puts_each_heads_axis_innermost(workload):
    from attn_export.models.paro_workload import INNERMOST

    grid, calib, _ = workload
    for head, orders in INNERMOST.items():
        q, k, _ = calib[head]
        plan = planner.plan_head(q, k, grid, density=0.1, block=64, scale=1.0)
        assert plan.order_name in orders, (head, plan.order_name, plan.costs)
        assert plan.density == pytest.approx(0.1, abs=0.01)


def test_temporal_head_keeps_its_mass_and_beats_the_identity_order(workload):
    grid, calib, held = workload
    q, k, _ = calib["temporal"]
    plan = planner.plan_head(q, k, grid, density=0.1, block=64, scale=1.0)
    assert plan.recall >= 0.99
    chosen = planner.head_quality(*held["temporal"], plan, None, 64, 16, 16, scale=1.0)
    identity = planner.head_quality(*held["temporal"], plan, 0, 64, 16, 16, scale=1.0)
    assert chosen["rel_l2"] <= 1e-2 and identity["rel_l2"] >= 0.5, (chosen, identity)


def test_masks_keep_the_diagonal_prefix_rows_and_columns_and_then_the_heaviest_blocks():
    mass = torch.rand(9, 9, generator=torch.Generator().manual_seed(0)).double()
    keep = planner.block_mask(mass, density=0.4, prefix=20, block=32)  # the prefix lies in block 0
    forced = torch.eye(9, dtype=torch.bool)
    forced[0], forced[:, 0] = True, True
    assert bool(keep[forced].all())
    assert int(keep.sum()) == math.ceil(0.4 * 81)  # 25 forced, 8 more by mass
    chosen, left = mass[keep & ~forced], mass[~keep]
    assert float(chosen.min()) >= float(left.max())
    crowded = planner.block_mask(mass, density=0.1, prefix=70, block=32)  # forced blocks exceed the density
    assert int(crowded.sum()) == 9 + 2 * 27 - 9 - 3  # rows and columns 0-2 plus the rest of the diagonal


def test_order_ties_go_to_the_lowest_index():
    assert planner.choose_order([(0.5, 2.0)] * 6) == 0
    assert planner.choose_order([(0.5, 2.0), (0.5, 2.0), (0.4, 2.0)] + [(0.5, 2.0)] * 3) == 2
    assert planner.choose_order([(0.5, 2.0), (0.5 * (1 - 1e-9), 2.0)] + [(0.5, 2.0)] * 4) == 0


def test_planner_arguments_are_checked():
    q = torch.randn(1, 20, 4)
    with pytest.raises(AttnExportError, match="covers 18 tokens but the attention has N=20"):
        planner.plan_head(q, q, (2, 3, 3))
    with pytest.raises(AttnExportError, match="--paro-density 1.5 must lie in"):
        planner.plan_head(q, q, (2, 2, 5), density=1.5)
    with pytest.raises(AttnExportError, match="--paro-density 0 must lie in"):
        planner.plan_head(q, q, (2, 2, 5), density=0)


def test_buckets_plan_one_mask_each_and_one_order():
    pytest.importorskip("skimage")
    from attn_export.models.paro_workload import workload as make

    grid = (4, 8, 8)
    wide, narrow = make(grid, 0, samples=2, heads=("temporal", "local"), seed=3).values()
    q = torch.cat([wide[0], narrow[0]])
    k = torch.cat([wide[1], narrow[1]])
    plan = planner.plan_head(q, k, grid, density=0.2, block=16, scale=1.0, buckets=[0, 0, 1, 1], n_buckets=2)
    assert plan.kv_count.shape[0] == 2 and plan.masks.shape[1] == 2
    assert not torch.equal(plan.masks[plan.order, 0], plan.masks[plan.order, 1])


def test_plan_files_round_trip(tmp_path):
    from attn_export.models import zoo

    model, examples = zoo.create("paro-dit-tiny")
    calib = [zoo.entry("paro-dit-tiny").example_inputs(seed) for seed in range(3)]
    plan = planner.plan_model(model, calib, (4, 8, 8), prefix=8, density=0.3, block=32)
    plan.save(tmp_path / "plan.json")
    again = planner.ParoPlan.load(tmp_path / "plan.json")
    assert again.summary() == plan.summary()
    for a, b in zip(plan.calls, again.calls):
        assert np.array_equal(a.perm_idx, b.perm_idx) and np.array_equal(a.kv_index, b.kv_index)
    (tmp_path / "junk.json").write_text("{}")
    with pytest.raises(AttnExportError, match="is missing"):
        planner.ParoPlan.load(tmp_path / "junk.json")
    np.savez(tmp_path / "junk.npz")
    with pytest.raises(AttnExportError, match="is not an attn-export PARO plan"):
        planner.ParoPlan.load(tmp_path / "junk.json")


@pytest.mark.slow
def test_cogvideox_sized_grid_plans_without_an_n_by_n_matrix():
    """13 x 30 x 45 + 226 prefix (N = 17,776): one N x N float32 matrix would take 1.26 GB."""
    import subprocess
    import sys

    script = """
import resource, torch
from attn_export.calib.paro import plan_head
grid, prefix, n = (13, 30, 45), 226, 226 + 13 * 30 * 45
gen = torch.Generator().manual_seed(0)
q, k = torch.randn(1, n, 16, generator=gen), torch.randn(1, n, 16, generator=gen)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
plan = plan_head(q, k, grid, prefix, density=0.3, block=64)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024, plan.kv_count.shape[-1])
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=900)
    grown_mb, blocks = out.stdout.split()
    assert int(blocks) == 278 and float(grown_mb) < 300, out.stdout
