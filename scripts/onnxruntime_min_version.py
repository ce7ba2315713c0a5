"""Find the oldest onnxruntime that runs what attn-export writes (how pyproject's minimum was set).

Exports every zoo model (float; na1d-causal also INT8 and INT4) with this checkout, then, for each given
onnxruntime version, installs that wheel into a scratch folder (pip, from the package index) and runs
every file in a subprocess: the session must load and the outputs must match this environment's
onnxruntime (Q/DQ evaluated exactly) within 1e-4.

    python scripts/onnxruntime_min_version.py 1.20.1 1.21.1 1.22.0
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

RUN = r"""
import json, sys
import numpy as np
import onnxruntime as ort
feeds = np.load(sys.argv[2])
result = {"version": ort.__version__}
try:
    options = ort.SessionOptions()
    options.add_session_config_entry("session.disable_quant_qdq", "1")
    session = ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
    np.save(sys.argv[3], session.run(None, {i.name: feeds[i.name] for i in session.get_inputs()})[0])
    result["ok"] = True
except Exception as exc:
    result["error"] = str(exc).splitlines()[0][:200]
print(json.dumps(result))
"""


def export_all(folder: Path) -> list[tuple[Path, Path]]:
    import attn_export
    from attn_export.loader import load_model
    from attn_export.models import zoo

    files = []
    for name in zoo.names():
        for mode in ("", "int8", "int4") if name == "na1d-causal" else ("",):
            out = folder / f"{name}-{mode or 'fp32'}"
            attn_export.run(f"zoo:{name}", out, check=False, engine=False, quantize=mode or None, calib_samples=4)
            loaded = load_model(f"zoo:{name}")
            np.savez(out / "feed.npz", **{n: t.numpy() for n, t in zip(loaded.input_names, loaded.random_inputs(0))})
            files.append((out / (f"model.{mode}.onnx" if mode else "model.onnx"), out / "feed.npz"))
    return files


def run_with(target: str | None, model: Path, feed: Path, out: Path) -> dict:
    env = {"PYTHONPATH": target} if target else {}
    import os

    proc = subprocess.run([sys.executable, "-c", RUN, str(model), str(feed), str(out)], capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=600)
    return json.loads(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else {"error": proc.stderr[-200:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("versions", nargs="+")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = export_all(tmp / "models")
        print("| onnxruntime | files that load and match | first failure |")
        print("|---|---|---|")
        for version in args.versions:
            target = tmp / f"ort-{version}"
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                            f"onnxruntime=={version}"], check=True)
            good, failure = 0, ""
            for model, feed in files:
                want = run_with(None, model, feed, tmp / "want.npy")
                got = run_with(str(target), model, feed, tmp / "got.npy")
                if got.get("version") != version:
                    failure = failure or f"{model.parent.name}: imported onnxruntime {got.get('version')}"
                elif got.get("ok") and want.get("ok") and np.allclose(np.load(tmp / "got.npy"),
                                                                      np.load(tmp / "want.npy"), atol=1e-4):
                    good += 1
                else:
                    failure = failure or f"{model.parent.name}: {got.get('error', 'outputs differ')}"
            print(f"| {version} | {good} / {len(files)} | {failure} |", flush=True)


if __name__ == "__main__":
    main()
