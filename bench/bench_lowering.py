"""Benchmark: ONNX Runtime CPU time of each zoo model exported with `--lowering attention` (ONNX's Attention with
an exact mask) against `--lowering plugin` (the model-local functions ONNX Runtime runs), same inputs.

Each model is exported twice per spatial mode (dynamic spatial dims as the zoo declares them, and static), both
files load in this process, and `--reps` rounds alternate one run of each; the table gives the median times, the
median ratio attention / function with its min-max over the rounds, and the largest difference of their outputs.

    python bench/bench_lowering.py [--model nat-tiny ...] [--reps 15] [--threads N]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
from pathlib import Path


def sessions(name: str, dynamic_spatial: bool, folder: Path, threads: int):
    """{lowering: session} for one zoo model, plus its feed at the zoo's example size."""
    import onnxruntime as ort

    from attn_export.loader import load_model
    from attn_export.pipeline import ExportOptions, export_job

    loaded = load_model(f"zoo:{name}")
    out = {}
    for lowering in ("plugin", "attention"):
        opts = ExportOptions(lowering=lowering, check=False, engine=False,
                             dynamic_spatial=dynamic_spatial if loaded.spatial else None)
        result = export_job(loaded, folder / f"{name}-{lowering}-{dynamic_spatial}", opts,
                            lambda title: contextlib.nullcontext())
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        out[lowering] = ort.InferenceSession(str(result.onnx_path), options, providers=["CPUExecutionProvider"])
    feed = {n: t.numpy() for n, t in zip(loaded.input_names, loaded.random_inputs(0))}
    return out, feed, bool(loaded.spatial)


def measure(runs: dict, feed: dict, reps: int) -> dict:
    import numpy as np

    outputs = {name: session.run(None, feed)[0] for name, session in runs.items()}  # warm-up, and the diff
    times = {name: [] for name in runs}
    for _ in range(reps):
        for name, session in runs.items():
            start = time.perf_counter()
            session.run(None, feed)
            times[name].append(1e3 * (time.perf_counter() - start))
    ratios = [a / p for a, p in zip(times["attention"], times["plugin"])]
    return {"plugin_ms": statistics.median(times["plugin"]), "attention_ms": statistics.median(times["attention"]),
            "ratio": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
            "diff": float(np.abs(outputs["attention"] - outputs["plugin"]).max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", default=None, help="zoo models [all]")
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads [its default]")
    args = parser.parse_args()
    import onnxruntime as ort

    from attn_export.models import zoo

    print(f"{os.cpu_count()} CPUs, onnxruntime {ort.__version__} ({args.threads or 'default'} threads), batch 1 at "
          f"each zoo model's example size, {args.reps} rounds, {time.strftime('%Y-%m-%d')}")
    print("| model | spatial dims | function ms | Attention lowering ms | attention / function (min-max) | "
          "max abs diff |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.model or zoo.names():
            for dynamic in (True, False):
                runs, feed, has_spatial = sessions(name, dynamic, Path(tmp), args.threads)
                if dynamic and not has_spatial:
                    continue  # the model declares no spatial dims: its one export is the static row
                r = measure(runs, feed, args.reps)
                print(f"| {name} | {'dynamic' if dynamic else 'static'} | {r['plugin_ms']:.2f} | "
                      f"{r['attention_ms']:.2f} | {r['ratio']:.2f}x ({r['min']:.2f}-{r['max']:.2f}) | "
                      f"{r['diff']:.1e} |", flush=True)


if __name__ == "__main__":
    main()
