"""Parity: PyTorch (CPU) against ONNX Runtime through Polygraphy's Comparator, with a JSON report."""

from __future__ import annotations

import math
import platform
import sys
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from attn_export.errors import AttnExportError, wrap_failure

DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-4


def _strict_json(fields: dict) -> dict:
    """NaN and Inf become null: report.json stays strict JSON."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in fields.items()}


@dataclass(frozen=True)
class Tolerances:
    """Default atol/rtol plus per-output overrides. An element passes if it meets atol OR rtol
    (Polygraphy's elementwise rule); an output passes if every element does."""

    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL
    per_output_atol: Mapping[str, float] = field(default_factory=dict)
    per_output_rtol: Mapping[str, float] = field(default_factory=dict)

    def for_output(self, name: str) -> tuple[float, float]:
        return self.per_output_atol.get(name, self.atol), self.per_output_rtol.get(name, self.rtol)

    def check_names(self, output_names: Sequence[str]) -> None:
        unknown = (set(self.per_output_atol) | set(self.per_output_rtol)) - set(output_names)
        if unknown:
            raise AttnExportError(
                f"tolerance given for unknown output(s) {sorted(unknown)}; outputs are: {', '.join(output_names)}")


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

    def to_dict(self) -> dict:
        # Strict JSON has no NaN or Infinity: a non-finite statistic becomes null (see "note").
        return _strict_json(asdict(self))


@dataclass
class Comparison:
    reference: str
    candidate: str
    iteration: int
    outputs: list[OutputResult]

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)


@dataclass
class ParityReport:
    comparisons: list[Comparison]
    inputs: dict
    versions: dict
    command: list[str]
    onnx: str

    @property
    def passed(self) -> bool:
        return bool(self.comparisons) and all(c.passed for c in self.comparisons)

    def to_dict(self) -> dict:
        return {
            "status": "pass" if self.passed else "fail",
            "criterion": "per element |a-b| <= atol or |a-b| <= rtol*|reference|",
            "onnx": self.onnx,
            "comparisons": [
                {"reference": c.reference, "candidate": c.candidate, "iteration": c.iteration,
                 "passed": c.passed, "outputs": {o.name: o.to_dict() for o in c.outputs}}
                for c in self.comparisons
            ],
            "inputs": self.inputs,
            "versions": self.versions,
            "command": self.command,
        }

    def table(self) -> str:
        head = ("comparison", "iter", "output", "max abs err", "max rel err", "atol", "rtol", "result")
        rows = [head]
        for c in self.comparisons:
            for o in c.outputs:
                rows.append((f"{c.reference} vs {c.candidate}", str(c.iteration), o.name, f"{o.max_abs_error:.3e}",
                             f"{o.max_rel_error:.3e}", f"{o.atol:g}", f"{o.rtol:g}",
                             ("PASS" if o.passed else "FAIL") + (f" ({o.note})" if o.note else "")))
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
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


def _torch_cpu_runner(model, feeds: Sequence[Mapping[str, np.ndarray]], input_names: Sequence[str],
                      output_names: Sequence[str], name: str = "pytorch-cpu"):
    """A Polygraphy runner for a PyTorch module on the CPU (Polygraphy's PytRunner calls .cuda()
    and expects a particular output format)."""
    from polygraphy.backend.base import BaseRunner
    from polygraphy.common import TensorMetadata

    class TorchCpuRunner(BaseRunner):
        def __init__(self):
            super().__init__(name=name)

        def activate_impl(self):
            pass  # loaders hand over modules in eval mode (an ExportedProgram's module has no eval())

        def deactivate_impl(self):
            pass

        def get_input_metadata_impl(self):
            meta = TensorMetadata()
            for n in input_names:  # a dim that differs between input sets is dynamic (-1)
                shapes = {f[n].shape for f in feeds}
                dims = [d if len(set(axis)) == 1 else -1 for d, axis in zip(feeds[0][n].shape, zip(*shapes))]
                meta.add(n, dtype=feeds[0][n].dtype, shape=dims)
            return meta

        def infer_impl(self, feed_dict):
            args = [torch.from_numpy(np.ascontiguousarray(feed_dict[n])) for n in input_names]
            start = time.perf_counter()
            with torch.inference_mode():
                outputs = torch.utils._pytree.tree_leaves(model(*args))
            self.inference_time = time.perf_counter() - start
            if len(outputs) != len(output_names):
                raise AttnExportError(
                    f"the PyTorch model returned {len(outputs)} tensors but the ONNX model has {len(output_names)} outputs")
            return OrderedDict((n, t.detach().cpu().numpy()) for n, t in zip(output_names, outputs))

    return TorchCpuRunner()


def _onnxruntime_runner(onnx_path: str, name: str = "onnxruntime-cpu"):
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    return OnnxrtRunner(SessionFromOnnx(str(onnx_path), providers=["cpu"]), name=name)


def onnx_io(onnx_path: str | Path) -> tuple[dict[str, list], list[str]]:
    """The graph inputs of an ONNX file (initializers excluded), each with its dims (an int, or a
    symbolic name where the dim is dynamic), and its output names."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    inputs = {i.name: [d.dim_value if d.HasField("dim_value") else d.dim_param for d in i.type.tensor_type.shape.dim]
              for i in graph.input if i.name not in initializers}
    return inputs, [o.name for o in graph.output]


def _output_result(name, stats, ref, cand, atol, rtol) -> OutputResult:
    """One output's verdict. Polygraphy gives statistics only when both outputs exist with one shape."""
    nan = float("nan")
    if ref is None or cand is None:
        return OutputResult(name, nan, nan, nan, atol, rtol, False, "missing in " + ("reference" if ref is None else "candidate"))
    if tuple(ref.shape) != tuple(cand.shape):
        return OutputResult(name, nan, nan, nan, atol, rtol, False, f"shape {tuple(ref.shape)} vs {tuple(cand.shape)}")
    result = OutputResult(name, float(stats.max_absdiff), float(stats.max_reldiff), float(stats.mean_absdiff),
                          atol, rtol, bool(stats))
    if not (np.isfinite(ref).all() and np.isfinite(cand).all()):
        result.passed, result.note = False, "non-finite values"
    return result


def check_parity(
    model: torch.nn.Module,
    onnx_path: str | Path,
    feeds: Sequence[Mapping[str, np.ndarray]],
    tolerances: Tolerances = Tolerances(),
    command: Sequence[str] | None = None,
    input_source: str = "",
    engine_path: str | Path | None = None,
) -> ParityReport:
    """Run ``model``, the ONNX file (and the TensorRT engine, if given) on each feed and compare every
    output with PyTorch's, the reference."""
    from polygraphy.comparator import Comparator, SimpleCompareFunc
    from polygraphy.logger import G_LOGGER

    inputs, output_names = onnx_io(onnx_path)
    input_names = list(inputs)
    tolerances.check_names(output_names)
    if not feeds:
        raise AttnExportError("parity needs at least one input set")
    for i, feed in enumerate(feeds):
        if set(feed) != set(input_names):
            raise AttnExportError(f"input set {i} has inputs {sorted(feed)}; the ONNX model needs {input_names}")
    runners = [_torch_cpu_runner(model, feeds, input_names, output_names), _onnxruntime_runner(str(onnx_path))]
    if engine_path is not None:
        from attn_export.trt import trt_runner

        runners.append(trt_runner(engine_path))
    per_atol = {n: tolerances.for_output(n)[0] for n in output_names}
    per_rtol = {n: tolerances.for_output(n)[1] for n in output_names}
    severity = G_LOGGER.module_severity
    G_LOGGER.module_severity = G_LOGGER.CRITICAL  # our table replaces Polygraphy's per-output log
    try:
        try:
            results = Comparator.run(runners, data_loader=[dict(f) for f in feeds])
        except Exception as exc:  # noqa: BLE001 - a model that rejects the inputs is bad input
            raise wrap_failure(exc, "running the models on the check inputs", "check the input shapes and dtypes") from exc
        accuracy = Comparator.compare_accuracy(
            results, compare_func=SimpleCompareFunc(atol=per_atol, rtol=per_rtol, check_shapes=True))
    finally:
        G_LOGGER.module_severity = severity

    (accuracy,) = accuracy  # one AccuracyResult per compare function
    outputs_by_runner = dict(results)
    comparisons = []
    for (ref_name, cand_name), iterations in accuracy.items():
        for it, per_output in enumerate(iterations):
            ref, cand = outputs_by_runner[ref_name][it], outputs_by_runner[cand_name][it]
            outs = [_output_result(n, per_output.get(n), ref[n] if n in ref else None,
                                   cand[n] if n in cand else None, *tolerances.for_output(n))
                    for n in output_names]
            comparisons.append(Comparison(ref_name, cand_name, it, outs))
    inputs = {n: {"shapes": [list(f[n].shape) for f in feeds], "dtype": str(feeds[0][n].dtype), "source": input_source}
              for n in input_names}
    return ParityReport(comparisons, inputs, versions(), list(command if command is not None else sys.argv),
                        str(onnx_path))


# ---------------------------------------------------------------------------------------------
# Quantized models: a quantization-aware criterion instead of elementwise tolerances.


@dataclass(frozen=True)
class QuantThresholds:
    """Per output: cosine similarity with the fp32 reference at least ``min_cosine``, and mean
    absolute error at most ``max_mean_error`` times the mean |reference| (max abs error is reported)."""

    min_cosine: float
    max_mean_error: float


QUANT_THRESHOLDS = {"int8": QuantThresholds(0.99, 0.10), "int4": QuantThresholds(0.98, 0.25)}


@dataclass
class QuantOutputResult:
    name: str
    iteration: int
    mean_abs_error: float
    max_abs_error: float
    relative_mean_error: float
    cosine: float
    passed: bool

    def to_dict(self) -> dict:
        return _strict_json(asdict(self))


@dataclass
class QuantParityReport:
    mode: str
    reference: str
    candidates: list[str]
    thresholds: QuantThresholds
    outputs: list[tuple[str, QuantOutputResult]]  # (candidate runner, result)

    @property
    def passed(self) -> bool:
        return bool(self.outputs) and all(r.passed for _, r in self.outputs)

    def to_dict(self) -> dict:
        return {
            "status": "pass" if self.passed else "fail", "mode": self.mode, "reference": self.reference,
            "criterion": (f"per output: cosine >= {self.thresholds.min_cosine} and mean |a-b| <= "
                          f"{self.thresholds.max_mean_error} * mean |reference|"),
            "thresholds": asdict(self.thresholds),
            "outputs": [{"candidate": c, **r.to_dict()} for c, r in self.outputs],
        }

    def table(self) -> str:
        head = ("comparison", "iter", "output", "mean abs err", "max abs err", "mean err / mean |ref|", "cosine",
                "result")
        rows = [head]
        for candidate, r in self.outputs:
            rows.append((f"{self.reference} vs {candidate}", str(r.iteration), r.name, f"{r.mean_abs_error:.3e}",
                         f"{r.max_abs_error:.3e}", f"{r.relative_mean_error:.4f}", f"{r.cosine:.5f}",
                         "PASS" if r.passed else "FAIL"))
        widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        t = self.thresholds
        lines.append(f"{self.mode} thresholds: cosine >= {t.min_cosine}, mean abs err <= {t.max_mean_error} x mean |ref|")
        return "\n".join(lines)




def quant_metrics(name: str, iteration: int, ref: np.ndarray, cand: np.ndarray, t: QuantThresholds) -> QuantOutputResult:
    nan = float("nan")
    if ref.shape != cand.shape:
        return QuantOutputResult(name, iteration, nan, nan, nan, nan, False)
    a, b = ref.astype(np.float64).ravel(), cand.astype(np.float64).ravel()
    diff = np.abs(a - b)
    mean_abs, max_abs = float(diff.mean()) if diff.size else 0.0, float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(a).mean()) if a.size else 0.0
    relative = mean_abs / scale if scale > 0 else (0.0 if mean_abs == 0 else float("inf"))
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    cosine = float(a @ b / norms) if norms > 0 else (1.0 if not a.any() and not b.any() else 0.0)
    finite = bool(np.isfinite(b).all())
    passed = finite and cosine >= t.min_cosine and relative <= t.max_mean_error
    return QuantOutputResult(name, iteration, mean_abs, max_abs, relative, cosine, passed)


def check_quantized(model: torch.nn.Module, onnx_path: str | Path, feeds: Sequence[Mapping[str, np.ndarray]],
                    mode: str, thresholds: QuantThresholds | None = None,
                    engine_path: str | Path | None = None) -> QuantParityReport:
    """Compare the quantized ONNX file (and its TensorRT engine, if given) with the fp32 PyTorch model."""
    from polygraphy.comparator import Comparator
    from polygraphy.logger import G_LOGGER

    thresholds = thresholds or QUANT_THRESHOLDS[mode]
    inputs, output_names = onnx_io(onnx_path)
    runners = [_torch_cpu_runner(model, feeds, list(inputs), output_names),
               _onnxruntime_runner(str(onnx_path), name=f"onnxruntime-{mode}")]
    if engine_path is not None:
        from attn_export.trt import trt_runner

        runners.append(trt_runner(engine_path, name=f"tensorrt-{mode}"))
    severity = G_LOGGER.module_severity
    G_LOGGER.module_severity = G_LOGGER.CRITICAL
    try:
        results = Comparator.run(runners, data_loader=[dict(f) for f in feeds])
    except Exception as exc:  # noqa: BLE001
        raise wrap_failure(exc, "running the quantized model on the check inputs", "check the input shapes") from exc
    finally:
        G_LOGGER.module_severity = severity
    by_runner = dict(results)
    reference = runners[0].name
    outputs = []
    for candidate in [r.name for r in runners[1:]]:
        for it, (ref, cand) in enumerate(zip(by_runner[reference], by_runner[candidate])):
            for name in output_names:
                outputs.append((candidate, quant_metrics(name, it, ref[name], cand[name], thresholds)))
    return QuantParityReport(mode, reference, [r.name for r in runners[1:]], thresholds, outputs)
