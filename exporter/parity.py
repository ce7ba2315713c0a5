"""Parity: PyTorch (CPU) against ONNX Runtime (and TensorRT) through Polygraphy's Comparator, with a JSON report.

Float models are compared element by element (atol / rtol). Quantized (Q/DQ) models are compared with the
fp32 PyTorch model by cosine similarity and mean error, and are judged as TensorRT executes them: ONNX Runtime
runs with its Q/DQ fusions off (``EXACT_QDQ``), so Q/DQ is evaluated exactly (integer values, fp32
accumulation) on every CPU, instead of by integer kernels whose results depend on the CPU's instruction set.
"""

from __future__ import annotations

import math
import platform
import sys
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata

from attn_export import defaults
from attn_export.errors import AttnExportError, wrap_failure
from attn_export.tolerances import Tolerances  # also attn_export.parity.Tolerances, as before

DEFAULT_ATOL = defaults.ATOL
DEFAULT_RTOL = defaults.RTOL
REFERENCE_NAME = "pytorch-cpu"


def _strict_json(fields: dict) -> dict:
    """NaN and Inf become null: report.json stays strict JSON."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in fields.items()}


def render_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, a rule under the header."""
    rows = [tuple(head), *map(tuple, rows)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Runners


@dataclass(frozen=True)
class Reference:
    """The PyTorch model every candidate is compared with, and what it is (table and report.json)."""

    model: torch.nn.Module
    name: str = REFERENCE_NAME
    description: str = "the PyTorch model, on the CPU"

    def to_dict(self) -> dict:
        return {"runner": self.name, "model": self.description}


class TorchCpuRunner(BaseRunner):
    """A Polygraphy runner for a PyTorch module on the CPU (Polygraphy's PytRunner calls .cuda() and
    expects a particular output format)."""

    def __init__(self, model, feeds: Sequence[Mapping[str, np.ndarray]], input_names: Sequence[str],
                 output_names: Sequence[str], name: str = REFERENCE_NAME):
        super().__init__(name=name)
        self.model, self.feeds = model, feeds
        self.input_names, self.output_names = list(input_names), list(output_names)

    def activate_impl(self):
        pass  # loaders hand over modules in eval mode (an ExportedProgram's module has no eval())

    def deactivate_impl(self):
        pass

    def get_input_metadata_impl(self):
        meta = TensorMetadata()
        for n in self.input_names:  # a dim that differs between input sets is dynamic (-1)
            shapes = {f[n].shape for f in self.feeds}
            dims = [d if len(set(axis)) == 1 else -1 for d, axis in zip(self.feeds[0][n].shape, zip(*shapes))]
            meta.add(n, dtype=self.feeds[0][n].dtype, shape=dims)
        return meta

    def infer_impl(self, feed_dict):
        # A low-precision export's feeds are fp16 / bf16: the fp32 reference runs on the same values, cast up.
        args = [torch.from_numpy(np.ascontiguousarray(
            feed_dict[n].astype(np.float32) if _low_precision(feed_dict[n]) else feed_dict[n]))
            for n in self.input_names]
        start = time.perf_counter()
        from attn_export.call_convert import quiet_third_party

        with torch.inference_mode(), quiet_third_party():  # the model as written may run NATTEN / flex_attention
            outputs = torch.utils._pytree.tree_leaves(self.model(*args))
        self.inference_time = time.perf_counter() - start
        if len(outputs) != len(self.output_names):
            raise AttnExportError(f"the PyTorch model returned {len(outputs)} tensors but the ONNX model has "
                                  f"{len(self.output_names)} outputs")
        # Polygraphy views arrays as bytes: a permuted output (a Conv2d then permute) must be made contiguous.
        return OrderedDict((n, np.ascontiguousarray(t.detach().cpu().numpy()))
                           for n, t in zip(self.output_names, outputs))


def _low_precision(array: np.ndarray) -> bool:
    return str(array.dtype) in ("float16", "bfloat16")


# ONNX Runtime session settings for Q/DQ models: no Q/DQ fusions into ONNX Runtime's own integer kernels
# (QLinear*, MatMulIntegerToFloat, MatMulNBits), whose x86 AVX2 paths saturate intermediate sums and whose
# INT4 MatMulNBits also quantizes activations. Q/DQ then runs as written: exactly what TensorRT computes.
EXACT_QDQ = {"session.disable_quant_qdq": "1"}


def onnxruntime_session(model: str | Path | bytes, exact_qdq: bool = False):
    """A CPU InferenceSession of an ONNX file (or its bytes); ``exact_qdq`` evaluates Q/DQ as written
    (see EXACT_QDQ)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    for key, value in (EXACT_QDQ if exact_qdq else {}).items():
        options.add_session_config_entry(key, value)
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), options,
                                providers=["CPUExecutionProvider"])


def onnxruntime_settings(exact_qdq: bool) -> dict:
    """What report.json says about an ONNX Runtime runner."""
    import onnxruntime as ort

    settings = {"onnxruntime": ort.__version__, "provider": "CPUExecutionProvider",
                "graph_optimization_level": "ORT_ENABLE_ALL (default)",
                "session_config": dict(EXACT_QDQ) if exact_qdq else {}}
    if exact_qdq:
        settings["qdq"] = "evaluated exactly (integer values, fp32 accumulation), as TensorRT executes it"
    else:
        settings["qdq"] = "fused into ONNX Runtime's CPU integer kernels (results depend on the CPU)"
        settings["cpu_isa"] = cpu_isa()
    return settings


def cpu_isa() -> str:
    """The x86 SIMD level that selects ONNX Runtime's integer kernels (avx512-vnni, avx-vnni, avx2, ...)."""
    try:
        flags = set(" ".join(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                             if line.startswith("flags")).split())
    except OSError:
        return platform.machine()
    for flag, name in (("amx_int8", "amx-int8"), ("avx512_vnni", "avx512-vnni"), ("avx_vnni", "avx-vnni"),
                       ("avx512bw", "avx512bw"), ("avx2", "avx2")):
        if flag in flags:
            return name
    return platform.machine()


def _onnxruntime_runner(onnx_path: str | Path, name: str = "onnxruntime-cpu", exact_qdq: bool = False):
    from polygraphy.backend.onnxrt import OnnxrtRunner

    return OnnxrtRunner(lambda: onnxruntime_session(onnx_path, exact_qdq), name=name)


def onnx_io(onnx_path: str | Path) -> tuple[dict[str, list], list[str]]:
    """The graph inputs of an ONNX file (initializers excluded), each with its dims (an int, or a
    symbolic name where the dim is dynamic), and its output names."""
    from attn_export.onnx_utils import graph_inputs, load_graph

    model = load_graph(onnx_path)
    return {i.name: list(i.shape) for i in graph_inputs(model)}, [o.name for o in model.graph.output]


def _check_feeds(feeds: Sequence[Mapping[str, np.ndarray]], input_names: Sequence[str]) -> None:
    if not feeds:
        raise AttnExportError("parity needs at least one input set")
    for i, feed in enumerate(feeds):
        if set(feed) != set(input_names):
            raise AttnExportError(f"input set {i} has inputs {sorted(feed)}; the ONNX model needs {list(input_names)}")


def contiguous(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays in C order: Polygraphy and ONNX Runtime read raw buffers (a user's transposed input would
    otherwise fail inside them)."""
    return {name: np.ascontiguousarray(array) for name, array in arrays.items()}


def _run(runners, feeds, what: str, hint: str):
    """Polygraphy's Comparator.run with its per-output log silenced (our table replaces it)."""
    from polygraphy.comparator import Comparator
    from polygraphy.logger import G_LOGGER

    severity = G_LOGGER.module_severity
    G_LOGGER.module_severity = G_LOGGER.CRITICAL
    try:
        return Comparator.run(runners, data_loader=[contiguous(f) for f in feeds])
    except Exception as exc:  # a model that rejects the inputs is bad input
        raise wrap_failure(exc, what, hint) from exc
    finally:
        G_LOGGER.module_severity = severity


def _seconds(*iterations) -> float:
    """Inference seconds of Polygraphy iteration results (their runners' own timing; 0 where none)."""
    return float(sum(getattr(i, "runtime", None) or 0.0 for i in iterations))


def _shape_label(feed: Mapping[str, np.ndarray]) -> str:
    return ",".join(f"{name}={'x'.join(map(str, array.shape)) or 'scalar'}" for name, array in feed.items())


# ---------------------------------------------------------------------------------------------
# What the reference outputs say about the check itself


@dataclass(frozen=True)
class ReferenceScale:
    """The reference output's size: an error is only meaningful next to it."""

    mean_abs: float
    std: float

    @classmethod
    def of(cls, array: np.ndarray | None) -> ReferenceScale:
        if array is None or not np.size(array):
            return cls(float("nan"), float("nan"))
        values = np.asarray(array, np.float64)
        return cls(float(np.abs(values).mean()), float(values.std()))


def vacuity_warnings(reference_outputs: Sequence[Mapping[str, np.ndarray]],
                     feeds: Sequence[Mapping[str, np.ndarray]]) -> list[str]:
    """Warnings for a check that proves little: a reference output that is constant on every input set
    (e.g. a branch zeroed by fresh weights), or two different input sets with identical outputs."""
    warnings = []
    names = list(reference_outputs[0]) if reference_outputs else []
    for name in names:
        arrays = [np.asarray(out[name]) for out in reference_outputs if name in out]
        values = [a for a in arrays if a.size]
        if values and all(a.min() == a.max() for a in values) and len({float(a.flat[0]) for a in values}) == 1:
            constant = float(values[0].flat[0]) + 0.0  # -0.0 reads as 0
            warnings.append(f"reference output '{name}' is the constant {constant:g} on every check input: the "
                            "comparison proves little (untrained or zero-initialized layers?)")
            continue
        for i in range(len(arrays)):
            for j in range(i + 1, len(arrays)):
                same_inputs = all(np.array_equal(feeds[i][n], feeds[j][n]) for n in feeds[i])
                if not same_inputs and arrays[i].shape == arrays[j].shape and np.array_equal(arrays[i], arrays[j]):
                    warnings.append(f"reference output '{name}' is identical for input sets {i} and {j} although "
                                    "their inputs differ: it does not depend on the inputs")
    return warnings


# ---------------------------------------------------------------------------------------------
# Float models: elementwise tolerances


@dataclass
class OutputResult:
    name: str
    max_abs_error: float
    max_rel_error: float
    mean_abs_error: float
    atol: float
    rtol: float
    passed: bool
    note: str = ""  # why an output failed without error statistics (missing, shape, non-finite)
    reference_mean_abs: float = float("nan")
    reference_std: float = float("nan")

    def to_dict(self) -> dict:
        # Strict JSON has no NaN or Infinity: a non-finite statistic becomes null (see "note").
        return _strict_json(asdict(self))


@dataclass
class Comparison:
    reference: str
    candidate: str
    iteration: int
    outputs: list[OutputResult]
    input_shapes: str = ""
    seconds: float = 0.0  # both runners' inference time on this input set (JUnit's time)

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)


def _overall_line(passed: bool, good: int, total: int, what: str) -> str:
    return f"overall: {'PASS' if passed else 'FAIL'} ({good} of {total} {what})"


@dataclass
class ParityReport:
    comparisons: list[Comparison]
    inputs: dict
    versions: dict
    command: list[str]
    onnx: str
    reference: dict = field(default_factory=dict)
    runtime: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    precision: str = "fp32"
    tolerances: str = ""  # the rule, e.g. "atol 0.01 x mean |reference| per output, rtol 0.01"
    skipped: list[dict] = field(default_factory=list)  # runners that could not run here: {"runner", "reason"}

    @property
    def passed(self) -> bool:
        return bool(self.comparisons) and all(c.passed for c in self.comparisons)

    def to_dict(self) -> dict:
        return {
            "status": "pass" if self.passed else "fail",
            "criterion": "per element |a-b| <= atol or |a-b| <= rtol*|reference|",
            "precision": self.precision,
            "tolerances": self.tolerances,
            "onnx": self.onnx,
            "reference": self.reference,
            "comparisons": [
                {"reference": c.reference, "candidate": c.candidate, "iteration": c.iteration,
                 "input_shapes": c.input_shapes, "passed": c.passed,
                 "outputs": {o.name: o.to_dict() for o in c.outputs}}
                for c in self.comparisons
            ],
            "skipped": self.skipped,
            "warnings": self.warnings,
            "inputs": self.inputs,
            "runtime": self.runtime,
            "versions": self.versions,
            "command": self.command,
        }

    def table(self) -> str:
        head = ("comparison", "iter", "input shape", "output", "max abs err", "max rel err", "mean |ref|", "ref std",
                "atol", "rtol", "result")
        rows = [(f"{c.reference} vs {c.candidate}", str(c.iteration), c.input_shapes, o.name,
                 f"{o.max_abs_error:.3e}", f"{o.max_rel_error:.3e}", f"{o.reference_mean_abs:.3e}",
                 f"{o.reference_std:.3e}", f"{o.atol:g}", f"{o.rtol:g}",
                 ("PASS" if o.passed else "FAIL") + (f" ({o.note})" if o.note else ""))
                for c in self.comparisons for o in c.outputs]
        outputs = [o for c in self.comparisons for o in c.outputs]
        lines = [f"reference: {self.reference.get('runner', REFERENCE_NAME)} = "
                 f"{self.reference.get('model', 'the PyTorch model')}"]
        if self.precision != "fp32":
            lines.append(f"precision: {self.precision} file against the fp32 reference; tolerances: {self.tolerances}")
        lines.append(render_table(head, rows))
        lines += [f"{s['runner']}: SKIPPED ({s['reason']})" for s in self.skipped]
        lines.append(_overall_line(self.passed, sum(o.passed for o in outputs), len(outputs),
                                   "outputs within tolerance"))
        return "\n".join(lines)


def versions() -> dict:
    import onnx
    import onnxruntime
    import polygraphy

    return {
        "attn_export": __import__("attn_export").__version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "polygraphy": polygraphy.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _output_result(name, stats, ref, cand, atol, rtol) -> OutputResult:
    """One output's verdict. Polygraphy gives statistics only when both outputs exist with one shape."""
    nan = float("nan")
    scale = ReferenceScale.of(ref)
    extra = {"reference_mean_abs": scale.mean_abs, "reference_std": scale.std}
    if ref is None or cand is None:
        return OutputResult(name, nan, nan, nan, atol, rtol, False,
                            "missing in " + ("reference" if ref is None else "candidate"), **extra)
    if tuple(ref.shape) != tuple(cand.shape):
        return OutputResult(name, nan, nan, nan, atol, rtol, False, f"shape {tuple(ref.shape)} vs {tuple(cand.shape)}",
                            **extra)
    result = OutputResult(name, float(stats.max_absdiff), float(stats.max_reldiff), float(stats.mean_absdiff),
                          atol, rtol, bool(stats), **extra)
    if not (np.isfinite(ref).all() and np.isfinite(cand).all()):
        result.passed, result.note = False, "non-finite values"
    return result


def _as_reference(model) -> Reference:
    return model if isinstance(model, Reference) else Reference(model)


def check_parity(
    model: torch.nn.Module | Reference,
    onnx_path: str | Path,
    feeds: Sequence[Mapping[str, np.ndarray]],
    tolerances: Tolerances = Tolerances(),
    command: Sequence[str] | None = None,
    input_source: str = "",
    engine_path: str | Path | None = None,
    precision: str = "fp32",
    skip_onnxruntime: str | None = None,
) -> ParityReport:
    """Run the reference (``model``, or a Reference naming which model it is), the ONNX file (and the
    TensorRT engine, if given) on each feed and compare every output with the reference's.

    ``precision``: the file's (feeds in it; the reference runs them cast up to fp32). ``skip_onnxruntime``:
    why ONNX Runtime cannot run the file here (its row is reported as skipped; an engine must then be given)."""
    from polygraphy.comparator import Comparator, SimpleCompareFunc
    from polygraphy.logger import G_LOGGER

    reference = _as_reference(model)
    inputs, output_names = onnx_io(onnx_path)
    input_names = list(inputs)
    tolerances.check_names(output_names)
    _check_feeds(feeds, input_names)
    runners = [TorchCpuRunner(reference.model, feeds, input_names, output_names, reference.name)]
    skipped = []
    if skip_onnxruntime:
        skipped.append({"runner": "onnxruntime-cpu", "reason": skip_onnxruntime})
    else:
        runners.append(_onnxruntime_runner(onnx_path))
    if engine_path is not None:
        from attn_export.trt import trt_runner

        runners.append(trt_runner(engine_path))
    if len(runners) < 2:
        raise AttnExportError(f"nothing can run {onnx_path} here: {skip_onnxruntime}")
    results = _run(runners, feeds, "running the models on the check inputs", "check the input shapes and dtypes")
    # Scale-relative tolerances (fp16 / bf16) need each output's mean |reference| over every input set.
    scales = {n: float(np.mean([np.abs(np.asarray(out[n], np.float64)).mean()
                                for out in dict(results)[reference.name] if n in out and np.size(out[n])] or [1.0]))
              for n in output_names}
    per_atol = {n: tolerances.for_output(n, scales[n])[0] for n in output_names}
    per_rtol = {n: tolerances.for_output(n, scales[n])[1] for n in output_names}
    severity = G_LOGGER.module_severity
    G_LOGGER.module_severity = G_LOGGER.CRITICAL  # our table replaces Polygraphy's per-output log
    try:
        (accuracy,) = Comparator.compare_accuracy(
            results, compare_func=SimpleCompareFunc(atol=per_atol, rtol=per_rtol, check_shapes=True))
    finally:
        G_LOGGER.module_severity = severity

    outputs_by_runner = dict(results)
    comparisons = []
    for (ref_name, cand_name), iterations in accuracy.items():
        for it, per_output in enumerate(iterations):
            ref, cand = outputs_by_runner[ref_name][it], outputs_by_runner[cand_name][it]
            outs = [_output_result(n, per_output.get(n), ref[n] if n in ref else None,
                                   cand[n] if n in cand else None, per_atol[n], per_rtol[n])
                    for n in output_names]
            comparisons.append(Comparison(ref_name, cand_name, it, outs, _shape_label(feeds[it]),
                                          _seconds(ref, cand)))
    described = {n: {"shapes": [list(f[n].shape) for f in feeds], "dtype": str(feeds[0][n].dtype),
                     "source": input_source} for n in input_names}
    runtime = {} if skip_onnxruntime else {"onnxruntime-cpu": onnxruntime_settings(False)}
    return ParityReport(comparisons, described, versions(), list(command if command is not None else sys.argv),
                        str(onnx_path), reference.to_dict(), runtime,
                        vacuity_warnings(outputs_by_runner[reference.name], feeds), precision, tolerances.describe(),
                        skipped)
