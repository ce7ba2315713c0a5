"""Parity: PyTorch (CPU) against ONNX Runtime (and TensorRT) through Polygraphy's Comparator, with a JSON report.

Float models are compared element by element (atol / rtol). Quantized (Q/DQ) models are compared with the
fp32 PyTorch model by cosine similarity and mean error, and are judged as TensorRT executes them: ONNX Runtime
runs with its Q/DQ fusions off (``EXACT_QDQ``), so Q/DQ is evaluated exactly (integer values, fp32
accumulation) on every CPU, instead of by integer kernels whose results depend on the CPU's instruction set.
"""

from __future__ import annotations

import platform
import sys
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import polygraphy
import torch
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata
from polygraphy.comparator import Comparator, SimpleCompareFunc
from polygraphy.logger import G_LOGGER

from attn_export.call_convert import quiet_third_party
from attn_export.defaults import __version__
from attn_export.errors import AttnExportError, wrap_failure
from attn_export.onnx_utils import graph_inputs, load_graph

# Re-exported: these lived here before the value types and the ONNX Runtime helpers got modules of their own, and
# attn_export.parity is still where callers (the pipeline, the CLI, calibration, bench scripts) import them from.
from attn_export.onnxruntime_cpu import EXACT_QDQ, cpu_isa, onnxruntime_session, onnxruntime_settings  # noqa: F401
from attn_export.onnxruntime_cpu import onnxruntime_runner as _onnxruntime_runner
from attn_export.parity_report import (
    REFERENCE_NAME,
    Comparison,
    OutputResult,
    ParityReport,
    ReferenceScale,
)
from attn_export.tables import render_table  # noqa: F401
from attn_export.tolerances import DEFAULT_ATOL, DEFAULT_RTOL, Tolerances  # noqa: F401
from attn_export.trt import trt_runner

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


def onnx_io(onnx_path: str | Path) -> tuple[dict[str, list], list[str]]:
    """The graph inputs of an ONNX file (initializers excluded), each with its dims (an int, or a
    symbolic name where the dim is dynamic), and its output names."""
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


def versions() -> dict:
    return {
        "attn_export": __version__,
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
    reference = _as_reference(model)
    inputs, output_names = onnx_io(onnx_path)
    input_names = list(inputs)
    tolerances.check_names(output_names)
    _check_feeds(feeds, input_names)
    runners, skipped = _runners(reference, onnx_path, feeds, input_names, output_names, engine_path,
                                skip_onnxruntime)
    results = _run(runners, feeds, "running the models on the check inputs", "check the input shapes and dtypes")
    comparisons = _compare(results, reference.name, feeds, output_names, tolerances)
    described = {n: {"shapes": [list(f[n].shape) for f in feeds], "dtype": str(feeds[0][n].dtype),
                     "source": input_source} for n in input_names}
    runtime = {} if skip_onnxruntime else {"onnxruntime-cpu": onnxruntime_settings(False)}
    return ParityReport(comparisons, described, versions(), list(command if command is not None else sys.argv),
                        str(onnx_path), reference.to_dict(), runtime,
                        vacuity_warnings(dict(results)[reference.name], feeds), precision, tolerances.describe(),
                        skipped)


def _runners(reference: Reference, onnx_path, feeds, input_names, output_names, engine_path, skip_onnxruntime):
    """The reference's runner, ONNX Runtime's (unless it cannot run the file here: then a skipped row) and the
    engine's; at least one candidate."""
    runners = [TorchCpuRunner(reference.model, feeds, input_names, output_names, reference.name)]
    skipped = []
    if skip_onnxruntime:
        skipped.append({"runner": "onnxruntime-cpu", "reason": skip_onnxruntime})
    else:
        runners.append(_onnxruntime_runner(onnx_path))
    if engine_path is not None:
        runners.append(trt_runner(engine_path))
    if len(runners) < 2:
        raise AttnExportError(f"nothing can run {onnx_path} here: {skip_onnxruntime}")
    return runners, skipped


def _compare(results, reference_name: str, feeds, output_names, tolerances: Tolerances) -> list[Comparison]:
    """Every candidate's outputs against the reference's, per input set, by each output's atol / rtol."""
    # Scale-relative tolerances (fp16 / bf16) need each output's mean |reference| over every input set.
    scales = {n: float(np.mean([np.abs(np.asarray(out[n], np.float64)).mean()
                                for out in dict(results)[reference_name] if n in out and np.size(out[n])] or [1.0]))
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
    return comparisons
