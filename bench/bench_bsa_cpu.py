"""Benchmark: the CPU block-sparse op at several densities against dense attention, same run.

S = 4096 queries and keys, blocks of 64 (64 x 64 block grid), every query block lists the same
number of kv blocks (density * 64, random blocks); batch 1, 4 heads, head_dim 64, fp32. Time should
follow density (the op gathers only listed blocks); `dense` is torch SDPA with no mask, the cost of
attending everything.

    python bench/bench_bsa_cpu.py [--seq 4096] [--densities 0.1 0.25 0.5 1.0] [--reps 5]
"""

from __future__ import annotations

import argparse
import functools

import torch
from timing import median_ms

from attn_export.models import block_sparse_attention
from attn_export.models.block_layout import from_block_mask


def layout(n_blocks: int, per_row: int, heads: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    scores = torch.rand(1, heads, n_blocks, n_blocks, generator=gen)
    picked = scores.topk(per_row, dim=-1).indices
    mask = torch.zeros(1, heads, n_blocks, n_blocks, dtype=torch.bool).scatter_(-1, picked, True)
    return from_block_mask(mask)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=4096)
    parser.add_argument("--block", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--densities", type=float, nargs="+", default=[0.1, 0.25, 0.5, 1.0])
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, args.heads, args.seq, args.dim) for _ in range(3))
    n_blocks = args.seq // args.block
    with torch.inference_mode():
        dense = median_ms(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v), args.reps)
        rows = []
        for density in args.densities:
            per_row = max(1, round(density * n_blocks))
            count, index = layout(n_blocks, per_row, args.heads)
            ms = median_ms(functools.partial(block_sparse_attention, q, k, v, count, index, args.block, args.block),
                           args.reps)
            rows.append((density, per_row, ms))
    full = next((ms for d, _, ms in rows if d == 1.0), rows[-1][2])
    print(f"S={args.seq}, block {args.block}, {args.heads} heads, head_dim {args.dim}, fp32, "
          f"{torch.get_num_threads()} threads; dense SDPA {dense:.1f} ms")
    print("| density | blocks per row | op ms | op / op at 100% | op / dense SDPA |")
    print("|---|---|---|---|---|")
    for density, per_row, ms in rows:
        print(f"| {density:.0%} | {per_row} | {ms:.1f} | {ms / full:.2f} | {ms / dense:.2f} |")


if __name__ == "__main__":
    main()
