"""Benchmark: CPU neighborhood and block-sparse attention, the torch op and the exported ONNX function on
ONNX Runtime, each against dense SDPA over all N x N pairs measured in the same process.

Every (case, implementation) runs in a fresh subprocess, so its peak RSS is its own: peak MB is the growth
of ru_maxrss during the first full-size call, after a warm-up on a tiny input. Then `--reps` rounds
alternate one dense SDPA call and one call of the implementation; the table gives the median times and
the median, min and max of the per-round ratios (the spread is the machine's noise).

    python bench/bench_cpu_attention.py [--reps 7] [--only na bsa] [--impls op onnx onnx-static attention]
                                        [--quick] [--threads N]

Implementations: `op` the torch op; `onnx` the node's local function with every dim symbolic; `onnx-static` the
same with the spatial dims (NA) or sequence length (block-sparse) stated in the file, as a --static-spatial
export writes it (NA then uses its shape-specialised overload); `attention` the node lowered to ONNX's
Attention with an exact mask (--lowering attention), shapes as `onnx-static`.

--threads sets torch's and ONNX Runtime's intra-op threads alike (default: each library's own, the cores).
On a machine shared with other jobs, one thread is the contention-robust comparison: a parallel region
then waits for a thread the scheduler has parked, and the implementations differ in how many they open.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time

NA_HEADS, NA_DIM = 4, 32
BSA_SEQ, BSA_BLOCK, BSA_HEADS, BSA_DIM = 4096, 64, 4, 64
# (name, spatial, kernel): 1-D, 2-D and 3-D at several kernel sizes; the table is 2-D k=7.
NA_CASES = [
    ("na1d", (4096,), 7), ("na1d", (4096,), 31), ("na1d", (16384,), 7),
    ("na2d", (32, 32), 7), ("na2d", (64, 64), 3), ("na2d", (64, 64), 7), ("na2d", (64, 64), 13),
    ("na2d", (96, 96), 7),
    ("na3d", (16, 16, 16), 3), ("na3d", (16, 16, 16), 5), ("na3d", (8, 32, 32), 7),
]
BSA_DENSITIES = [0.1, 0.25, 0.5, 1.0]
IMPL_NAMES = {"op": "torch op", "onnx": "ONNX fn (ORT)", "onnx-static": "ONNX fn, static spatial (ORT)",
              "attention": "Attention lowering (ORT)"}
QUICK = {("na2d", (32, 32), 7), ("na2d", (64, 64), 7)}


def session_options(threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads  # 0: ONNX Runtime's default
    # Idle ONNX Runtime threads otherwise spin after each run and slow the dense SDPA timed next to it
    # (64x64: 89 ms instead of 60 ms), which would flatter the ratio.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def lowered_session(graph, impl: str, threads: int):
    """ONNX Runtime session of a one-node graph: its local function (`onnx`, `onnx-static`) or its attention
    lowering (`attention`, opset 23)."""
    import onnxruntime as ort
    from onnx import helper

    from attn_export.lowering import ATTENTION_MIN_OPSET, lower_to_attention
    from attn_export.onnx_export import DEFAULT_OPSET, attach_local_functions

    opset = ATTENTION_MIN_OPSET if impl == "attention" else DEFAULT_OPSET
    model = attach_local_functions(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))
    if impl == "attention":
        model = lower_to_attention(model)
    return ort.InferenceSession(model.SerializeToString(), session_options(threads), providers=["CPUExecutionProvider"])


def na_session(spatial: tuple[int, ...], kernel: int, impl: str, threads: int):
    """ONNX Runtime session of one NeighborhoodAttention node: every dim symbolic (`onnx`), or only the batch."""
    from onnx import TensorProto, helper

    from attn_export.registry import DOMAIN, NEIGHBORHOOD

    rank = len(spatial)
    if impl == "onnx":
        sym = ["b", *(f"s{i}" for i in range(rank)), "heads", "d"]
    else:
        sym = ["b", *spatial, NA_HEADS, NA_DIM]
    node = helper.make_node(NEIGHBORHOOD.onnx_op_type, ["q", "k", "v"], ["out"], domain=DOMAIN,
                            kernel_size=[kernel] * rank, stride=[1] * rank, dilation=[1] * rank,
                            is_causal=[0] * rank, scale=NA_DIM ** -0.5)
    graph = helper.make_graph([node], "na", [helper.make_tensor_value_info(n, TensorProto.FLOAT, sym) for n in "qkv"],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, sym)])
    return lowered_session(graph, impl, threads)


def bsa_session(impl: str, threads: int):
    """ONNX Runtime session of one BlockSparseAttention node: every dim symbolic (`onnx`), or only the batch."""
    from onnx import TensorProto, helper

    from attn_export.registry import BLOCK_SPARSE, DOMAIN

    def info(name, kind, rank):
        dims = [f"{name}{i}" for i in range(rank)]
        if impl != "onnx" and kind == TensorProto.FLOAT:  # q, k, v, out: only the batch symbolic
            dims[1:] = [BSA_HEADS, BSA_SEQ, BSA_DIM]
        elif impl != "onnx":  # the layouts: [1, H, nQB(, max_blocks)]
            dims[:2] = [1, BSA_HEADS]
        return helper.make_tensor_value_info(name, kind, dims)

    node = helper.make_node(BLOCK_SPARSE.onnx_op_type, ["q", "k", "v", "kv_count", "kv_index"], ["out"], domain=DOMAIN,
                            block_q=BSA_BLOCK, block_kv=BSA_BLOCK, scale=BSA_DIM ** -0.5)
    inputs = [info(n, TensorProto.FLOAT, 4) for n in "qkv"]
    inputs += [info("kv_count", TensorProto.INT32, 3), info("kv_index", TensorProto.INT32, 4)]
    graph = helper.make_graph([node], "bsa", inputs, [info("out", TensorProto.FLOAT, 4)])
    return lowered_session(graph, impl, threads)


def random_layout(n_blocks: int, per_row: int, heads: int, seed: int = 0):
    """Every query block lists `per_row` random kv blocks (ascending)."""
    import torch

    from attn_export.models.block_layout import from_block_mask

    scores = torch.rand(1, heads, n_blocks, n_blocks, generator=torch.Generator().manual_seed(seed))
    mask = torch.zeros(1, heads, n_blocks, n_blocks, dtype=torch.bool)
    return from_block_mask(mask.scatter_(-1, scores.topk(per_row, dim=-1).indices, True))


def na_workload(spatial: tuple[int, ...], kernel: int, impl: str, threads: int):
    """(run(inputs), inputs of the full size, inputs of a tiny size, SDPA's q, k, v) for one NA case."""
    import torch

    from attn_export.models import neighborhood_attention

    def make(shape):
        return torch.randn(3, 1, *shape, NA_HEADS, NA_DIM).unbind(0)

    # A file with static spatial dims runs at that size only: its warm-up uses the full size too.
    full = make(spatial)
    tiny = make((kernel + 1,) * len(spatial)) if impl in ("op", "onnx") else full
    if impl == "op":
        def run(q, k, v):
            return neighborhood_attention(q, k, v, kernel)
    else:
        session = na_session(spatial, kernel, impl, threads)

        def run(q, k, v):
            return session.run(None, {"q": q.numpy(), "k": k.numpy(), "v": v.numpy()})
    dense = [t.reshape(1, -1, NA_HEADS, NA_DIM).transpose(1, 2).contiguous() for t in full]
    return run, full, tiny, dense


def bsa_workload(density: float, impl: str, threads: int):
    import torch

    from attn_export.models import block_sparse_attention

    n_blocks = BSA_SEQ // BSA_BLOCK
    count, index = random_layout(n_blocks, max(1, round(density * n_blocks)), BSA_HEADS)
    full = list(torch.randn(3, 1, BSA_HEADS, BSA_SEQ, BSA_DIM).unbind(0)) + [count, index]
    tiny = list(torch.randn(3, 1, BSA_HEADS, 2 * BSA_BLOCK, BSA_DIM).unbind(0)) + list(random_layout(2, 1, BSA_HEADS))
    tiny = tiny if impl in ("op", "onnx") else full
    if impl == "op":
        def run(q, k, v, c, i):
            return block_sparse_attention(q, k, v, c, i, BSA_BLOCK, BSA_BLOCK)
    else:
        session = bsa_session(impl, threads)

        def run(q, k, v, c, i):
            return session.run(None, dict(zip(("q", "k", "v", "kv_count", "kv_index"), (t.numpy() for t in
                                                                                      (q, k, v, c, i)))))
    return run, full, tiny, full[:3]


def measure(case: dict, impl: str, reps: int, threads: int) -> dict:
    """Peak RSS growth of the first full-size call, then `reps` alternating rounds of dense SDPA and impl."""
    import torch

    torch.manual_seed(0)
    if case["kind"] == "bsa":
        run, full, tiny, dense_qkv = bsa_workload(case["density"], impl, threads)
    else:
        run, full, tiny, dense_qkv = na_workload(tuple(case["spatial"]), case["kernel"], impl, threads)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    with torch.inference_mode():
        run(*tiny)
        sdpa(*(t[:, :, :8] for t in dense_qkv))
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        run(*full)
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
        sdpa(*dense_qkv)
        ours, dense = [], []
        for _ in range(reps):
            for fn, times in ((lambda: sdpa(*dense_qkv), dense), (lambda: run(*full), ours)):
                start = time.perf_counter()
                fn()
                times.append(1e3 * (time.perf_counter() - start))
    ratios = [o / d for o, d in zip(ours, dense)]
    return {"ms": statistics.median(ours), "dense_ms": statistics.median(dense), "ratio": statistics.median(ratios),
            "ratio_min": min(ratios), "ratio_max": max(ratios), "peak_mb": peak_mb}


def cases(only: list[str], quick: bool) -> list[dict]:
    out = []
    if "na" in only:
        out += [{"kind": name, "spatial": list(spatial), "kernel": kernel} for name, spatial, kernel in NA_CASES
                if not quick or (name, spatial, kernel) in QUICK]
    if "bsa" in only:
        out += [{"kind": "bsa", "density": d} for d in (BSA_DENSITIES if not quick else [0.1, 1.0])]
    return out


def label(case: dict) -> tuple[str, int]:
    if case["kind"] == "bsa":
        return f"block-sparse S={BSA_SEQ} block {BSA_BLOCK}, {case['density']:.0%} density", BSA_SEQ
    shape = "x".join(map(str, case["spatial"]))
    return f"NA {len(case['spatial'])}-D {shape}, k={case['kernel']}", math.prod(case["spatial"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--only", nargs="+", choices=["na", "bsa"], default=["na", "bsa"])
    parser.add_argument("--impls", nargs="+", choices=list(IMPL_NAMES), default=["op", "onnx"])
    parser.add_argument("--quick", action="store_true", help="only the cases of the issue's goal table")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads of torch and ONNX Runtime")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    import onnxruntime
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.case:
        from attn_export.errors import AttnExportError

        case, impl = json.loads(args.case)
        try:
            print(json.dumps(measure(case, impl, args.reps, args.threads)))
        except AttnExportError as exc:  # the attention lowering's size guard: a row that says so
            print(json.dumps({"refused": str(exc)}))
        return
    print(f"{os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime "
          f"{onnxruntime.__version__}, fp32, batch 1; NA {NA_HEADS} heads, head_dim {NA_DIM}, stride 1, dilation 1; "
          f"block-sparse {BSA_HEADS} heads, head_dim {BSA_DIM}; {args.reps} rounds, {time.strftime('%Y-%m-%d')}")
    print("| case | tokens | impl | ms | dense SDPA ms | time / dense SDPA (min-max) | peak MB |")
    print("|---|---|---|---|---|---|---|")
    for case in cases(args.only, args.quick):
        for impl in args.impls:
            proc = subprocess.run([sys.executable, __file__, "--reps", str(args.reps), "--threads", str(args.threads),
                                   "--case", json.dumps([case, impl])], capture_output=True, text=True, check=True)
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            name, tokens = label(case)
            if "refused" in r:
                print(f"| {name} | {tokens} | {IMPL_NAMES[impl]} | refused by the size guard | | | |", flush=True)
                continue
            print(f"| {name} | {tokens} | {IMPL_NAMES[impl]} | {r['ms']:.2f} | "
                  f"{r['dense_ms']:.2f} | {r['ratio']:.2f}x ({r['ratio_min']:.2f}-{r['ratio_max']:.2f}) | "
                  f"{r['peak_mb']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
