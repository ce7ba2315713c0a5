"""Cost of each calibrator alone (no ONNX Runtime): collect 128 activation batches of 50,176 values, then
compute_amax; best of --repeats, interleaved. With --baseline FILE (another calibrators.py, for instance
``git show 7d657d5:calib/calibrators.py > old.py``) both run in the same process and the table gives ratios.

    python bench/bench_calibrators.py [--baseline old.py] [--repeats 5]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time

import numpy as np

from attn_export.calib import calibrators

METHODS = ("max", "percentile", "entropy", "mse")


def batches(count: int = 128) -> list[np.ndarray]:
    """Heavy-tailed activations ([1, 64, 28, 28], Student t with 4 degrees of freedom) whose range grows."""
    rng = np.random.default_rng(0)
    return [rng.standard_t(4, size=(1, 64, 28, 28)).astype(np.float32) * (1 + i % 3) for i in range(count)]


def load(path: str):
    spec = importlib.util.spec_from_file_location("baseline_calibrators", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def seconds(module, method: str, data) -> tuple[float, float]:
    calibrator = module.make_calibrator(method)
    start = time.perf_counter()
    for batch in data:
        calibrator.collect(batch)
    collected = time.perf_counter()
    calibrator.compute_amax()
    return collected - start, time.perf_counter() - collected


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", help="another calibrators.py to compare with")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    modules = {"this": calibrators, **({"baseline": load(args.baseline)} if args.baseline else {})}
    data = batches()
    best: dict = {}
    for _ in range(args.repeats):
        for name, module in modules.items():
            for method in METHODS:
                times = seconds(module, method, data)
                best[name, method] = tuple(min(a, b) for a, b in zip(best.get((name, method), times), times))
    print("| method | collect ms | compute_amax ms |" + (" baseline collect ms | baseline amax ms | ratio collect | "
                                                        "ratio amax |" if args.baseline else ""))
    print("|---|---|---|" + ("---|---|---|---|" if args.baseline else ""))
    for method in METHODS:
        collect, amax = best["this", method]
        row = f"| {method} | {collect * 1e3:.0f} | {amax * 1e3:.1f} |"
        if args.baseline:
            old_collect, old_amax = best["baseline", method]
            row += (f" {old_collect * 1e3:.0f} | {old_amax * 1e3:.1f} | {collect / old_collect:.2f} | "
                    f"{amax / max(old_amax, 1e-9):.2f} |")
        print(row)


if __name__ == "__main__":
    main()
