"""Benchmark (b): ONNX Runtime latency of an exported zoo model against PyTorch eager, same inputs.

Both run on the CPU in this process, alternating, with their default thread counts; the ratio is
eager / ORT (above 1 means ONNX Runtime is faster).

    python bench/bench_onnx_vs_eager.py [--model nat-tiny] [--batches 1 8] [--reps 20]
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
from pathlib import Path

from timing import median_ms


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", default=["nat-tiny"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args()

    import numpy as np
    import onnxruntime as ort
    import torch

    from attn_export import export
    from attn_export.inputs import random_inputs
    from attn_export.models import zoo

    print(f"CPU: {os.cpu_count()} threads; torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"onnxruntime {ort.__version__}")
    print("| model | batch | eager ms | ONNX Runtime ms | eager / ORT | max abs diff |")
    print("|---|---|---|---|---|---|")
    for name in args.model:
        entry = zoo.entry(name)
        model, examples = zoo.create(name)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            export(model, examples, path, dynamic_shapes=entry.dynamic_shapes(batch=True),
                   input_names=[s.name for s in entry.inputs], output_names=["output"])
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for batch in args.batches:
            xs = random_inputs(entry.inputs, seed=batch, shapes={s.name: (batch, *s.shape[1:]) for s in entry.inputs})
            feed = {s.name: x.numpy() for s, x in zip(entry.inputs, xs)}
            with torch.inference_mode():
                eager = median_ms(functools.partial(model, *xs), args.reps)
                want = model(*xs).numpy()
            onnx_ms = median_ms(functools.partial(session.run, None, feed), args.reps)
            diff = float(np.abs(session.run(None, feed)[0] - want).max())
            print(f"| {name} | {batch} | {eager:.2f} | {onnx_ms:.2f} | {eager / onnx_ms:.2f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
