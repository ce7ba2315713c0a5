"""GPU benchmark of the fused neighborhood-attention kernel (fp16) against dense SDPA and compiled
FlexAttention with the same neighbourhood mask, all measured in this run on the same tensors.

Per case: median ms (CUDA events), effective TFLOP/s (4 * tokens * prod(k) * head_dim * heads * batch),
speedup over SDPA (dense; the SDPA backend torch chose is recorded), and the fraction of the FLOP bound
reached: (speedup over SDPA) / (tokens / prod(k)), since dense attention does tokens / prod(k) times the
work. FlexAttention (compiled, block mask built with _compile=True, never a dense mask) runs only on
two small cases, after every other row, each inside a deadline and a try/except.

Every record is printed as one JSON line the moment it exists and appended to --jsonl (a killed or hung
run keeps every finished row); the table comes last. --simulate runs the same control flow without a
GPU (scripts/gpu-check.sh's dry run).

    python bench/bench_na_gpu.py --jsonl $OUT/bench_na_gpu.jsonl [--quick] [--deadline-s 150]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time

import torch

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
# FlexAttention: two small cases (4,096 tokens) at one head_dim: one compile each, bounded masks.
FLEX_CASES = ("2d-64x64-k7", "2d-64x64-k13")
FLEX_HEAD_DIM = 128
FLEX_MIN_LEFT_S = 45.0  # a Flex compile is not started with less time left than this
RECOMPILE_LIMIT = 64


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
    """FlexAttention mask_mod of the window rule (docs/ops/neighborhood_attention.md, Semantics) on row-major
    flattened token indices."""
    strides = [math.prod(spatial[a + 1:]) for a in range(len(spatial))]

    def mask_mod(b, h, q_idx, kv_idx):
        inside = q_idx >= 0
        for a, (n, k, s, d, c) in enumerate(zip(spatial, kernel, stride, dilation, causal, strict=True)):
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


class Recorder:
    """Prints each record as one JSON line and appends it to ``path`` at once (flushed and synced)."""

    def __init__(self, path: str | None):
        self.path = path

    def emit(self, record: dict) -> dict:
        line = json.dumps(record)
        print(line, flush=True)
        if self.path:
            import os

            with open(self.path, "a") as handle:
                handle.write(line + "\n")
                handle.flush()
                os.fsync(handle.fileno())
        return record


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}"


def run_rows(jobs, measure, recorder: Recorder, deadline: float, kind: str, min_left_s: float = 0.0,
             clock=time.monotonic) -> list[dict]:
    """Measures each (case, head_dim) job in turn; every outcome (row, error or skip) is emitted at once.
    A job is skipped, not started, when less than ``min_left_s`` remains before ``deadline``."""
    records = []
    for case, dim in jobs:
        base = {"kind": kind, "case": case[0], "head_dim": dim}
        if deadline - clock() < min_left_s:
            records.append(recorder.emit({**base, "skipped": "time budget spent"}))
            continue
        try:
            records.append(recorder.emit({**base, **measure(case, dim)}))
        except Exception as exc:  # noqa: BLE001 - one failing case must not lose the others
            records.append(recorder.emit({**base, "error": one_line(exc)}))
    return records


def sdpa_backend(q, k, v) -> str:
    """The backend torch's SDPA dispatcher picks for these inputs (flash, efficient, cudnn, math)."""
    try:
        from torch.nn.attention import SDPBackend

        return SDPBackend(int(torch._fused_sdp_choice(q, k, v))).name.lower()
    except Exception as exc:  # noqa: BLE001 - a private API; record why instead of failing the row
        return f"unknown ({type(exc).__name__})"


def inputs(case, dim):
    _, spatial, kernel, stride, causal, batch = case
    gen = torch.Generator(device="cuda").manual_seed(0)
    shape = (batch, *spatial, HEADS, dim)
    q, k, v = (torch.randn(shape, generator=gen, device="cuda", dtype=torch.float16) for _ in range(3))
    return q, k, v, dict(kernel_size=kernel, stride=stride, is_causal=causal)


def heads_first(x, case):
    batch, tokens = case[5], math.prod(case[1])
    return x.reshape(batch, tokens, HEADS, x.shape[-1]).transpose(1, 2).contiguous()


def measure_case(kernels, case, dim) -> dict:
    """ours vs dense SDPA for one case."""
    _, spatial, kernel, stride, causal, batch = case
    tokens, window = math.prod(spatial), math.prod(kernel)
    q, k, v, kw = inputs(case, dim)
    out = torch.empty_like(q)
    ours = median_ms(lambda: kernels.neighborhood_attention(q, k, v, out=out, **kw))
    # SDPA layout [B, H, N, D]: the layout change is outside the timed region.
    qh, kh, vh = (heads_first(x, case) for x in (q, k, v))
    sdpa = median_ms(lambda: torch.nn.functional.scaled_dot_product_attention(qh, kh, vh))
    row = {
        "batch": batch, "heads": HEADS, "tokens": tokens, "window": window,
        "path": kernels.select_path(q, kernel_size=kernel, stride=stride, is_causal=causal),
        "ours_ms": ours, "tflops": 4 * tokens * window * dim * HEADS * batch / (ours * 1e-3) / 1e12,
        "sdpa_ms": sdpa, "sdpa_backend": sdpa_backend(qh, kh, vh), "speedup_vs_sdpa": sdpa / ours,
        "flop_bound": tokens / window,
    }
    row["fraction_of_bound"] = row["speedup_vs_sdpa"] / row["flop_bound"]
    return row


def flex_functions():
    """compiled flex_attention and create_block_mask, with a recompile limit that two cases never hit."""
    import torch._dynamo.config as dynamo_config
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    for knob in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo_config, knob):
            setattr(dynamo_config, knob, max(getattr(dynamo_config, knob), RECOMPILE_LIMIT))
    return create_block_mask, torch.compile(flex_attention, dynamic=False)


def measure_flex(kernels, flex, case, dim) -> dict:
    _, spatial, kernel, stride, causal, _ = case
    tokens = math.prod(spatial)
    create_block_mask, flex_attention = flex
    q, k, v, kw = inputs(case, dim)
    out = torch.empty_like(q)
    ours = median_ms(lambda: kernels.neighborhood_attention(q, k, v, out=out, **kw))
    qh, kh, vh = (heads_first(x, case) for x in (q, k, v))
    rank = len(spatial)
    mask = create_block_mask(na_mask_mod(spatial, kernel, stride, (1,) * rank, (causal,) * rank), None, None,
                             tokens, tokens, device="cuda", _compile=True)
    start = time.monotonic()
    flex_out = flex_attention(qh, kh, vh, block_mask=mask)
    compile_s = time.monotonic() - start
    flex_ms = median_ms(lambda: flex_attention(qh, kh, vh, block_mask=mask))
    max_abs = (heads_first(out, case).float() - flex_out.float()).abs().max().item()
    return {"ours_ms": ours, "flex_ms": flex_ms, "flex_compile_s": round(compile_s, 1),
            "speedup_vs_flex": flex_ms / ours, "max_abs_vs_flex": max_abs}


def simulated(seconds: float, hang_at: int | None):
    """Measurement stand-ins for a dry run without a GPU: sleep, then a row without numbers; the
    ``hang_at``-th call (1-based) never returns, as a stuck compile would."""
    calls = {"n": 0}

    def measure(case, dim):
        calls["n"] += 1
        if hang_at is not None and calls["n"] >= hang_at:
            time.sleep(10**6)
        time.sleep(seconds)
        return {"simulated": True, "path": "simulated", "ours_ms": None, "tflops": None, "speedup_vs_sdpa": None,
                "flop_bound": math.prod(case[1]) / math.prod(case[2]), "fraction_of_bound": None,
                "sdpa_backend": "simulated"}

    return measure


def table(rows) -> str:
    head = ["case", "hd", "path", "ms", "TFLOP/s", "x SDPA", "x Flex", "bound", "of bound", "|ours-flex|"]
    lines = [head]
    for r in rows:
        fmt = lambda x, f: "-" if x is None else format(x, f)  # noqa: E731
        lines.append([r["case"], str(r["head_dim"]), r.get("path") or "-", fmt(r.get("ours_ms"), ".3f"),
                      fmt(r.get("tflops"), ".1f"), fmt(r.get("speedup_vs_sdpa"), ".2f"),
                      fmt(r.get("speedup_vs_flex"), ".2f"), fmt(r.get("flop_bound"), ".1f"),
                      fmt(r.get("fraction_of_bound"), ".0%"), fmt(r.get("max_abs_vs_flex"), ".1e")])
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(w) if i else c.ljust(w)
                               for i, (c, w) in enumerate(zip(line, widths, strict=True))) for line in lines)


def merge_flex(rows: list[dict], flex_rows: list[dict]) -> list[dict]:
    """The measured rows with their Flex columns filled where a Flex record exists."""
    flex = {(f["case"], f["head_dim"]): f for f in flex_rows if "flex_ms" in f}
    keys = ("speedup_vs_flex", "max_abs_vs_flex")
    return [{**r, **{k: flex.get((r["case"], r["head_dim"]), {}).get(k) for k in keys}} for r in rows]


def read_jsonl(path: str) -> list[dict]:
    """The records of a (possibly cut short) JSONL file; a torn last line is ignored."""
    records = []
    try:
        with open(path) as handle:
            for line in handle:
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    break
    except FileNotFoundError:
        pass
    return records


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jsonl", help="append each record here as one JSON line, as it finishes")
    parser.add_argument("--quick", action="store_true", help="head_dim 128 only")
    parser.add_argument("--no-flex", action="store_true", help="skip FlexAttention")
    parser.add_argument("--deadline-s", type=float, default=240.0,
                        help="start no case after this many seconds, no Flex compile in the last 45")
    parser.add_argument("--simulate", type=float, metavar="SECONDS",
                        help="dry run without a GPU: each case sleeps this long and records no numbers")
    parser.add_argument("--simulate-hang-at", type=int, metavar="N", help="with --simulate: case N never returns")
    parser.add_argument("--table-from", metavar="JSONL", help="only print the table of the records in this file")
    args = parser.parse_args()
    if args.table_from:
        records = read_jsonl(args.table_from)
        rows = [r for r in records if r.get("kind") == "case" and "error" not in r and "skipped" not in r]
        print(f"fp16, {HEADS} heads; {len(rows)} case rows from {args.table_from}")
        print(table(merge_flex(rows, [r for r in records if r.get("kind") == "flex"])))
        return 0
    recorder = Recorder(args.jsonl)
    deadline = time.monotonic() + args.deadline_s
    dims = [128] if args.quick else [64, 128]
    jobs = [(case, dim) for dim in dims for case in CASES]
    flex_jobs = [(case, FLEX_HEAD_DIM) for case in CASES if case[0] in FLEX_CASES]
    if args.simulate is not None:
        recorder.emit({"kind": "meta", "simulated": True, "heads": HEADS, "dtype": "float16"})
        measure = simulated(args.simulate, args.simulate_hang_at)
        rows = run_rows(jobs, measure, recorder, deadline, "case")
        flex_rows = [] if args.no_flex else run_rows(flex_jobs, measure, recorder, deadline, "flex")
    else:
        if not torch.cuda.is_available():
            print("no CUDA device: this benchmark needs a GPU (or --simulate for a dry run)", file=sys.stderr)
            return 3
        from attn_export.native import NativeKernels

        kernels = NativeKernels()
        recorder.emit({"kind": "meta", "device": torch.cuda.get_device_name(), "torch": torch.__version__,
                       "cuda": torch.version.cuda, "dtype": "float16", "heads": HEADS,
                       "kernel_library": str(kernels.path)})
        rows = run_rows(jobs, lambda case, dim: measure_case(kernels, case, dim), recorder, deadline, "case")
        flex_rows = []
        if not args.no_flex:
            try:
                flex = flex_functions()
            except Exception as exc:  # noqa: BLE001 - no Flex in this torch: the table says so
                flex_rows = [recorder.emit({"kind": "flex", "error": one_line(exc)})]
            else:
                flex_rows = run_rows(flex_jobs, lambda case, dim: measure_flex(kernels, flex, case, dim), recorder,
                                     deadline, "flex", min_left_s=FLEX_MIN_LEFT_S)
    measured = [r for r in rows if "error" not in r and "skipped" not in r]
    print(f"\nfp16, {HEADS} heads; {len(measured)} of {len(rows)} cases measured, "
          f"{sum('flex_ms' in f for f in flex_rows)} of {len(flex_jobs)} Flex cases")
    print(table(merge_flex(measured, flex_rows)))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
