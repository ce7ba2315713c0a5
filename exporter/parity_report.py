"""The float check's report: per output and input set, the errors against the tolerances (the table and
report.json). Value types only: attn_export.parity produces them, attn_export.ci_reports renders them for CI."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from attn_export.tables import render_table

REFERENCE_NAME = "pytorch-cpu"


def strict_json(fields: dict) -> dict:
    """NaN and Inf become null: report.json stays strict JSON."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in fields.items()}


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
        return strict_json(asdict(self))


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


def overall_line(passed: bool, good: int, total: int, what: str) -> str:
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
        lines.append(overall_line(self.passed, sum(o.passed for o in outputs), len(outputs),
                                   "outputs within tolerance"))
        return "\n".join(lines)
