"""The CPU op against the brute-force dense-mask reference of docs/ops/neighborhood_attention.md, Semantics."""

from __future__ import annotations

import random

import pytest
import torch

from attn_export import AttnExportError
from attn_export.models import neighborhood_attention

from oracle import axis_neighbors, make_inputs, neighborhood_attention_reference, random_config

N_RANDOM = 300
ATOL = 1e-5  # fp32 op vs float64 reference


@pytest.mark.parametrize("seed", range(N_RANDOM))
def test_matches_reference_on_random_configs(seed):
    cfg = random_config(random.Random(seed))
    q, k, v, rpb = make_inputs(cfg, seed)
    args = (cfg["kernel"], cfg["stride"], cfg["dilation"], cfg["causal"])
    scale = None if seed % 2 else 0.37  # the default head_dim**-0.5 and an explicit one
    got = neighborhood_attention(q, k, v, *args, scale=scale, rpb=rpb)
    want = neighborhood_attention_reference(q, k, v, *args, scale=scale, rpb=rpb)
    torch.testing.assert_close(got.double(), want, atol=ATOL, rtol=0, msg=lambda m: f"{cfg}: {m}")


def test_random_configs_cover_the_semantics():
    cfgs = [random_config(random.Random(s)) for s in range(N_RANDOM)]
    for rank in (1, 2, 3):
        assert sum(len(c["spatial"]) == rank for c in cfgs) >= 20
    assert sum(any(k % 2 == 0 for k in c["kernel"]) for c in cfgs) >= 50
    assert sum(any(s > 1 for s in c["stride"]) for c in cfgs) >= 50
    assert sum(any(d > 1 for d in c["dilation"]) for c in cfgs) >= 50
    assert sum(any(c["causal"]) for c in cfgs) >= 50
    assert sum(c["rpb"] for c in cfgs) >= 50
    assert sum(len(set(c["spatial"])) > 1 for c in cfgs) >= 50


@pytest.mark.parametrize("seed", range(50))
def test_noncausal_window_has_exactly_k_keys_and_bias_index_in_range(seed):
    rng = random.Random(seed)
    k, d = rng.randint(2, 9), rng.randint(1, 3)
    s, n = rng.randint(1, k), k * d + rng.randint(0, 12)
    for i in range(n):
        keys = axis_neighbors(i, n, k, s, d, causal=False)
        assert len(keys) == k
        assert all(0 <= r <= 2 * k - 2 for r in keys.values())
        causal = axis_neighbors(i, n, k, s, d, causal=True)
        assert 1 <= len(causal) <= k and max(causal) <= i


def test_stride_equal_to_kernel_is_blocked_attention():
    q, k, v = torch.randn(3, 1, 12, 2, 8).unbind(0)
    got = neighborhood_attention(q, k, v, kernel_size=4, stride=4)
    blocks = [torch.nn.functional.scaled_dot_product_attention(
        *(t[:, b * 4:(b + 1) * 4].transpose(1, 2) for t in (q, k, v))).transpose(1, 2) for b in range(3)]
    torch.testing.assert_close(got, torch.cat(blocks, dim=1), atol=1e-5, rtol=0)


def test_kernel_covering_the_axis_is_full_attention():
    q, k, v = torch.randn(3, 2, 6, 5, 2, 8).unbind(0)
    got = neighborhood_attention(q, k, v, kernel_size=(6, 5))
    flat = [t.reshape(2, 30, 2, 8).transpose(1, 2) for t in (q, k, v)]
    want = torch.nn.functional.scaled_dot_product_attention(*flat).transpose(1, 2).reshape(q.shape)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_accumulate_in_fp32(dtype):
    cfg = dict(spatial=[9, 11], kernel=[3, 5], stride=[1, 2], dilation=[2, 1], causal=[False, False],
               heads=2, dim=16, batch=2, rpb=True)
    q, k, v, rpb = make_inputs(cfg, 0)
    args = (cfg["kernel"], cfg["stride"], cfg["dilation"], cfg["causal"])
    got = neighborhood_attention(q.to(dtype), k.to(dtype), v.to(dtype), *args, rpb=rpb.to(dtype))
    assert got.dtype == dtype
    want = neighborhood_attention_reference(q, k, v, *args, rpb=rpb)
    torch.testing.assert_close(got.double(), want, atol=1e-2 if dtype == torch.float16 else 5e-2, rtol=0)


def test_gradients_match_reference():
    cfg = dict(spatial=[7, 6], kernel=[3, 2], stride=[1, 1], dilation=[2, 1], causal=[False, False],
               heads=2, dim=4, batch=1, rpb=True)
    inputs = [t.double().requires_grad_(True) for t in make_inputs(cfg, 3)]
    args = (cfg["kernel"], cfg["stride"], cfg["dilation"], cfg["causal"])
    got = torch.autograd.grad(neighborhood_attention(*inputs[:3], *args, rpb=inputs[3]).square().sum(), inputs)
    reference = neighborhood_attention_reference(*inputs[:3], *args, rpb=inputs[3])
    want = torch.autograd.grad(reference.square().sum(), inputs)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-9, rtol=1e-7)


def test_long_inputs_are_chunked_without_changing_the_result(monkeypatch):
    import attn_export.models.neighborhood as na

    q, k, v = torch.randn(3, 2, 40, 2, 8).unbind(0)
    whole = neighborhood_attention(q, k, v, 5, is_causal=True)
    monkeypatch.setattr(na, "_CHUNK_BYTES", 1)  # one query per chunk
    torch.testing.assert_close(neighborhood_attention(q, k, v, 5, is_causal=True), whole, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "kwargs, shape, fragment",
    [
        (dict(kernel_size=1), (1, 8, 2, 4), "kernel_size=1 on axis 0 is below the minimum 2"),
        (dict(kernel_size=(3, 9)), (1, 8, 8, 2, 4), "kernel_size*dilation=9*1=9 on axis 1 exceeds the axis length 8"),
        (dict(kernel_size=3, dilation=(1, 3)), (1, 8, 8, 2, 4), "on axis 1 exceeds the axis length 8"),
        (dict(kernel_size=3, stride=4), (1, 8, 2, 4), "stride=4 on axis 0 must lie in [1, kernel_size=3]"),
        (dict(kernel_size=3, stride=0), (1, 8, 2, 4), "stride=0 on axis 0"),
        (dict(kernel_size=3, dilation=0), (1, 8, 2, 4), "dilation=0 on axis 0 is below the minimum 1"),
        (dict(kernel_size=(3, 3)), (1, 8, 2, 4), "kernel_size has 2 values but the input has 1 spatial axes"),
        (dict(kernel_size=3), (1, 2, 4), "expected [B, *spatial, heads, head_dim]"),
        (dict(kernel_size=3), (1, 4, 4, 4, 4, 2, 4), "expected [B, *spatial, heads, head_dim]"),
        (dict(kernel_size=3, is_causal=True, rpb=torch.zeros(2, 5)), (1, 8, 2, 4),
         "rpb is only defined for non-causal"),
        (dict(kernel_size=3, rpb=torch.zeros(2, 4)), (1, 8, 2, 4), "expected [heads, 2k-1 per axis] = [2, 5]"),
        (dict(kernel_size=2.5), (1, 8, 2, 4), "must be an int"),
    ],
)
def test_invalid_parameters_name_the_parameter_axis_and_limit(kwargs, shape, fragment):
    q = torch.randn(shape)
    with pytest.raises(AttnExportError) as info:
        neighborhood_attention(q, q, q, **kwargs)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_mismatched_qkv_are_rejected():
    q = torch.randn(1, 8, 2, 4)
    with pytest.raises(AttnExportError, match="one shape"):
        neighborhood_attention(q, q, q[..., :2], 3)
    with pytest.raises(AttnExportError, match="one dtype"):
        neighborhood_attention(q, q, q.double(), 3)


def test_torch_export_keeps_each_call_as_one_opaque_node():
    from attn_export.models import NeighborhoodAttention2D

    model = torch.nn.Sequential(NeighborhoodAttention2D(8, 2, 3), NeighborhoodAttention2D(8, 2, 3, rel_pos_bias=True))
    program = torch.export.export(model.eval(), (torch.randn(2, 7, 9, 8),))
    targets = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    assert targets.count("attn_export.neighborhood_attention.default") == 2
    assert not any("softmax" in t for t in targets)


def test_layers_validate_their_configuration_and_input_rank():
    from attn_export.models import NeighborhoodAttention1D, NeighborhoodAttention3D

    with pytest.raises(AttnExportError, match="dim=10 is not divisible by num_heads=3"):
        NeighborhoodAttention1D(10, 3, 3)
    with pytest.raises(AttnExportError, match="rel_pos_bias needs non-causal attention"):
        NeighborhoodAttention1D(8, 2, 3, is_causal=True, rel_pos_bias=True)
    with pytest.raises(AttnExportError, match="kernel_size has 2 values but the input has 3 spatial axes"):
        NeighborhoodAttention3D(8, 2, (3, 3))
    layer = NeighborhoodAttention3D(8, 2, 3, rel_pos_bias=True)
    assert layer.rpb.shape == (2, 5, 5, 5)
    with pytest.raises(AttnExportError, match=r"expected \[B, 3 spatial axes, C\]"):
        layer(torch.randn(1, 6, 6, 8))
    assert layer(torch.randn(2, 3, 4, 5, 8)).shape == (2, 3, 4, 5, 8)
