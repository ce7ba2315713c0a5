"""INT8 top-1 of issue 25's model (bench/mnist_navit.py: a NATTEN ViT on raw MNIST digits) per calibrator,
attn-export next to NVIDIA ModelOpt's ONNX PTQ on the same fp32 file and the same 128 calibration digits.

The fp32 file comes from the CLI, as a user makes it (``attn-export CKPT --factory mnist_navit:build``,
NATTEN converted on load); each quantized file is judged on the 1,000 held-out digits in ONNX Runtime with
Q/DQ evaluated exactly (attn_export.parity.onnxruntime_session(..., exact_qdq=True)). Quantization time is the
in-process time of one quantize call (attn_export.calib.qdq.quantize; modelopt.onnx.quantization.quantize in
its own interpreter, timed there), without loading the fp32 file or the data.

ModelOpt runs only where its separate virtual environment exists (it pins onnx and onnxruntime-gpu):

    python3 -m venv /work/modelopt-venv && /work/modelopt-venv/bin/pip install "nvidia-modelopt[onnx]"
    python bench/bench_peer_modelopt.py [--methods max entropy] [--opset 19] [--modelopt-python PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from attn_export.calib.qdq import QuantOptions, quantize, save
from attn_export.models.mnist import load_split
from attn_export.parity import cpu_isa, onnxruntime_session

BENCH = Path(__file__).resolve().parent
MODELOPT_PYTHON = Path("/work/modelopt-venv/bin/python")
OURS = ("max", "percentile", "entropy", "mse")
THEIRS = ("max", "entropy")  # ModelOpt's INT8 calibration methods
BATCH = 100

# Runs inside the ModelOpt venv: time one quantize call and print the seconds as the last line.
MODELOPT_SNIPPET = """
import sys, time
import numpy as np
from modelopt.onnx.quantization import quantize
onnx_path, calib, method, out = sys.argv[1:5]
data = np.load(calib)
start = time.perf_counter()
quantize(onnx_path=onnx_path, quantize_mode="int8", calibration_data=data, calibration_method=method,
         high_precision_dtype="fp32", output_path=out, calibration_eps=["cpu"], log_level="WARNING")
print(time.perf_counter() - start)
"""


def top1(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    session = onnxruntime_session(str(path), exact_qdq=True)
    name = session.get_inputs()[0].name
    predictions = np.concatenate([session.run(None, {name: x[i:i + BATCH]})[0].argmax(1)
                                  for i in range(0, len(x), BATCH)])
    return 100.0 * float((predictions == y).mean())


def export_fp32(folder: Path, opset: int) -> Path:
    """model.onnx through the CLI, as a user exports the checkpoint (the check on, so a bad file stops here)."""
    cli = Path(sys.executable).with_name("attn-export")
    command = [str(cli), str(BENCH / "weights" / "mnist_navit.pt"), "--factory", "mnist_navit:build",
               "-o", str(folder), "--opset", str(opset), "--no-engine"]
    done = subprocess.run(command, cwd=BENCH, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"attn-export failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return folder / "model.onnx"


def ours(fp32: Path, calib: np.ndarray, method: str, out: Path) -> dict:
    model = onnx.load(str(fp32))
    feeds = [{"images": calib[i:i + 1]} for i in range(len(calib))]
    start = time.perf_counter()
    result = quantize(model, feeds, QuantOptions("int8", method, len(calib)))
    seconds = time.perf_counter() - start
    save(result.model, out)
    first_conv = next(node for node in model.graph.node if node.op_type == "Conv")
    return {"seconds": seconds, "first_conv_amax": result.activation_amax.get(first_conv.input[0])}


def modelopt(python: Path, fp32: Path, calib_path: Path, method: str, out: Path) -> dict:
    done = subprocess.run([str(python), "-c", MODELOPT_SNIPPET, str(fp32), str(calib_path), method, str(out)],
                          capture_output=True, text=True)
    if done.returncode or not out.is_file():
        return {"error": (done.stdout + done.stderr).strip().splitlines()[-1]}
    return {"seconds": float(done.stdout.strip().splitlines()[-1])}


def modelopt_version(python: Path) -> str:
    done = subprocess.run([str(python), "-c", "import modelopt, onnx, onnxruntime as o; "
                           "print(modelopt.__version__, onnx.__version__, o.__version__)"],
                          capture_output=True, text=True)
    return done.stdout.strip()


def evaluate(methods=OURS, peer_methods=THEIRS, opset: int = 19, samples: int = 128,
             modelopt_python: Path | None = MODELOPT_PYTHON) -> dict:
    x_train, x_test, _, y_test = load_split()
    calib = np.ascontiguousarray(x_train[:samples])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        calib_path = folder / "calib.npy"
        np.save(calib_path, calib)
        fp32 = export_fp32(folder / "out", opset)
        rows.append({"tool": "fp32", "method": "-", "top1": top1(fp32, x_test, y_test),
                     "mb": fp32.stat().st_size / 1e6})
        for method in methods:
            path = folder / f"ours-{method}.onnx"
            row = {"tool": "attn-export", "method": method, **ours(fp32, calib, method, path)}
            rows.append({**row, "top1": top1(path, x_test, y_test), "mb": path.stat().st_size / 1e6})
        peer = modelopt_python if modelopt_python and Path(modelopt_python).is_file() else None
        for method in peer_methods if peer else ():
            path = folder / f"modelopt-{method}.onnx"
            row = {"tool": "ModelOpt", "method": method, **modelopt(peer, fp32, calib_path, method, path)}
            if "error" not in row:
                row.update(top1=top1(path, x_test, y_test), mb=path.stat().st_size / 1e6,
                           functions=len(onnx.load(str(path), load_external_data=False).functions))
            rows.append(row)
    return {"rows": rows, "opset": opset, "samples": samples, "test_images": len(x_test),
            "modelopt": modelopt_version(peer) if peer else "not installed", "cpu": f"{cpu_name()}, {cpu_isa()}"}


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return f"{names[0]} x{len(names)}" if names else platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(OURS))
    parser.add_argument("--peer-methods", nargs="*", default=list(THEIRS))
    parser.add_argument("--opset", type=int, default=19, help="of the fp32 file (ModelOpt upgrades below 19)")
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--modelopt-python", type=Path, default=MODELOPT_PYTHON)
    parser.add_argument("--json")
    args = parser.parse_args()
    result = evaluate(args.methods, args.peer_methods, args.opset, args.samples, args.modelopt_python)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    base = result["rows"][0]["top1"]
    print(f"{result['test_images']} held-out digits, {result['samples']} calibration digits, opset {result['opset']}, "
          f"ModelOpt (modelopt, onnx, onnxruntime) {result['modelopt']}, CPU {result['cpu']}")
    print("| tool | calibrator | top-1 % | vs fp32 (points) | quantize s | file MB |")
    print("|---|---|---|---|---|---|")
    for row in result["rows"]:
        if "error" in row:
            print(f"| {row['tool']} | {row['method']} | failed: {row['error']} | | | |")
            continue
        seconds = f"{row['seconds']:.2f}" if "seconds" in row else "-"
        print(f"| {row['tool']} | {row['method']} | {row['top1']:.1f} | {row['top1'] - base:+.1f} | {seconds} | "
              f"{row['mb']:.3f} |")


if __name__ == "__main__":
    main()
