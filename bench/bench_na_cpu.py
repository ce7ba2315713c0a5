"""Benchmark (a): the CPU neighborhood-attention op and its ONNX local function (on ONNX Runtime)
against dense masked softmax, 2-D, k=7.

Each case runs in a fresh subprocess so that its peak RSS (ru_maxrss) is its own; memory is
reported as peak RSS minus the RSS after the inputs were allocated. Both implementations run in
the same process on the same tensors, one after the other in separate subprocesses for memory.

    python bench/bench_na_cpu.py [--sizes 16 32 64 96] [--kernel 7] [--heads 4] [--dim 32]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def dense_masked(q, k, v, kernel):
    """The baseline: full N x N scores with the neighbourhood as a boolean mask."""
    import torch

    from attn_export.models.neighborhood import NAParams, neighborhood_index

    batch, h, w, heads, dim = q.shape
    key, _, _ = neighborhood_index((h, w), NAParams.from_args(2, kernel))
    n = h * w
    mask = torch.zeros(n, n, dtype=torch.bool)
    mask.scatter_(1, key, True)
    qh, kh, vh = (t.reshape(batch, n, heads, dim).transpose(1, 2) for t in (q, k, v))
    logits = (qh @ kh.transpose(-1, -2)) * dim**-0.5
    out = logits.masked_fill(~mask, float("-inf")).softmax(-1) @ vh
    return out.transpose(1, 2).reshape(q.shape)


def onnx_function_session(kernel: int):
    """ONNX Runtime session of one NeighborhoodAttention node with its local function."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from attn_export.onnx_export import DEFAULT_OPSET, attach_local_functions
    from attn_export.registry import DOMAIN, NEIGHBORHOOD

    sym = ["b", "h", "w", "heads", "d"]
    node = helper.make_node(NEIGHBORHOOD.onnx_op_type, ["q", "k", "v"], ["out"], domain=DOMAIN,
                            kernel_size=[kernel, kernel], stride=[1, 1], dilation=[1, 1], is_causal=[0, 0], scale=1.0)
    graph = helper.make_graph([node], "na", [helper.make_tensor_value_info(n, TensorProto.FLOAT, sym) for n in "qkv"],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, sym)])
    model = attach_local_functions(helper.make_model(graph, opset_imports=[helper.make_opsetid("", DEFAULT_OPSET)]))
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def make_fn(impl: str, kernel: int):
    from attn_export.models import neighborhood_attention

    if impl == "na":
        return lambda q, k, v: neighborhood_attention(q, k, v, kernel)
    if impl == "dense":
        return lambda q, k, v: dense_masked(q, k, v, kernel)
    session = onnx_function_session(kernel)
    return lambda q, k, v: session.run(None, {"q": q.numpy(), "k": k.numpy(), "v": v.numpy()})


def run_case(impl: str, size: int, kernel: int, heads: int, dim: int, reps: int) -> dict:
    import torch

    torch.manual_seed(0)
    q, k, v = torch.randn(3, 1, size, size, heads, dim).unbind(0)
    run = make_fn(impl, kernel)
    with torch.inference_mode():  # warm up the runtime (thread pools, allocator) on a tiny input first
        small = torch.randn(1, 2 * kernel, 2 * kernel, heads, dim)
        run(small, small, small)
    fn = lambda: run(q, k, v)  # noqa: E731
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.inference_mode():
        fn()  # warm-up (also the peak-memory run)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return {"impl": impl, "size": size, "ms": 1e3 * statistics.median(times), "peak_mb": (peak - base) / 1024}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 32, 64, 96])
    parser.add_argument("--kernel", type=int, default=7)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--case", nargs=2, metavar=("IMPL", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case[0], int(args.case[1]), args.kernel, args.heads, args.dim, args.reps)))
        return
    rows = []
    for size in args.sizes:
        result = {}
        for impl in ("na", "onnx", "dense"):
            out = subprocess.run(
                [sys.executable, __file__, "--case", impl, str(size), "--kernel", str(args.kernel),
                 "--heads", str(args.heads), "--dim", str(args.dim), "--reps", str(args.reps)],
                capture_output=True, text=True, check=True)
            result[impl] = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append((size, result["na"], result["onnx"], result["dense"]))
    print(f"2-D neighborhood attention, k={args.kernel}, batch 1, {args.heads} heads, head_dim {args.dim}, "
          f"fp32, {__import__('os').cpu_count()} CPU threads")
    print("| size | tokens N | NA op ms | ONNX fn ms | dense ms | dense/NA time | NA ms per 1k tokens | "
          "ONNX fn ms per 1k tokens | NA peak MB | ONNX fn peak MB | dense peak MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for size, na, fn, dense in rows:
        n = size * size
        print(f"| {size}x{size} | {n} | {na['ms']:.2f} | {fn['ms']:.2f} | {dense['ms']:.2f} | "
              f"{dense['ms'] / na['ms']:.2f}x | {1e3 * na['ms'] / n:.2f} | {1e3 * fn['ms'] / n:.2f} | "
              f"{na['peak_mb']:.1f} | {fn['peak_mb']:.1f} | {dense['peak_mb']:.1f} |")


if __name__ == "__main__":
    main()
