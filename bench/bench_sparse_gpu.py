"""GPU benchmark of block-sparse and PARO attention (fp16) against dense SDPA on the same tensors, measured
in one run.

Block-sparse: random layouts with 128 x 128 blocks at density 10/25/50/100% (the diagonal kept), S = 16k and
32k, head_dim 64 and 128, 8 heads, batch 1. Goal: speedup over dense SDPA >= 0.8 / density.
PARO: the CogVideoX shape (13 x 30 x 45 grid + 226 prefix tokens, N = 17,776), head_dim 64, 8 heads, a random
order per head, block 64 layouts at density 0.3 and 0.5, INT8 and INT4 (QK and PV), quantization pre-pass
included in the time. Goal: 5.72x dense FlashAttention at density 0.3 + INT8 (the paper's A100 figure).

Per row: median ms (CUDA events), the kernel path, dense SDPA ms (the backend torch chose is recorded; one
measurement per shape), the speedup and the goal's ratio. Records are printed as JSON lines and appended to
--jsonl as they finish (bench_na_gpu.py's Recorder, run_rows, deadline); --simulate runs the control flow
without a GPU.

    python bench/bench_sparse_gpu.py --jsonl $OUT/bench_sparse_gpu.jsonl [--quick] [--deadline-s 60]

The core's cp.async ring (3 stages on sm_90 at head_dim <= 64, else 2) against 2 stages everywhere, with the same
kernel library: run it once as above and once with ATTNX_CORE_STAGES=2 in the environment (the meta record's
core_ring says which).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch
from bench_na_gpu import Recorder, median_ms, read_jsonl, run_rows, sdpa_backend

HEADS = 8
# (name, op, seq, head_dim, density, bits): bits only for PARO
BSA_CASES = [(f"bsa-{s // 1024}k-d{int(d * 100)}", "bsa", s, dim, d, None)
             for dim in (128, 64) for s in (16384, 32768) for d in (0.1, 0.25, 0.5, 1.0)]
PARO_GRID, PARO_PREFIX = (13, 30, 45), 226
PARO_CASES = [(f"paro-cogvideox-d{int(d * 10)}-int{bits}", "paro", PARO_PREFIX + math.prod(PARO_GRID), 64, d, bits)
              for d in (0.3, 0.5) for bits in (8, 4)]
BSA_BLOCK, PARO_BLOCK = 128, 64


def random_layout(n_blocks: int, density: float, heads: int, seed: int):
    """[1, heads, n, n] padded ELL with the diagonal and then random blocks up to ``density`` per row."""
    from attn_export.models.block_layout import from_block_mask

    gen = torch.Generator().manual_seed(seed)
    score = torch.rand(1, heads, n_blocks, n_blocks, generator=gen)
    score += 2 * torch.eye(n_blocks)  # the diagonal first
    keep = max(1, round(density * n_blocks))
    top = score.topk(keep, dim=-1).indices
    mask = torch.zeros_like(score, dtype=torch.bool).scatter_(-1, top, True)
    return from_block_mask(mask)


def dense_ms(cache: dict, seq: int, dim: int, q, k, v) -> tuple[float, str]:
    key = (seq, dim)
    if key not in cache:
        cache[key] = (median_ms(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v)),
                      sdpa_backend(q, k, v))
    return cache[key]


def measure_case(kernels, cache: dict, case, dim) -> dict:
    name, op, seq, _, density, bits = case
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, HEADS, seq, dim, generator=gen, device="cuda", dtype=torch.float16) for _ in range(3))
    out = torch.empty_like(q)
    if op == "bsa":
        n = -(-seq // BSA_BLOCK)
        count, index = (x.cuda() for x in random_layout(n, density, HEADS, 1))
        path = kernels.bsa_select_path(q, k, count, index, BSA_BLOCK, BSA_BLOCK)
        ours = median_ms(lambda: kernels.block_sparse_attention(q, k, v, count, index, BSA_BLOCK, BSA_BLOCK,
                                                                out=out))
    else:
        from attn_export.models.paro import grid_permutation

        n = -(-seq // PARO_BLOCK)
        count, index = (x.cuda() for x in random_layout(n, density, HEADS, 2))
        perm = torch.stack([grid_permutation(h % 6, PARO_GRID, PARO_PREFIX) for h in range(HEADS)])
        perm = perm.to(torch.int32).cuda()
        kw = dict(block=PARO_BLOCK, qk_bits=bits, pv_bits=bits)
        path = kernels.paro_select_path(q, count, index, **kw)
        ours = median_ms(lambda: kernels.paro_attention(q, k, v, perm, count, index, **kw, out=out))
    dense, backend = dense_ms(cache, seq, dim, q, k, v)
    achieved = int(count.sum()) / (HEADS * n * n)
    goal = 5.72 if op == "paro" and bits == 8 and density == 0.3 else 0.8 / achieved if op == "bsa" else None
    speedup = dense / ours
    return {"op": op, "seq": seq, "density": round(achieved, 4), "bits": bits, "path": path, "ours_ms": ours,
            "sdpa_ms": dense, "sdpa_backend": backend, "speedup_vs_sdpa": speedup, "goal": goal,
            "of_goal": None if goal is None else speedup / goal}


def simulated(seconds: float):
    def measure(case, dim):
        time.sleep(seconds)
        return {"simulated": True, "op": case[1], "seq": case[2], "density": case[4], "bits": case[5],
                "path": "simulated", "ours_ms": None, "sdpa_ms": None, "speedup_vs_sdpa": None, "goal": None,
                "of_goal": None}

    return measure


def table(rows) -> str:
    head = ["case", "hd", "path", "density", "ms", "SDPA ms", "x SDPA", "goal", "of goal"]
    lines = [head]
    fmt = lambda x, f: "-" if x is None else format(x, f)  # noqa: E731
    for r in rows:
        lines.append([r["case"], str(r["head_dim"]), r.get("path") or "-", fmt(r.get("density"), ".3f"),
                      fmt(r.get("ours_ms"), ".3f"), fmt(r.get("sdpa_ms"), ".3f"), fmt(r.get("speedup_vs_sdpa"), ".2f"),
                      fmt(r.get("goal"), ".2f"), fmt(r.get("of_goal"), ".0%")])
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(w) if i else c.ljust(w)
                               for i, (c, w) in enumerate(zip(line, widths, strict=True))) for line in lines)


def core_ring() -> str:
    """The core's cp.async ring this process runs: ATTNX_CORE_STAGES=2 (read by the kernel library) keeps it at 2
    stages, so that two runs of one library compare the rings (else 3 on sm_90 at head_dim <= 64)."""
    return "2 stages (ATTNX_CORE_STAGES=2)" if os.environ.get("ATTNX_CORE_STAGES") == "2" else "default"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jsonl", help="append each record here as one JSON line, as it finishes")
    parser.add_argument("--quick", action="store_true", help="head_dim 128 block-sparse rows and INT8 PARO only")
    parser.add_argument("--deadline-s", type=float, default=90.0, help="start no case after this many seconds")
    parser.add_argument("--simulate", type=float, metavar="SECONDS", help="dry run without a GPU")
    parser.add_argument("--table-from", metavar="JSONL", help="only print the table of the records in this file")
    args = parser.parse_args()
    if args.table_from:
        rows = [r for r in read_jsonl(args.table_from) if r.get("kind") == "case" and "error" not in r
                and "skipped" not in r]
        print(f"fp16, {HEADS} heads; {len(rows)} case rows from {args.table_from}")
        print(table(rows))
        return 0
    cases = BSA_CASES + PARO_CASES
    if args.quick:
        cases = [c for c in cases if c[3] == 128 or (c[1] == "paro" and c[5] == 8)]
    jobs = [(case, case[3]) for case in cases]
    recorder = Recorder(args.jsonl)
    deadline = time.monotonic() + args.deadline_s
    if args.simulate is not None:
        recorder.emit({"kind": "meta", "simulated": True, "heads": HEADS, "dtype": "float16"})
        rows = run_rows(jobs, simulated(args.simulate), recorder, deadline, "case")
    else:
        if not torch.cuda.is_available():
            print("no CUDA device: this benchmark needs a GPU (or --simulate for a dry run)", file=sys.stderr)
            return 3
        from attn_export.native import NativeKernels

        kernels = NativeKernels()
        recorder.emit({"kind": "meta", "device": torch.cuda.get_device_name(), "torch": torch.__version__,
                       "cuda": torch.version.cuda, "dtype": "float16", "heads": HEADS,
                       "kernel_library": str(kernels.path), "core_ring": core_ring()})
        cache: dict = {}
        rows = run_rows(jobs, lambda case, dim: measure_case(kernels, cache, case, dim), recorder, deadline, "case")
    measured = [r for r in rows if "error" not in r and "skipped" not in r]
    print(f"\nsparse fp16, {HEADS} heads; {len(measured)} of {len(rows)} cases measured")
    print(table(measured))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
