"""Planning a FlexAttention call for export: time, and the constants stored against a dense bias.

Run: python bench/bench_flex_plan.py [--length 1024 --length 2048] [--heads 8]
For causal attention with per-head ALiBi slopes (score + slope[h] * (kv - q)), prints the seconds plan_flex takes
(the mask and score_mod evaluated on every (query, key) pair, in chunks of query-block rows), the bytes of the
plan's constants (layout, partial-block tiles, the per-head (key - query) table) and, in the same run, the bytes
a dense H x N x N float32 bias would take.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.nn.attention.flex_attention import create_block_mask

from attn_export.flex_plan import plan_flex


def causal(b, h, q, kv):
    return q >= kv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, action="append")
    parser.add_argument("--heads", type=int, default=8)
    args = parser.parse_args()
    slopes = 2.0 ** (-8.0 * torch.arange(1, args.heads + 1) / args.heads)

    def alibi(score, b, h, q, kv):
        return score + slopes[h] * (kv - q)

    print(f"{'N':>6} {'heads':>5} {'plan s':>7} {'constants MB':>13} {'dense bias MB':>14}  target")
    for n in args.length or [1024, 2048]:
        mask = create_block_mask(causal, None, None, n, n, device="cpu")
        q = torch.randn(1, args.heads, n, 8)
        start = time.perf_counter()
        with torch.inference_mode():
            plan = plan_flex(q, q, q, alibi, mask, None, "bench")
        seconds = time.perf_counter() - start
        stored = sum(v.nbytes for v in plan.values() if isinstance(v, torch.Tensor))
        dense = args.heads * n * n * 4
        print(f"{n:>6} {args.heads:>5} {seconds:>7.1f} {stored / 2**20:>13.2f} {dense / 2**20:>14.0f}  "
              f"{plan['target']}")


if __name__ == "__main__":
    main()
