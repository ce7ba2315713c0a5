"""GPU benchmark of the fused neighborhood-attention kernel (fp16) against dense SDPA and compiled
FlexAttention with the same neighbourhood mask, all measured in this run on the same tensors.

Per case: median ms (CUDA events), effective TFLOP/s (4 * tokens * prod(k) * head_dim * heads * batch),
speedup over SDPA (dense), speedup over FlexAttention, and the fraction of the FLOP bound reached:
(speedup over SDPA) / (tokens / prod(k)), since dense attention does tokens / prod(k) times the work.
Also max |ours - flex| as a full-size cross-check. Writes JSON (--json) and prints a table last.

    python bench/bench_na_gpu.py --json $OUT/bench_na_gpu.json [--quick] [--budget-s 240]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time

import torch

from attn_export.native import NativeKernels

# (name, spatial, kernel, stride, causal, batch)
CASES = [
    ("2d-64x64-k7", (64, 64), (7, 7), (1, 1), False, 16),
    ("2d-64x64-k13", (64, 64), (13, 13), (1, 1), False, 16),
    ("2d-128x128-k13", (128, 128), (13, 13), (1, 1), False, 4),
    ("2d-128x128-k16-s16", (128, 128), (16, 16), (16, 16), False, 4),
    ("3d-16x32x32-k3x7x7", (16, 32, 32), (3, 7, 7), (1, 1, 1), False, 4),
    ("1d-32768-k2048-s1", (32768,), (2048,), (1,), False, 1),
    ("1d-32768-k2048-s256", (32768,), (2048,), (256,), False, 1),
]
HEADS = 8


def median_ms(fn, warmup: int = 3, iters: int = 15) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _min(a, b):
    return torch.where(a < b, a, b)


def _max(a, b):
    return torch.where(a > b, a, b)


def na_mask_mod(spatial, kernel, stride, dilation, causal):
    """FlexAttention mask_mod of DESIGN.md section 5 on row-major flattened token indices."""
    strides = [math.prod(spatial[a + 1:]) for a in range(len(spatial))]

    def mask_mod(b, h, q_idx, kv_idx):
        inside = q_idx >= 0
        for a, (n, k, s, d, c) in enumerate(zip(spatial, kernel, stride, dilation, causal)):
            i, j = (q_idx // strides[a]) % n, (kv_idx // strides[a]) % n
            g, ip, jp = i % d, i // d, j // d
            n_g = (n - g + d - 1) // d
            same_group = (j % d) == g
            if c:
                leader = _min((ip // s) * s + s - 1, n_g - 1)
                inside = inside & same_group & (jp >= leader - k + 1) & (jp <= ip)
            else:
                left, right = k // 2, k // 2 + k % 2 - 1
                leader = _min((ip // s) * s + s // 2, n_g - 1)
                center = _max(_min(leader, n_g - 1 - right), leader * 0 + left)
                inside = inside & same_group & (jp >= center - left) & (jp <= center + right)
        return inside

    return mask_mod


def run_case(kernels, case, dim, flex, deadline):
    name, spatial, kernel, stride, causal, batch = case
    tokens, window = math.prod(spatial), math.prod(kernel)
    gen = torch.Generator(device="cuda").manual_seed(0)
    shape = (batch, *spatial, HEADS, dim)
    q, k, v = (torch.randn(shape, generator=gen, device="cuda", dtype=torch.float16) for _ in range(3))
    out = torch.empty_like(q)
    kw = dict(kernel_size=kernel, stride=stride, is_causal=causal)
    ours = median_ms(lambda: kernels.neighborhood_attention(q, k, v, out=out, **kw))
    # SDPA/Flex layout [B, H, N, D]: the layout change is outside the timed region.
    qh, kh, vh = (x.reshape(batch, tokens, HEADS, dim).transpose(1, 2).contiguous() for x in (q, k, v))
    sdpa = median_ms(lambda: torch.nn.functional.scaled_dot_product_attention(qh, kh, vh))
    row = {
        "case": name, "head_dim": dim, "batch": batch, "heads": HEADS, "tokens": tokens, "window": window,
        "path": kernels.select_path(q, kernel_size=kernel, stride=stride, is_causal=causal),
        "ours_ms": ours, "tflops": 4 * tokens * window * dim * HEADS * batch / (ours * 1e-3) / 1e12,
        "sdpa_ms": sdpa, "speedup_vs_sdpa": sdpa / ours, "flop_bound": tokens / window,
    }
    row["fraction_of_bound"] = row["speedup_vs_sdpa"] / row["flop_bound"]
    row["flex_ms"] = row["speedup_vs_flex"] = row["max_abs_vs_flex"] = None
    if flex is not None and time.monotonic() < deadline:
        create_block_mask, flex_attention = flex
        mask = create_block_mask(na_mask_mod(spatial, kernel, stride, (1,) * len(spatial), (causal,) * len(spatial)),
                                 None, None, tokens, tokens, device="cuda")
        flex_out = flex_attention(qh, kh, vh, block_mask=mask)
        row["flex_ms"] = median_ms(lambda: flex_attention(qh, kh, vh, block_mask=mask))
        row["speedup_vs_flex"] = row["flex_ms"] / ours
        ours_heads_first = out.reshape(batch, tokens, HEADS, dim).transpose(1, 2)
        row["max_abs_vs_flex"] = (ours_heads_first.float() - flex_out.float()).abs().max().item()
    elif flex is not None:
        row["flex_note"] = "skipped: time budget spent"
    return row


def table(rows) -> str:
    head = ["case", "hd", "path", "ms", "TFLOP/s", "x SDPA", "x Flex", "bound", "of bound", "|ours-flex|"]
    lines = [head]
    for r in rows:
        fmt = lambda x, f: "-" if x is None else format(x, f)  # noqa: E731
        lines.append([r["case"], str(r["head_dim"]), r["path"], fmt(r["ours_ms"], ".3f"), fmt(r["tflops"], ".1f"),
                      fmt(r["speedup_vs_sdpa"], ".2f"), fmt(r["speedup_vs_flex"], ".2f"), fmt(r["flop_bound"], ".1f"),
                      fmt(r["fraction_of_bound"], ".0%"), fmt(r["max_abs_vs_flex"], ".1e")])
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths)))
                     for line in lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--quick", action="store_true", help="head_dim 128 only")
    parser.add_argument("--no-flex", action="store_true", help="skip FlexAttention")
    parser.add_argument("--budget-s", type=float, default=240.0, help="stop timing FlexAttention after this long")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: this benchmark needs a GPU", file=sys.stderr)
        return 3
    kernels = NativeKernels()
    flex = None
    if not args.no_flex:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        flex = (create_block_mask, torch.compile(flex_attention, dynamic=False))
    deadline = time.monotonic() + args.budget_s
    rows = []
    for dim in ([128] if args.quick else [64, 128]):
        for case in CASES:
            rows.append(run_case(kernels, case, dim, flex, deadline))
            print(f"  {case[0]} hd={dim}: {rows[-1]['ours_ms']:.3f} ms", file=sys.stderr, flush=True)
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "dtype": "float16", "kernel_library": str(kernels.path)}
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"meta": meta, "rows": rows}, handle, indent=2)
    print(f"\n{meta['device']}, torch {meta['torch']}, fp16, {HEADS} heads")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
