"""The FlexAttention mask the GPU benchmark compares against must be the op's neighbourhood: checked
here on the CPU against the reference window indices, so the GPU comparison is like for like."""

from __future__ import annotations

import math
import random

import pytest
import torch

from attn_export.models.neighborhood import NAParams, neighborhood_index

from bench_scripts import load_bench


@pytest.fixture(scope="module")
def bench():
    return load_bench("bench_na_gpu")


def dense_reference(spatial, params):
    key, _, valid = neighborhood_index(spatial, params)
    n = math.prod(spatial)
    mask = torch.zeros(n, n, dtype=torch.bool)
    rows = torch.arange(n)[:, None].expand_as(key)
    keep = torch.ones_like(key, dtype=torch.bool) if valid is None else valid
    mask[rows[keep], key[keep]] = True
    return mask


@pytest.mark.parametrize("seed", range(25))
def test_flex_mask_mod_equals_the_neighbourhood(bench, seed):
    rng = random.Random(seed)
    rank = rng.randint(1, 3)
    kernel = [rng.randint(2, 6) for _ in range(rank)]
    stride = [rng.randint(1, k) for k in kernel]
    dilation = [rng.choice([1, 2]) for _ in range(rank)]
    causal = [rng.random() < 0.3 for _ in range(rank)]
    spatial = [k * d + rng.randint(0, 6) for k, d in zip(kernel, dilation)]
    params = NAParams.from_args(rank, kernel, stride, dilation, causal)
    n = math.prod(spatial)
    q_idx, kv_idx = torch.arange(n)[:, None], torch.arange(n)[None, :]
    got = bench.na_mask_mod(spatial, kernel, stride, dilation, causal)(0, 0, q_idx, kv_idx)
    assert torch.equal(got, dense_reference(spatial, params)), (spatial, kernel, stride, dilation, causal)


def test_table_formats_missing_values(bench):
    row = dict(case="c", head_dim=64, path="tensor-core", ours_ms=1.0, tflops=2.0, speedup_vs_sdpa=3.0,
               speedup_vs_flex=None, flop_bound=4.0, fraction_of_bound=0.75, max_abs_vs_flex=None)
    text = bench.table([row])
    assert "75%" in text and text.splitlines()[1].split()[6] == "-"
