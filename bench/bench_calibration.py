"""Calibration time (INT8, ONNX Runtime on the CPU) of zoo models with 128 samples, per method.

nat-tiny calibrates on its seeded random inputs (a random-weight model has no data of its own),
nat-mnist on its training images. Time = the ORT runs collecting activations plus compute_amax;
`quantize s` adds writing the Q/DQ graph and onnx.checker.

    python bench/bench_calibration.py [--models nat-tiny nat-mnist] [--samples 128] [--methods max entropy]
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

import onnx

from attn_export.calib.qdq import QuantOptions, quantize
from attn_export.loader import load_model
from attn_export.pipeline import ExportOptions, calibration_source, export_job


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["nat-tiny", "nat-mnist"])
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--methods", nargs="+", default=["max", "percentile", "entropy", "mse"])
    args = parser.parse_args()
    print("| model | method | samples | activations | calibration s | quantize s |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        loaded = load_model(f"zoo:{name}")
        with tempfile.TemporaryDirectory() as tmp:
            export_job(loaded, tmp, ExportOptions(check=False), lambda title: contextlib.nullcontext())
            model = onnx.load(str(Path(tmp) / "model.onnx"))
        for method in args.methods:
            data = calibration_source(loaded, ExportOptions()).feeds  # loading data is not calibration
            start = time.perf_counter()
            result = quantize(model, data, QuantOptions("int8", method, args.samples))
            total = time.perf_counter() - start
            activations = sum(t.kind == "activation" for t in result.tensors)
            print(f"| {name} | {method} | {result.samples} | {activations} | {result.calibration_seconds:.2f} | "
                  f"{total:.2f} |", flush=True)


if __name__ == "__main__":
    main()
