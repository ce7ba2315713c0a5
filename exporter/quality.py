"""Quality gates of quantized (Q/DQ) and PARO files: a quantization-aware criterion instead of elementwise
tolerances, judged as TensorRT executes the file (ONNX Runtime with exact Q/DQ, see onnxruntime_cpu.EXACT_QDQ).

Per output and input set: cosine with the fp32 reference and mean |error| / mean |reference|. Per sample (batch
row): the worst cosine, named, so one collapsed sample cannot hide in a mean; for outputs shaped [batch, classes]
the share of real samples whose top-1 class agrees with the float model's. And a null control: the same metrics
for a deliberately broken variant of the file (controls.py). When the control passes too, the check cannot tell
this file from a broken one, and the verdict is "inconclusive" (exit 1) unless the user accepts that explicitly.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from attn_export import defaults
from attn_export.check_inputs import CheckInputs, combine
from attn_export.onnxruntime_cpu import onnxruntime_runner, onnxruntime_settings
from attn_export.parity import (
    Reference,
    TorchCpuRunner,
    _check_feeds,
    _run,
    _seconds,
    _shape_label,
    onnx_io,
    vacuity_warnings,
)
from attn_export.parity_report import ReferenceScale, overall_line, strict_json
from attn_export.tables import render_table
from attn_export.trt import trt_runner

FUSED_RUNNER_SUFFIX = "-fused"
CONTROL_RUNNER = "null-control"
INCONCLUSIVE = ("the check cannot tell this model from a broken one: the null control ({control}) passes the same "
                "thresholds; pass real inputs (--calib-data or --inputs) or --allow-inconclusive to accept it")
INCONCLUSIVE_REAL = ("the check cannot tell this model from a broken one: the null control ({control}) passes the "
                     "same thresholds on these real inputs (the outputs barely depend on them, or the thresholds are "
                     "loose); tighten --quant-min-* or pass --allow-inconclusive to accept it")
CLASS_CONFIDENCE = 0.5  # least mean top-1 probability of the float model for [batch, N] outputs to count as classes
SHAPE_PROOF = "random input at an extra shape: proves the shape, judged finite only (the real samples judge quality)"


@dataclass(frozen=True)
class QuantThresholds:
    """Per output and input set: cosine with the fp32 reference at least ``min_cosine`` and mean absolute error at
    most ``max_mean_error`` times the mean |reference|; per sample: cosine at least ``min_sample_cosine``; for
    class scores on real samples: top-1 agreement with the float model at least ``min_top1_agreement``."""

    min_cosine: float
    max_mean_error: float
    min_sample_cosine: float = 0.0
    min_top1_agreement: float = 0.0

    @classmethod
    def for_mode(cls, mode: str, min_cosine: float | None = None, max_mean_error: float | None = None,
                 min_sample_cosine: float | None = None, min_top1_agreement: float | None = None) -> QuantThresholds:
        """The defaults of ``mode`` ("int8", "int4", "paro-int8", ...: the coarsest precision decides) with the
        values the user gave in place of theirs."""
        base = QUANT_THRESHOLDS["int4" if mode.endswith("int4") else "int8"]
        given = {"min_cosine": min_cosine, "max_mean_error": max_mean_error, "min_sample_cosine": min_sample_cosine,
                 "min_top1_agreement": min_top1_agreement}
        return cls(**{k: getattr(base, k) if v is None else v for k, v in given.items()})


QUANT_THRESHOLDS = {mode: QuantThresholds(*values) for mode, values in defaults.QUANT_THRESHOLDS.items()}


@dataclass
class QuantOutputResult:
    name: str
    iteration: int
    mean_abs_error: float
    max_abs_error: float
    relative_mean_error: float
    cosine: float
    passed: bool
    reference_mean_abs: float = float("nan")
    reference_std: float = float("nan")
    input_shapes: str = ""
    note: str = ""
    seconds: float = 0.0  # this output's share of both runners' inference time on its input set

    def to_dict(self) -> dict:
        return strict_json(asdict(self))


@dataclass
class SampleSummary:
    """One candidate's output over every sample of the check: the worst sample and the top-1 agreement."""

    candidate: str
    name: str
    samples: int
    worst_cosine: float
    worst_sample: str
    top1_agree: int | None = None  # real samples whose top-1 class matches the reference's (None: not class scores)
    top1_total: int = 0
    passed: bool = True
    seconds: float = 0.0  # the time spent on this candidate and output over every input set

    @property
    def top1_agreement(self) -> float | None:
        return None if self.top1_agree is None or not self.top1_total else self.top1_agree / self.top1_total

    def to_dict(self) -> dict:
        return strict_json({**asdict(self), "top1_agreement": self.top1_agreement})


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    if norms > 0:
        return float(a @ b / norms)
    return 1.0 if not a.any() and not b.any() else 0.0


def quant_metrics(name: str, iteration: int, ref: np.ndarray, cand: np.ndarray,
                  t: QuantThresholds) -> QuantOutputResult:
    nan = float("nan")
    scale = ReferenceScale.of(ref)
    if ref.shape != cand.shape:
        return QuantOutputResult(name, iteration, nan, nan, nan, nan, False, scale.mean_abs, scale.std)
    a, b = ref.astype(np.float64).ravel(), cand.astype(np.float64).ravel()
    diff = np.abs(a - b)
    mean_abs, max_abs = float(diff.mean()) if diff.size else 0.0, float(diff.max()) if diff.size else 0.0
    relative = mean_abs / scale.mean_abs if scale.mean_abs > 0 else (0.0 if mean_abs == 0 else float("inf"))
    cos = cosine(a, b)
    finite = bool(np.isfinite(b).all())
    passed = finite and cos >= t.min_cosine and relative <= t.max_mean_error
    return QuantOutputResult(name, iteration, mean_abs, max_abs, relative, cos, passed, scale.mean_abs, scale.std)


def sample_cosines(ref: np.ndarray, cand: np.ndarray, rows: int) -> list[float]:
    """Cosine per batch row where the output's first axis is the batch, else one for the whole output."""
    if ref.shape != cand.shape:
        return [float("nan")] * rows
    if ref.ndim and ref.shape[0] == rows and rows > 1:
        return [cosine(ref[i], cand[i]) if np.isfinite(cand[i]).all() else float("nan") for i in range(rows)]
    return [cosine(ref, cand) if np.isfinite(cand).all() else float("nan")]


def is_class_scores(array: np.ndarray) -> bool:
    """[batch, classes] floats: possibly a classifier's output, whose top-1 class can be compared."""
    return array.ndim == 2 and array.shape[1] >= 2 and array.dtype.kind == "f"


def confidence(scores: np.ndarray) -> float:
    """The mean top-1 probability of [batch, classes] scores (probabilities as given, else their softmax): a
    trained classifier on real data is confident; an embedding or a regression head is not."""
    values = np.asarray(scores, np.float64)
    if (values >= 0).all() and np.allclose(values.sum(axis=1), 1.0, atol=1e-3):
        return float(values.max(axis=1).mean())
    shifted = np.exp(values - values.max(axis=1, keepdims=True))
    return float((shifted.max(axis=1) / shifted.sum(axis=1)).mean())


def summarize(candidate: str, name: str, refs: Sequence[np.ndarray], cands: Sequence[np.ndarray],
              inputs: CheckInputs, t: QuantThresholds) -> SampleSummary:
    """The worst sample and, for a confident classifier's scores, the top-1 agreement on real samples, over every
    input set (random inputs at extra shapes only count when there are no real ones)."""
    worst, worst_name, agree, total, classes, real_refs = float("inf"), "", 0, 0, True, []
    judged = [o != "random" for o in inputs.origins] if inputs.real else [True] * len(inputs.origins)
    for ref, cand, names, origin, counted in zip(refs, cands, inputs.samples, inputs.origins, judged):
        if not counted:
            continue
        cosines = sample_cosines(ref, cand, len(names))
        labels = names if len(cosines) == len(names) else [f"{names[0]}..{names[-1]}" if len(names) > 1 else names[0]]
        for value, label in zip(cosines, labels):
            if np.isnan(worst):
                break
            if np.isnan(value) or value < worst:  # NaN (a non-finite output) is the worst there is
                worst, worst_name = value, label
        classes = classes and is_class_scores(ref) and ref.shape == cand.shape and ref.shape[0] == len(names)
        if classes and origin != "random":
            agree += int((ref.argmax(axis=1) == cand.argmax(axis=1)).sum())
            total += len(names)
            real_refs.append(ref)
    classes = classes and bool(real_refs) and confidence(np.concatenate(real_refs)) >= CLASS_CONFIDENCE
    summary = SampleSummary(candidate, name, sum(len(n) for n, c in zip(inputs.samples, judged) if c), worst,
                            worst_name, agree if classes else None, total if classes else 0)
    top1 = summary.top1_agreement
    summary.passed = worst >= t.min_sample_cosine and (top1 is None or top1 >= t.min_top1_agreement)
    return summary


@dataclass(frozen=True)
class Control:
    """A deliberately broken variant of the checked file (ONNX bytes) and what was broken in it."""

    description: str
    model: bytes


SHUFFLED = "each sample's output replaced by another sample's reference output (a model that ignores its input)"


def shuffled_outputs(ref_outputs: Sequence[Mapping[str, np.ndarray]],
                     inputs: CheckInputs) -> tuple[list[int], list[dict]]:
    """The shuffle control: each sample's reference outputs replaced by those of the next sample of the same
    output shapes (cyclically), so every sample gets a wrong but plausible answer. Returns the input sets it covers
    (each of whose samples has a partner) and their shuffled outputs."""
    samples = []  # (feed, row, {output: array of one sample})
    for i, (outputs, names) in enumerate(zip(ref_outputs, inputs.samples)):
        rows = len(names)
        if rows > 1 and not all(a.ndim and a.shape[0] == rows for a in outputs.values()):
            return [], []  # an output without a batch axis: samples cannot trade their outputs
        for r in range(rows):
            samples.append((i, r, {n: a[r:r + 1] if a.ndim and a.shape[0] == rows else a for n, a in outputs.items()}))
    groups: dict[tuple, list[int]] = {}
    for index, (_, _, outputs) in enumerate(samples):
        groups.setdefault(tuple((n, a.shape) for n, a in sorted(outputs.items())), []).append(index)
    partner = {}
    for members in groups.values():
        if len(members) > 1:
            partner.update({m: members[(j + 1) % len(members)] for j, m in enumerate(members)})
    covered = [i for i in range(len(ref_outputs))
               if all(k in partner for k, (feed, _, _) in enumerate(samples) if feed == i)]
    if any(all(np.array_equal(samples[k][2][n], samples[partner[k]][2][n]) for n in samples[k][2]) for k in partner):
        return [], []  # two samples with the same outputs: swapping them would break nothing
    shuffled = []
    for i in covered:
        rows = [samples[partner[k]][2] for k, (feed, _, _) in enumerate(samples) if feed == i]
        shuffled.append({n: np.concatenate([r[n] for r in rows]) if _batched(a, len(rows)) else rows[0][n]
                         for n, a in ref_outputs[i].items()})
    return covered, shuffled


def _batched(array: np.ndarray, rows: int) -> bool:
    return rows > 1 and array.ndim > 0 and array.shape[0] == rows


@dataclass
class QuantParityReport:
    mode: str
    reference: str
    candidates: list[str]
    thresholds: QuantThresholds
    outputs: list[tuple[str, QuantOutputResult]]  # (candidate runner, result)
    informational: list[str] = field(default_factory=list)  # candidates shown, never gating
    runtime: dict = field(default_factory=dict)
    reference_model: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    summaries: list[SampleSummary] = field(default_factory=list)  # per candidate and output, over every sample
    control: dict | None = None  # the null control: what was broken, its rows and summaries, whether it passed
    allow_inconclusive: bool = False
    inputs: dict = field(default_factory=dict)  # CheckInputs.to_dict(): where every check input came from

    def _gating(self) -> list[QuantOutputResult]:
        return [r for c, r in self.outputs if c not in self.informational]

    @property
    def inconclusive(self) -> bool:
        return bool(self.control and self.control["passed"])

    @property
    def measured_pass(self) -> bool:
        """The file meets every threshold (whatever the control says)."""
        gating = self._gating()
        summaries = [s for s in self.summaries if s.candidate not in self.informational]
        return bool(gating) and all(r.passed for r in gating) and all(s.passed for s in summaries)

    @property
    def passed(self) -> bool:
        return self.measured_pass and (not self.inconclusive or self.allow_inconclusive)

    @property
    def status(self) -> str:
        if not self.measured_pass:
            return "fail"
        return "inconclusive" if self.inconclusive and not self.allow_inconclusive else "pass"

    def to_dict(self) -> dict:
        t = self.thresholds
        return {
            "status": self.status, "mode": self.mode, "reference": self.reference,
            "reference_model": self.reference_model,
            "criterion": (f"per output and input set: cosine >= {t.min_cosine} and mean |a-b| <= {t.max_mean_error} "
                          f"* mean |reference|; per sample: cosine >= {t.min_sample_cosine}; class scores on real "
                          f"samples: top-1 agreement >= {t.min_top1_agreement}; and a null control that must fail"),
            "thresholds": asdict(t),
            "outputs": [{"candidate": c, "gating": c not in self.informational, **r.to_dict()}
                        for c, r in self.outputs],
            "samples": [s.to_dict() for s in self.summaries],
            "control": self.control,
            "allow_inconclusive": self.allow_inconclusive,
            "check_inputs": self.inputs,
            "informational": self.informational,
            "runtime": self.runtime,
            "warnings": self.warnings,
        }

    def table(self) -> str:
        head = ("comparison", "iter", "input shape", "output", "mean abs err", "max abs err", "mean |ref|",
                "mean err / mean |ref|", "cosine", "result")
        rows = [(f"{self.reference} vs {candidate}", str(r.iteration), r.input_shapes, r.name,
                 f"{r.mean_abs_error:.3e}", f"{r.max_abs_error:.3e}", f"{r.reference_mean_abs:.3e}",
                 f"{r.relative_mean_error:.4f}", f"{r.cosine:.5f}",
                 (("PASS" if r.passed else "FAIL") if candidate not in self.informational else "info")
                 + (" (shape proof)" if r.note else ""))
                for candidate, r in self.outputs]
        t = self.thresholds
        lines = [render_table(head, rows),
                 f"{self.mode} thresholds: cosine >= {t.min_cosine}, mean abs err <= {t.max_mean_error} x mean |ref|; "
                 f"per sample cosine >= {t.min_sample_cosine}; top-1 agreement >= {t.min_top1_agreement:.0%} "
                 "(class scores, real samples)"]
        if self.inputs:
            lines.append(f"check inputs: {self.inputs.get('description', '')}")
        lines.append(render_table(("candidate", "output", "samples", "worst sample cosine", "worst sample",
                                   "top-1 agreement", "result"),
                                  [_summary_row(s, s.candidate in self.informational) for s in self.summaries]))
        for name in self.informational:
            lines.append(f"{name}: informational, not a gate ({self.runtime.get(name, {}).get('qdq', '')}, "
                         f"CPU {self.runtime.get(name, {}).get('cpu_isa', '?')})")
        if self.control:
            lines.append(_control_line(self.control))
        gating = self._gating()
        overall = overall_line(self.passed, sum(r.passed for r in gating), len(gating), "outputs pass")
        if self.status == "inconclusive":
            overall = overall.replace("FAIL", "INCONCLUSIVE", 1) + ": it cannot tell this model from a broken one"
        lines.append(overall)
        return "\n".join(lines)


def _summary_row(s: SampleSummary, informational: bool) -> tuple:
    top1 = s.top1_agreement
    agreement = "-" if top1 is None else f"{s.top1_agree}/{s.top1_total} = {top1:.1%}"
    return (s.candidate, s.name, str(s.samples), f"{s.worst_cosine:.5f}", s.worst_sample, agreement,
            "info" if informational else ("PASS" if s.passed else "FAIL"))


def _control_line(control: dict) -> str:
    worst = min((s["worst_cosine"] for s in control["samples"] if s["worst_cosine"] is not None), default=None)
    measured = f"worst sample cosine {worst:.5f}" if worst is not None else "non-finite"
    if control["passed"]:
        return (f"null control ({control['description']}): PASSES too ({measured}): the check cannot tell this "
                "model from a broken one")
    return f"null control ({control['description']}): fails as it should ({measured}): the check can see a broken model"


def check_quantized(model, onnx_path: str | Path, inputs: CheckInputs | Sequence[Mapping[str, np.ndarray]],
                    mode: str, thresholds: QuantThresholds | None = None, engine_path: str | Path | None = None,
                    fused_row: bool = True, control: Control | None = None, shuffle_control: bool = False,
                    allow_inconclusive: bool = False) -> QuantParityReport:
    """Compare the quantized ONNX file (Q/DQ evaluated exactly; and its TensorRT engine, if given) with the
    fp32 reference on ``inputs`` (a CheckInputs, or plain feeds taken as random). ``fused_row`` adds ONNX
    Runtime's default CPU session (fused integer kernels) as an informational row that never decides the result.
    The null control, run through the same metrics (if it passes them, the verdict is inconclusive): with
    ``shuffle_control`` and two samples of one shape, every sample's reference output swapped for another's; else
    ``control``, a broken variant of the file."""
    if not isinstance(inputs, CheckInputs):
        inputs = combine(list(inputs), "given feeds", user=False)
    feeds = inputs.feeds
    reference = model if isinstance(model, Reference) else Reference(model)
    thresholds = thresholds or QUANT_THRESHOLDS["int4" if mode.endswith("int4") else "int8"]
    onnx_inputs, output_names = onnx_io(onnx_path)
    _check_feeds(feeds, list(onnx_inputs))
    exact = f"onnxruntime-{mode}"
    runners = [TorchCpuRunner(reference.model, feeds, list(onnx_inputs), output_names, reference.name),
               onnxruntime_runner(onnx_path, name=exact, exact_qdq=True)]
    runtime: dict[str, dict] = {exact: onnxruntime_settings(True)}
    informational = []
    if engine_path is not None:
        runners.append(trt_runner(engine_path, name=f"tensorrt-{mode}"))
    if fused_row:
        fused = exact + FUSED_RUNNER_SUFFIX
        runners.append(onnxruntime_runner(onnx_path, name=fused, exact_qdq=False))
        runtime[fused] = onnxruntime_settings(False)
        informational.append(fused)
    if control is not None:  # run even where the shuffle is planned: outputs may turn out unshufflable
        runners.append(onnxruntime_runner(control.model, name=CONTROL_RUNNER, exact_qdq=True))
    results = _run(runners, feeds, "running the quantized model on the check inputs", "check the input shapes")
    by_runner = {name: list(outs) for name, outs in results}
    refs = by_runner[reference.name]
    outputs, summaries = [], []
    for candidate in [r.name for r in runners[1:] if r.name != CONTROL_RUNNER]:
        rows = _rows(candidate, refs, by_runner[candidate], inputs, output_names, thresholds)
        outputs += rows
        summaries += [_timed(summarize(candidate, n, [o[n] for o in refs], [o[n] for o in by_runner[candidate]],
                                       inputs, thresholds), rows) for n in output_names]
    control_report = _null_control(refs, by_runner, inputs, output_names, thresholds, control, shuffle_control)
    warnings = vacuity_warnings(refs, feeds)
    random_warning = inputs.random_warning(mode)
    if random_warning:
        warnings.append(random_warning)
    report = QuantParityReport(mode, reference.name, [r.name for r in runners[1:] if r.name != CONTROL_RUNNER],
                               thresholds, outputs, informational, runtime, reference.to_dict(), warnings, summaries,
                               control_report, allow_inconclusive, inputs.to_dict())
    if report.inconclusive:
        report.warnings.append((INCONCLUSIVE_REAL if inputs.real else INCONCLUSIVE).format(
            control=control_report["description"])
                               + (" (accepted with --allow-inconclusive)" if allow_inconclusive else ""))
    return report


def _null_control(refs, by_runner, inputs: CheckInputs, output_names, thresholds, control: Control | None,
                  shuffle_control: bool) -> dict | None:
    """The null control's report: the reference outputs shuffled between samples where that was asked for and is
    possible, else the broken file's outputs (``control``), else None."""
    start = time.perf_counter()
    covered, shuffled = shuffled_outputs(refs, inputs) if shuffle_control else ([], [])
    if covered:
        report = _control_report(SHUFFLED, [refs[i] for i in covered], shuffled, inputs.subset(covered),
                                 output_names, thresholds)
        report["seconds"] = time.perf_counter() - start  # no run: the shuffle and its metrics
        return report
    if control is not None:
        return _control_report(control.description, refs, by_runner[CONTROL_RUNNER], inputs, output_names,
                               thresholds)
    return None


def _rows(candidate: str, refs, cands, inputs: CheckInputs, output_names,
          thresholds) -> list[tuple[str, QuantOutputResult]]:
    """Per input set and output; where real samples judge quality, random sets at extra shapes only need finite
    outputs (random inputs can sit outside the calibrated ranges: that is not the file's fault)."""
    rows = []
    for it, (ref, cand) in enumerate(zip(refs, cands)):
        for name in output_names:
            result = quant_metrics(name, it, ref[name], cand[name], thresholds)
            result.input_shapes = _shape_label(inputs.feeds[it])
            result.seconds = _seconds(ref, cand) / len(output_names)
            if inputs.real and inputs.origins[it] == "random":
                result.passed = ref[name].shape == cand[name].shape and bool(np.isfinite(cand[name]).all())
                result.note = SHAPE_PROOF
            rows.append((candidate, result))
    return rows


def _control_report(description: str, refs, cands, inputs: CheckInputs, output_names, thresholds) -> dict:
    """The null control's rows and per-sample summaries, and whether it passed every threshold (it must not)."""
    rows = _rows(CONTROL_RUNNER, refs, cands, inputs, output_names, thresholds)
    rows = [(c, r) for c, r in rows if not r.note]  # the control is judged on what judges quality
    summaries = [summarize(CONTROL_RUNNER, n, [o[n] for o in refs], [o[n] for o in cands], inputs, thresholds)
                 for n in output_names]
    passed = bool(rows) and all(r.passed for _, r in rows) and all(s.passed for s in summaries)
    return {"description": description, "passed": passed, "outputs": [r.to_dict() for _, r in rows],
            "samples": [s.to_dict() for s in summaries], "seconds": sum(r.seconds for _, r in rows)}


def _timed(summary: SampleSummary, rows) -> SampleSummary:
    summary.seconds = sum(r.seconds for c, r in rows if r.name == summary.name)
    return summary
