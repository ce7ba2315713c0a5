"""`attn-export bench OUTDIR`: latency percentiles and throughput of an export on each runtime and batch size, side by
side with PyTorch eager, as a table and OUTDIR/bench.json.

Runtimes: ``ort`` (ONNX Runtime on the CPU, and its CUDA and TensorRT providers where installed), ``trt`` (the
TensorRT engine OUTDIR/model.engine with the plugin library) and ``torch`` (the PyTorch model, eager, on the CPU and
on CUDA where present). What cannot run here is listed with the reason, never timed.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from attn_export import native, trt
from attn_export.errors import AttnExportError
from attn_export.loader import load_model
from attn_export.onnx_utils import graph_inputs
from attn_export.options.bench import RUNTIMES, BenchOptions  # noqa: F401 - also bench's, as before
from attn_export.outdir import write_text_atomically
from attn_export.precision import cast_feeds, onnx_precision
from attn_export.shapes import parse_input_shapes
from attn_export.tables import render_table
from attn_export.trt import trt_runner

SPINNING = "session.intra_op.allow_spinning"
# ONNX Runtime's TensorRT provider serves registered plugins as ops of domain "trt.plugins"; our nodes (domain
# attn_export) carry model-local functions, which ONNX Runtime inlines: that row times the decomposition.
ORT_TRT_NOTE = "attention as its ONNX functions (ONNX Runtime inlines them), not the plugin"
BENCH_NAME = "bench.json"


@dataclass
class Row:
    runtime: str
    batch: int
    status: str = "ok"  # "ok" | "skipped"
    reason: str = ""  # why it was skipped, or what a timed row measures beyond its name
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None
    throughput: float | None = None  # samples per second at the mean latency
    vs_eager: float | None = None  # pytorch-cpu p50 / this p50 (above 1: faster than eager)


@dataclass
class BenchReport:
    outdir: str
    onnx: str
    model: str | None
    precision: str
    iters: int
    warmup: int
    rows: list[Row]
    machine: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {**{k: v for k, v in asdict(self).items() if k != "rows"}, "rows": [asdict(r) for r in self.rows]}

    def table(self) -> str:
        def ms(value):
            return "-" if value is None else f"{value:.2f}"

        rows = [(r.runtime, str(r.batch), ms(r.p50_ms), ms(r.p90_ms), ms(r.p99_ms),
                 "-" if r.throughput is None else f"{r.throughput:.1f}",
                 "-" if r.vs_eager is None else f"{r.vs_eager:.2f}x",
                 ("skipped: " if r.status != "ok" else "") + r.reason)
                for r in self.rows]
        head = ("runtime", "batch", "p50 ms", "p90 ms", "p99 ms", "samples/s", "vs eager", "note")
        note = (f"{self.iters} timed runs per row after {self.warmup} warm-up runs, the runtimes taking turns; "
                f"{self.onnx} ({self.precision}); vs eager = pytorch-cpu p50 / p50; CPU threads: torch "
                f"{self.machine.get('torch_threads')}, onnxruntime its default (not spinning); load average "
                f"{self.machine.get('load_average_1m', float('nan')):.1f} at the start")
        return "\n".join([render_table(head, rows), note])


def percentiles(times_s: Sequence[float]) -> dict[str, float]:
    values = np.asarray(times_s, np.float64) * 1e3
    return {"p50_ms": float(np.percentile(values, 50)), "p90_ms": float(np.percentile(values, 90)),
            "p99_ms": float(np.percentile(values, 99)), "mean_ms": float(values.mean())}


def time_round_robin(calls: dict[str, Callable[[], object]], iters: int, warmup: int) -> dict[str, list[float]]:
    """Wall time of ``iters`` calls of each, after ``warmup`` untimed ones. The runtimes take turns call by call,
    so that a load that comes and goes on the machine weighs on each of them alike (their ratio stays fair)."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    times: dict[str, list[float]] = {label: [] for label in calls}
    for _ in range(iters):
        for label, call in calls.items():
            start = time.perf_counter()
            call()
            times[label].append(time.perf_counter() - start)
    return times


# ---------------------------------------------------------------------------------------------
# What to run


@dataclass
class Target:
    """The export under test: its ONNX inputs (name -> dims, dtype) and the shapes to run at each batch."""

    outdir: Path
    onnx: Path
    inputs: dict  # name -> (dims as the ONNX file declares them, numpy dtype)
    export_shapes: dict  # name -> the shape the check ran first (report.json), else the static dims
    model: str | None
    command: list
    precision: str

    def shapes(self, batch: int) -> dict[str, tuple[int, ...]]:
        shapes = {}
        for name, (dims, _) in self.inputs.items():
            shape = list(self.export_shapes.get(name) or [])
            if len(shape) != len(dims) or any(not isinstance(d, int) and s < 1 for d, s in zip(dims, shape)):
                missing = [a for a, d in enumerate(dims) if not isinstance(d, int)]
                raise AttnExportError(f"{self.onnx.name}: no size for the dynamic axes {missing} of input '{name}' "
                                      f"(report.json has none); rerun the export with its check")
            if dims and batch != shape[0]:
                if isinstance(dims[0], int):
                    raise AttnExportError(f"{self.onnx.name} has a static batch of {dims[0]} (input '{name}'); "
                                          f"--batch {batch} cannot run it: export with --dynamic-batch")
                shape[0] = batch
            shapes[name] = tuple(shape)
        return shapes


def load_target(outdir: str | os.PathLike, opts: BenchOptions) -> Target:
    outdir = Path(outdir)
    if not outdir.is_dir():
        raise AttnExportError(f"OUTDIR {outdir} is not a folder; give the -o folder of an export")
    onnx = outdir / opts.onnx
    if not onnx.is_file():
        raise AttnExportError(f"{onnx} does not exist; export first with `attn-export MODEL -o {outdir}`")
    report = {}
    if (outdir / "report.json").is_file():
        try:
            report = json.loads((outdir / "report.json").read_text())
        except (OSError, ValueError) as exc:
            raise AttnExportError(f"cannot read {outdir / 'report.json'} ({exc}); rerun the export") from exc
    try:
        infos = graph_inputs(onnx)
    except Exception as exc:  # a broken protobuf raises several types
        raise AttnExportError(f"cannot read {onnx} as an ONNX model ({type(exc).__name__})") from exc
    inputs = {i.name: (list(i.shape), i.dtype) for i in infos}
    recorded = {name: (entry.get("shapes") or [None])[0] for name, entry in (report.get("inputs") or {}).items()}
    export_shapes = {name: recorded.get(name) or [d if isinstance(d, int) else 0 for d in dims]
                     for name, (dims, _) in inputs.items()}
    return Target(outdir, onnx, inputs, export_shapes, opts.model or report.get("model"), report.get("command") or [],
                  onnx_precision(onnx))


def _feed(target: Target, batch: int, loaded, seed: int) -> dict[str, np.ndarray]:
    """Inputs at this batch: the model's own random inputs (its value ranges) where it is loaded, else uniform
    [-1, 1) floats and zero integers (valid token ids and indices), in the file's dtypes."""
    shapes = target.shapes(batch)
    if loaded is not None and [i.name for i in loaded.inputs] == list(target.inputs):
        feed = {i.name: t.numpy() for i, t in zip(loaded.inputs, loaded.random_inputs(seed, shapes))}
    else:
        rng = np.random.default_rng(seed)
        feed = {name: (rng.uniform(-1, 1, shapes[name]).astype(np.float32) if dtype.kind == "f" or
                       str(dtype) == "bfloat16" else np.zeros(shapes[name], dtype))
                for name, (_, dtype) in target.inputs.items()}
    return cast_feeds([feed], target.precision)[0]


def _load_model(target: Target, opts: BenchOptions):
    """The PyTorch model for the eager rows, loaded as the export loaded it (its --factory and --input-shape
    from report.json's command; never its --trust-pickle: that must be given again). (None, reason) if it cannot."""
    if not target.model:
        return None, "no model to run: report.json names none; pass --model"
    factory, shapes = opts.factory, []
    if not opts.model and target.command:
        args = list(target.command[1:])
        for i, arg in enumerate(args[:-1]):
            if arg == "--factory" and factory is None:
                factory = args[i + 1]
            elif arg == "--input-shape":
                shapes.append(args[i + 1])
    try:
        return load_model(target.model, factory, opts.trust_pickle, parse_input_shapes(shapes)), ""
    except AttnExportError as exc:
        return None, f"cannot load {target.model}: {exc}"


def _ort_sessions(onnx: Path) -> list[tuple[str, object, str]]:
    """(label, session or None, reason) for ONNX Runtime's CPU provider and, where installed, CUDA and TensorRT."""
    available = ort.get_available_providers()
    settings = ort.SessionOptions()
    # Idle ONNX Runtime threads spin for a while after each run by default: with the runtimes taking turns they
    # would take the CPU from the next one (PyTorch), so they sleep instead.
    settings.add_session_config_entry(SPINNING, "0")
    sessions = [("onnxruntime-cpu", ort.InferenceSession(str(onnx), settings, providers=["CPUExecutionProvider"]), "")]
    for label, provider, options in (("onnxruntime-cuda", "CUDAExecutionProvider", {}),
                                     ("onnxruntime-trt", "TensorrtExecutionProvider", _trt_provider_options())):
        if provider not in available:
            sessions.append((label, None, f"onnxruntime has no {provider} here (onnxruntime-gpu on a CUDA machine)"))
            continue
        try:
            session = ort.InferenceSession(str(onnx), settings, providers=[(provider, options), "CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - a provider that fails to initialize is reported, not fatal
            sessions.append((label, None, f"{provider} failed to start: {str(exc).splitlines()[0][:160]}"))
            continue
        sessions.append((label, session, ORT_TRT_NOTE if label == "onnxruntime-trt" else ""))
    return sessions


def _trt_provider_options() -> dict:
    """ONNX Runtime's TensorRT provider loads our plugins from this option (its nodes then become plugin layers)."""
    try:
        library = native.plugin_library()
    except AttnExportError:
        library = None
    return {"trt_extra_plugin_lib_paths": str(library)} if library else {}


def bench(outdir: str | os.PathLike, opts: BenchOptions, progress: Callable[[str], None] | None = None) -> BenchReport:
    """Time every requested runtime at every batch; write OUTDIR/bench.json atomically; return the report."""
    opts.prepare()
    target = load_target(outdir, opts)
    for batch in opts.batches:
        target.shapes(batch)  # a static batch or a missing size fails before anything runs
    say = progress or (lambda line: None)
    machine = _machine()  # before the runs: the load average they start under
    loaded, eager_reason = _load_model(target, opts) if "torch" in opts.runtimes else (None, "")
    runners: list[tuple[str, Callable | None, str]] = []  # (label, make(feed) -> call, reason)
    if "torch" in opts.runtimes:
        runners.append(("pytorch-cpu", _torch_call(loaded, "cpu") if loaded else None, eager_reason))
    if "ort" in opts.runtimes:
        for label, session, reason in _ort_sessions(target.onnx):
            runners.append((label, (lambda s: lambda feed: lambda: s.run(None, feed))(session) if session else None,
                            reason))
    if "trt" in opts.runtimes:
        engine = target.outdir / "model.engine"
        if not engine.is_file():
            runners.append(("tensorrt", None, f"no {engine.name} in {target.outdir} (export with --engine on a GPU "
                                              "machine)"))
        elif trt.tensorrt_module() is None or not trt.engine_available(trt.engine_needs_plugins(engine)):
            runners.append(("tensorrt", None, "TensorRT or the plugin library is not installed here"))
        else:
            runners.append(("tensorrt", _trt_call(engine), ""))
    if "torch" in opts.runtimes:
        cuda = torch.cuda.is_available()
        runners.append(("pytorch-cuda", _torch_call(loaded, "cuda") if loaded and cuda else None,
                        eager_reason or ("" if cuda else "no CUDA device")))
    rows = []
    for batch in opts.batches:
        feed = _feed(target, batch, loaded, opts.seed)
        calls = {label: make(feed) for label, make, _ in runners if make is not None}
        say(f"{', '.join(calls)} at batch {batch}")
        times = time_round_robin(calls, opts.iters, opts.warmup)
        eager = percentiles(times["pytorch-cpu"])["p50_ms"] if "pytorch-cpu" in times else None
        for label, make, reason in runners:
            if make is None:
                rows.append(Row(label, batch, "skipped", reason))
                continue
            stats = percentiles(times[label])
            rows.append(Row(label, batch, reason=reason, throughput=batch * 1e3 / stats["mean_ms"],
                            vs_eager=eager / stats["p50_ms"] if eager else None, **stats))
    report = BenchReport(str(target.outdir), target.onnx.name, target.model, target.precision, opts.iters,
                         opts.warmup, rows, machine)
    write_text_atomically(json.dumps(report.to_dict(), indent=2) + "\n", target.outdir / BENCH_NAME)
    return report


def _torch_call(loaded, device: str):
    module = loaded.module.to(device) if device != "cpu" else loaded.module

    def make(feed):
        args = [torch.from_numpy(np.asarray(feed[i.name], np.float32) if str(feed[i.name].dtype) in
                                 ("float16", "bfloat16") else feed[i.name]).to(device) for i in loaded.inputs]

        def call():
            with torch.inference_mode():
                module(*args)
            if device == "cuda":
                torch.cuda.synchronize()
        return call
    return make


def _trt_call(engine: Path):
    runner = trt_runner(engine)

    def make(feed):
        if not runner.is_active:
            runner.activate()  # once: deserializing the engine is not what is timed
        return lambda: runner.infer(feed)
    return make


def _machine() -> dict:
    return {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "load_average_1m": os.getloadavg()[0],  # other work on the machine skews every row (not their ratio)
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "onnxruntime": ort.__version__, "python": platform.python_version()}
