"""The two CPU forms of block-sparse attention, each forced on random layouts against the float64 oracle (gathered
listed blocks; every block of the row under a mask), rows of one call split between them, one row per chunk,
gradients; and the local function gathering whole blocks."""

from __future__ import annotations

import pytest
import torch

import attn_export.models.block_sparse as bs
from attn_export.models import block_layout as layout
from attn_export.models import block_sparse_attention
from attn_export.onnx_functions import block_sparse_function

from helpers import random_case
from oracle import block_sparse_reference

FORMS = {"gathered": (1.0, 1e9), "all-blocks": (1e9, 1.0)}  # (_GATHERED_BLOCK_COST, _ALL_BLOCKS_COST)


def force(monkeypatch, form: str) -> None:
    gathered, every = FORMS[form]
    monkeypatch.setattr(bs, "_GATHERED_BLOCK_COST", gathered)
    monkeypatch.setattr(bs, "_ALL_BLOCKS_COST", every)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("seed", range(100, 140))
def test_each_form_matches_reference(form, seed, monkeypatch):
    force(monkeypatch, form)
    q, k, v, count, index, bq, bkv, scale = random_case(seed)
    out = block_sparse_attention(q, k, v, count, index, bq, bkv, scale)
    torch.testing.assert_close(out.double(), block_sparse_reference(q, k, v, count, index, bq, bkv, scale),
                               atol=1e-5, rtol=0)


def causal_blocks(n_blocks: int, heads: int = 2):
    mask = torch.tril(torch.ones(n_blocks, n_blocks, dtype=torch.bool)).expand(1, heads, n_blocks, n_blocks)
    return layout.from_block_mask(mask)


def test_rows_of_one_call_split_between_the_forms(monkeypatch):
    """Block-causal rows list 1 to 8 blocks: the short ones are gathered, the long ones attend every block."""
    count, index = causal_blocks(8)
    every = count.amax(dim=(0, 1)) * bs._GATHERED_BLOCK_COST > 8 * bs._ALL_BLOCKS_COST
    assert 0 < int(every.sum()) < 8
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 61, 8, generator=gen) for _ in range(3))  # a partial last block
    out = block_sparse_attention(q, k, v, count, index, 8, 8)
    torch.testing.assert_close(out.double(), block_sparse_reference(q, k, v, count, index, 8, 8), atol=1e-5, rtol=0)
    monkeypatch.setattr(bs, "_CHUNK_BYTES", 1)  # one row per chunk
    torch.testing.assert_close(block_sparse_attention(q, k, v, count, index, 8, 8), out, atol=1e-6, rtol=0)


@pytest.mark.parametrize("form", FORMS)
def test_gradients_of_each_form(form, monkeypatch):
    force(monkeypatch, form)
    q, k, v, count, index, bq, bkv, _ = random_case(7)
    leaves = [t.double().requires_grad_(True) for t in (q, k, v)]
    got = torch.autograd.grad(block_sparse_attention(*leaves, count, index, bq, bkv).square().sum(), leaves)
    want = torch.autograd.grad(block_sparse_reference(*leaves, count, index, bq, bkv).square().sum(), leaves)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-8, rtol=1e-6)


def test_full_density_needs_no_copy_and_no_mask():
    """Every row lists every block: all rows attend K and V themselves, with no mask."""
    count, index = layout.from_block_mask(torch.ones(1, 1, 4, 4, dtype=torch.bool))
    assert bool((count.amax(dim=(0, 1)) * bs._GATHERED_BLOCK_COST > 4 * bs._ALL_BLOCKS_COST).all())
    q, k, v = torch.randn(3, 1, 2, 32, 8).unbind(0)
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(block_sparse_attention(q, k, v, count, index, 8, 8), want, atol=1e-6, rtol=0)


def test_function_gathers_whole_blocks():
    """The body's gathers index kv blocks (GatherND on [B, H, nKVB, block_kv, D] with one block number per
    slot), never single tokens."""
    function = block_sparse_function(18)
    gathers = [n for n in function.node if n.op_type in ("Gather", "GatherND", "GatherElements")]
    assert [n.op_type for n in gathers] == ["GatherND", "GatherND"]
    assert all(a.name == "batch_dims" and a.i == 2 for n in gathers for a in n.attribute)
