"""Block-sparse attention: the op against a loop-and-mask float64 reference written from
docs/ops/block_sparse_attention.md (Semantics) on random layouts, FlexAttention agreement, layout helpers,
routing, and every bad input."""

from __future__ import annotations

import pytest
import torch

from attn_export.errors import AttnExportError
from attn_export.models import block_layout as layout
from attn_export.models import block_sparse_attention
from attn_export.models.block_sparse import num_blocks

from helpers import random_block_bias, random_case, random_layout  # noqa: F401
from oracle import block_sparse_reference


@pytest.mark.parametrize("seed", range(60))
def test_op_matches_reference_on_random_layouts(seed):
    q, k, v, count, index, bq, bkv, scale = random_case(seed)
    out = block_sparse_attention(q, k, v, count, index, bq, bkv, scale)
    ref = block_sparse_reference(q, k, v, count, index, bq, bkv, scale)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("seed", range(30))
def test_block_bias_matches_reference(seed):
    """Random biases with single keys masked (-inf) and a query left without keys (zeros, as flex gives)."""
    q, k, v, count, index, bq, bkv, scale = random_case(seed)
    bias = random_block_bias(seed, q, count, index, bq, bkv)
    out = block_sparse_attention(q, k, v, count, index, bq, bkv, scale, bias)
    ref = block_sparse_reference(q, k, v, count, index, bq, bkv, scale, bias)
    assert out.isfinite().all()
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=0)


def test_block_bias_gradients_match_dense_masked_attention():
    q, k, v = (torch.randn(1, 2, 20, 8, requires_grad=True) for _ in range(3))
    mask = torch.rand(1, 2, 20, 20, generator=torch.Generator().manual_seed(1)) < 0.6
    mask[..., torch.arange(20), torch.arange(20)] = True
    dense = torch.randn(1, 2, 20, 20).masked_fill(~mask, float("-inf"))
    blocks = torch.nn.functional.pad(mask, (0, 4, 0, 4)).unflatten(-1, (3, 8)).unflatten(-3, (3, 8)).any(-1).any(-2)
    count, index = layout.from_block_mask(blocks)
    bias = layout.element_bias(dense, count, index, 8, 8)
    out = block_sparse_attention(q, k, v, count, index, 8, 8, None, bias)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=dense)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v))
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


def test_rows_without_blocks_are_zero_and_partial_blocks_are_masked_by_length():
    q, k, v = torch.randn(1, 1, 10, 4), torch.randn(1, 1, 7, 4), torch.randn(1, 1, 7, 4)
    count = torch.tensor([[[1, 0, 2]]], dtype=torch.int32)  # block_q 4: rows 0-3, 4-7, 8-9
    index = torch.tensor([[[[1, -1], [-1, -1], [0, 1]]]], dtype=torch.int32)  # block_kv 4: keys 0-3, 4-6
    out = block_sparse_attention(q, k, v, count, index, 4, 4)
    assert torch.equal(out[0, 0, 4:8], torch.zeros(4, 4))
    torch.testing.assert_close(out.double(), block_sparse_reference(q, k, v, count, index, 4, 4), atol=1e-6, rtol=0)
    # Row 0 attends keys 4-6 only: the same as dense attention over those three keys.
    dense = torch.softmax(q[0, 0, :4] @ k[0, 0, 4:].T * 0.5, -1) @ v[0, 0, 4:]
    torch.testing.assert_close(out[0, 0, :4], dense, atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype, atol", [(torch.float16, 1e-2), (torch.bfloat16, 5e-2)])
def test_low_precision_inputs(dtype, atol):
    q, k, v, count, index, bq, bkv, scale = random_case(3)
    out = block_sparse_attention(q.to(dtype), k.to(dtype), v.to(dtype), count, index, bq, bkv, scale)
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), block_sparse_reference(q, k, v, count, index, bq, bkv, scale),
                               atol=atol, rtol=0)


def test_gradients_match_dense_masked_attention():
    q, k, v, count, index, bq, bkv, _ = random_case(11)
    leaves = [t.clone().double().requires_grad_(True) for t in (q, k, v)]
    out = block_sparse_attention(*leaves, count, index, bq, bkv)
    grads = torch.autograd.grad(out.square().sum(), leaves)
    token_mask = layout.to_block_mask(count, index, num_blocks(k.shape[2], bkv))
    token_mask = token_mask.repeat_interleave(bq, 2)[:, :, : q.shape[2]].repeat_interleave(bkv, 3)[..., : k.shape[2]]
    dense_leaves = [t.clone().double().requires_grad_(True) for t in (q, k, v)]
    logits = (dense_leaves[0] @ dense_leaves[1].transpose(-1, -2)) * q.shape[-1] ** -0.5
    weights = torch.softmax(logits.masked_fill(~token_mask, float("-inf")), -1).nan_to_num(0.0)
    dense_grads = torch.autograd.grad((weights @ dense_leaves[2]).square().sum(), dense_leaves)
    for got, want in zip(grads, dense_grads):
        torch.testing.assert_close(got, want, atol=1e-8, rtol=1e-6)


# ------------------------------------------------------------------------------------------ FlexAttention


def local_global_mod(block):
    def mask_mod(b, h, q_idx, kv_idx):
        qb, kb = q_idx // block, kv_idx // block
        return ((qb - kb).abs() <= 1) | (kb == 0) | (qb == 0)

    return mask_mod


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("sq, skv, block", [(64, 64, 16), (96, 64, 32), (128, 128, 16)])
def test_agrees_with_flex_attention_given_the_same_block_mask(sq, skv, block):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    block_mask = create_block_mask(local_global_mod(block), 2, 2, sq, skv, device="cpu", BLOCK_SIZE=block)
    count, index, bq, bkv = layout.from_flex_block_mask(block_mask)
    assert (bq, bkv) == (block, block)
    gen = torch.Generator().manual_seed(sq + skv)
    q, k, v = torch.randn(2, 2, sq, 16, generator=gen), torch.randn(2, 2, skv, 16, generator=gen), \
        torch.randn(2, 2, skv, 16, generator=gen)
    expected = flex_attention(q, k, v, block_mask=block_mask)
    torch.testing.assert_close(block_sparse_attention(q, k, v, count, index, bq, bkv), expected, atol=1e-5, rtol=0)


def causal_in_block_mod(b, h, q_idx, kv_idx):  # the diagonal block is only partly attended (causal inside)
    return (kv_idx // 16 < q_idx // 16) | ((kv_idx // 16 == q_idx // 16) & (kv_idx <= q_idx))


def test_flex_conversion_refuses_partial_blocks_unless_allowed():
    from torch.nn.attention.flex_attention import create_block_mask

    block_mask = create_block_mask(causal_in_block_mod, 1, 1, 64, 64, device="cpu", BLOCK_SIZE=16)
    assert int(block_mask.full_kv_num_blocks.sum()) > 0 and int(block_mask.kv_num_blocks.sum()) == 4
    with pytest.raises(AttnExportError, match="has 4 partial blocks .* only block-aligned masks convert exactly"):
        layout.from_flex_block_mask(block_mask)
    with pytest.warns(UserWarning, match="allow_partial=True attends them in full"):
        count, index, _, _ = layout.from_flex_block_mask(block_mask, allow_partial=True)
    expected = torch.tril(torch.ones(4, 4, dtype=torch.bool))  # full below the diagonal, partial on it
    assert torch.equal(layout.to_block_mask(count, index, 4)[0, 0], expected)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_partial_blocks_attended_in_full_differ_from_flex_attention():
    """Why partial blocks are refused: an 8-token sliding window in 16-token blocks, attended in full, is a
    different attention."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    def window(b, h, q_idx, kv_idx):
        return (q_idx - kv_idx).abs() <= 8

    block_mask = create_block_mask(window, 1, 1, 64, 64, device="cpu", BLOCK_SIZE=16)
    with pytest.warns(UserWarning):
        count, index, bq, bkv = layout.from_flex_block_mask(block_mask, allow_partial=True)
    q, k, v = torch.randn(3, 1, 2, 64, 16, generator=torch.Generator().manual_seed(5)).unbind(0)
    diff = (block_sparse_attention(q, k, v, count, index, bq, bkv) - flex_attention(q, k, v, block_mask=block_mask))
    assert float(diff.abs().max()) > 0.1


# ------------------------------------------------------------------------------------------ layouts


@pytest.mark.parametrize("seed", range(10))
def test_block_mask_round_trips_and_indices_ascend(seed):
    mask = torch.rand(2, 3, 7, 9, generator=torch.Generator().manual_seed(seed)) < 0.4
    count, index = layout.from_block_mask(mask)
    assert count.dtype == index.dtype == torch.int32
    assert torch.equal(layout.to_block_mask(count, index, 9), mask)
    listed = torch.arange(index.shape[-1]) < count.unsqueeze(-1)
    assert bool((index[~listed] == -1).all())
    rows = torch.where(listed, index, 10**6)
    assert bool((rows[..., 1:] >= rows[..., :-1]).all())


@pytest.mark.parametrize("seed", range(10))
def test_csr_round_trip(seed):
    mask = torch.rand(1, 3, 6, 6, generator=torch.Generator().manual_seed(seed)) < 0.5
    mask[..., -1] = True  # the last column is used, so the CSR form sees every kv block
    count, index = layout.from_block_mask(mask)
    rows, cols = layout.to_csr(count, index)
    assert rows.shape == (3, 7) and rows.dtype == torch.int32 and bool((rows[:, 0] == 0).all())
    assert torch.equal(rows[:, -1].long(), mask[0].sum((-1, -2)))
    back_count, back_index = layout.from_csr(rows, cols)
    assert torch.equal(layout.to_block_mask(back_count, back_index, 6), mask)


def test_csr_by_hand():
    count = torch.tensor([[[2, 0, 1]]], dtype=torch.int32)
    index = torch.tensor([[[[2, 0], [-1, -1], [1, -1]]]], dtype=torch.int32)
    rows, cols = layout.to_csr(count, index)
    assert rows.tolist() == [[0, 2, 2, 3]] and cols.tolist() == [[0, 2, 1]]


def test_topk_routing_matches_brute_force():
    gen = torch.Generator().manual_seed(5)
    q, k = torch.randn(2, 3, 32, 8, generator=gen), torch.randn(2, 3, 24, 8, generator=gen)
    count, index = layout.topk_routing(q, k, 8, 4, topk=2)
    assert count.shape == (1, 1, 4) and bool((count == 2).all()) and index.shape == (2, 3, 4, 2)
    for b in range(2):
        for h in range(3):
            for r in range(4):
                qm = q[b, h, r * 8:(r + 1) * 8].mean(0)
                scores = [float(qm @ k[b, h, c * 4:(c + 1) * 4].mean(0)) for c in range(6)]
                best = sorted(range(6), key=lambda c: -scores[c])[:2]
                assert sorted(index[b, h, r].tolist()) == sorted(best)


# ------------------------------------------------------------------------------------------ bad input


def _valid():
    q = torch.randn(1, 2, 8, 4)
    count = torch.tensor([[[1, 2]]], dtype=torch.int32)
    index = torch.tensor([[[[0, -1], [0, 1]]]], dtype=torch.int32)
    return q, q.clone(), q.clone(), count, index


@pytest.mark.parametrize("change, fragment", [
    (lambda a: {**a, "index": torch.tensor([[[[2, -1], [0, 1]]]], dtype=torch.int32)}, "lists block 2"),
    (lambda a: {**a, "index": torch.tensor([[[[-1, -1], [0, 1]]]], dtype=torch.int32)}, "lists block -1"),
    (lambda a: {**a, "count": torch.tensor([[[3, 2]]], dtype=torch.int32)}, "max_blocks=2"),
    (lambda a: {**a, "count": torch.tensor([[[-1, 2]]], dtype=torch.int32)}, "kv_count holds values"),
    (lambda a: {**a, "index": torch.tensor([[[[0, -1], [1, 1]]]], dtype=torch.int32)}, "lists one block twice"),
    (lambda a: {**a, "count": a["count"].long()}, "must be int32"),
    (lambda a: {**a, "count": torch.tensor([[[1, 2, 2]]], dtype=torch.int32)}, "nQB"),
    (lambda a: {**a, "index": a["index"].expand(3, 2, 2, 2)}, "kv_index (3, 2, 2, 2)"),
    (lambda a: {**a, "k": torch.randn(1, 2, 8, 5)}, "k (1, 2, 8, 5) and v"),
    (lambda a: {**a, "v": a["v"].half()}, "must share one floating dtype"),
    (lambda a: {**a, "q": torch.randn(2, 8, 4)}, "must be [B, H, S, D]"),
    (lambda a: {**a, "block_q": 0}, "block_q=0"),
    (lambda a: {**a, "block_kv": -4}, "block_kv=-4"),
    (lambda a: {**a, "bias": torch.zeros(1, 2, 2, 2, 4, 3)}, "must be [1|1, 2|1, 2, 2, 4, 4]"),
    (lambda a: {**a, "bias": torch.zeros(1, 2, 2, 3, 4, 4)}, "one block_q x block_kv tile per slot of kv_index"),
    (lambda a: {**a, "bias": torch.zeros(1, 2, 2, 2, 4, 4, dtype=torch.int32)}, "block_bias must be a float tensor"),
    (lambda a: {**a, "bias": torch.zeros(2, 2, 4, 4)}, "got torch.float32 (2, 2, 4, 4)"),
])
def test_bad_input_is_one_clear_error(change, fragment):
    q, k, v, count, index = _valid()
    args = change(dict(q=q, k=k, v=v, count=count, index=index, block_q=4, block_kv=4, bias=None))
    with pytest.raises(AttnExportError) as info:
        block_sparse_attention(args["q"], args["k"], args["v"], args["count"], args["index"], args["block_q"],
                               args["block_kv"], block_bias=args["bias"])
    assert fragment in str(info.value) and "\n" not in str(info.value)
