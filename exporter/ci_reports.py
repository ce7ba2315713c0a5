"""The parity check's reports for CI: JUnit XML (one testsuite per comparison, one testcase per output and input set)
and a Markdown summary (a GitHub job summary page), rendered from the parity, quantized and PARO reports."""

from __future__ import annotations

import datetime
import math
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from xml.etree import ElementTree as ET

# ---------------------------------------------------------------------------------------------
# JUnit XML: one testsuite per comparison (reference vs candidate), one testcase per output and input set.


@dataclass
class Case:
    suite: str  # "pytorch-cpu vs onnxruntime-cpu"
    name: str  # "output [images=1x3x64x64]"
    failure: str | None = None  # one-line message: the errors against their limits
    detail: str = ""  # the failure's body: every statistic of the row
    skipped: str | None = None  # why it was not judged (an informational row, a runner that cannot run here)
    seconds: float = 0.0  # inference time behind this case (both runners), JUnit's time attribute


def _num(value: float) -> str:
    return "nan" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.3e}"


def parity_cases(report, title: str = "parity") -> list[Case]:
    """The cases of a ParityReport (float files: elementwise atol / rtol)."""
    cases = []
    for c in report.comparisons:
        suite = f"{title}: {c.reference} vs {c.candidate}"
        for o in c.outputs:
            name = f"{o.name} [{c.input_shapes}]" if c.input_shapes else f"{o.name} [input set {c.iteration}]"
            detail = (f"max abs err {_num(o.max_abs_error)} (atol {o.atol:g}), max rel err {_num(o.max_rel_error)} "
                      f"(rtol {o.rtol:g}), mean abs err {_num(o.mean_abs_error)}, mean |ref| "
                      f"{_num(o.reference_mean_abs)}, ref std {_num(o.reference_std)}; precision {report.precision}, "
                      f"tolerances {report.tolerances or 'atol/rtol as given'}")
            failure = None
            if not o.passed:
                failure = (o.note + "; " if o.note else "") + (
                    f"max abs err {_num(o.max_abs_error)} > atol {o.atol:g} where max rel err "
                    f"{_num(o.max_rel_error)} > rtol {o.rtol:g}")
            cases.append(Case(suite, name, failure, detail, seconds=c.seconds / max(len(c.outputs), 1)))
    for skipped in report.skipped:
        cases.append(Case(f"{title}: {report.reference.get('runner', 'pytorch')} vs {skipped['runner']}",
                          "all outputs", skipped=skipped["reason"]))
    return cases


def quant_cases(report, title: str) -> list[Case]:
    """The cases of a QuantParityReport (Q/DQ and PARO files: cosine and mean error); informational rows skip."""
    t = report.thresholds
    cases = []
    for candidate, r in report.outputs:
        name = f"{r.name} [{r.input_shapes}]" if r.input_shapes else f"{r.name} [input set {r.iteration}]"
        detail = (f"cosine {r.cosine:.5f} (min {t.min_cosine}), mean err / mean |ref| {r.relative_mean_error:.4f} "
                  f"(max {t.max_mean_error}), mean abs err {_num(r.mean_abs_error)}, max abs err "
                  f"{_num(r.max_abs_error)}, mean |ref| {_num(r.reference_mean_abs)}")
        if candidate in report.informational:
            cases.append(Case(f"{title}: {report.reference} vs {candidate}", name, detail=detail,
                              skipped="informational row, not a gate"))
            continue
        failure = None
        if not r.passed:
            reasons = []
            if not r.cosine >= t.min_cosine:
                reasons.append(f"cosine {r.cosine:.5f} < {t.min_cosine}")
            if not r.relative_mean_error <= t.max_mean_error:
                reasons.append(f"mean err / mean |ref| {r.relative_mean_error:.4f} > {t.max_mean_error}")
            failure = "; ".join(reasons) or "non-finite values"
        cases.append(Case(f"{title}: {report.reference} vs {candidate}", name, failure, detail, seconds=r.seconds))
    return cases + _sample_cases(report, title)


def _sample_cases(report, title: str) -> list[Case]:
    """Per candidate and output over every sample (worst sample, top-1 agreement), and the null control."""
    t = report.thresholds
    cases = []
    for s in getattr(report, "summaries", []):
        top1 = s.top1_agreement
        detail = (f"worst sample cosine {s.worst_cosine:.5f} (min {t.min_sample_cosine}) at {s.worst_sample}"
                  + (f", top-1 agreement {s.top1_agree}/{s.top1_total} (min {t.min_top1_agreement})"
                     if top1 is not None else ""))
        suite = f"{title}: {report.reference} vs {s.candidate}"
        name = f"{s.name} [every sample]"
        if s.candidate in report.informational:
            cases.append(Case(suite, name, detail=detail, skipped="informational row, not a gate"))
        else:
            cases.append(Case(suite, name, None if s.passed else detail, detail, seconds=s.seconds))
    control = getattr(report, "control", None)
    if control:
        detail = f"null control: {control['description']}"
        failure = None if not control["passed"] or report.allow_inconclusive else (
            detail + " passes the same thresholds: the check cannot tell this model from a broken one")
        cases.append(Case(f"{title}: null control", "the control must fail", failure, detail,
                          seconds=control.get("seconds", 0.0)))
    return cases


def report_cases(report=None, quant_report=None, paro_report=None) -> list[Case]:
    cases = parity_cases(report) if report is not None else []
    if paro_report is not None:
        cases += quant_cases(paro_report, f"PARO {paro_report.mode}")
    if quant_report is not None:
        cases += quant_cases(quant_report, f"{quant_report.mode} parity")
    return cases


def _time(seconds: float) -> str:
    return f"{seconds:.4f}"


def junit_xml(cases: Sequence[Case], name: str = "attn-export parity", properties: dict | None = None) -> str:
    """JUnit XML in the common shape CI systems render: testsuites > testsuite > testcase > failure | skipped."""
    root = ET.Element("testsuites", name=name)
    stamp = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()
    suites: dict[str, list[Case]] = {}
    for case in cases:
        suites.setdefault(case.suite, []).append(case)
    totals = {"tests": 0, "failures": 0, "skipped": 0, "time": 0.0}
    for suite_name, members in suites.items():
        failures = sum(c.failure is not None for c in members)
        skipped = sum(c.skipped is not None for c in members)
        seconds = sum(c.seconds for c in members)
        suite = ET.SubElement(root, "testsuite", name=suite_name, tests=str(len(members)), failures=str(failures),
                              errors="0", skipped=str(skipped), time=_time(seconds), timestamp=stamp,
                              hostname=platform.node())
        if properties:
            props = ET.SubElement(suite, "properties")
            for key, value in properties.items():
                ET.SubElement(props, "property", name=str(key), value=str(value))
        for case in members:
            element = ET.SubElement(suite, "testcase", name=case.name, classname=suite_name, time=_time(case.seconds))
            if case.failure is not None:
                ET.SubElement(element, "failure", message=case.failure, type="ParityMismatch").text = case.detail
            elif case.skipped is not None:
                ET.SubElement(element, "skipped", message=case.skipped)
            elif case.detail:
                ET.SubElement(element, "system-out").text = case.detail
        totals["tests"] += len(members)
        totals["failures"] += failures
        totals["skipped"] += skipped
        totals["time"] += seconds
    root.set("tests", str(totals["tests"]))
    root.set("failures", str(totals["failures"]))
    root.set("errors", "0")
    root.set("skipped", str(totals["skipped"]))
    root.set("time", _time(totals["time"]))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


# ---------------------------------------------------------------------------------------------
# Markdown summary (a GitHub job summary page: $GITHUB_STEP_SUMMARY)


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(head: Sequence[str], rows: Sequence[Sequence]) -> list[str]:
    return ["| " + " | ".join(map(_cell, head)) + " |", "|" + "---|" * len(head),
            *("| " + " | ".join(map(_cell, row)) + " |" for row in rows)]


def summary_markdown(model: str, onnx: str, report=None, quant_report=None, paro_report=None,
                     warnings: Sequence[str] = (), versions: dict | None = None) -> str:
    """The check as a Markdown page: overall verdict, one table per report, tolerances, warnings, versions."""
    reports = [r for r in (report, paro_report, quant_report) if r is not None]
    passed = bool(reports) and all(r.passed for r in reports)
    lines = [f"## attn-export parity: {'PASS' if passed else 'FAIL'}", "",
             f"Model `{model}`, ONNX `{onnx}`."]
    if report is not None:
        lines += ["", f"### {report.reference.get('runner', 'pytorch')} vs runtimes ({report.precision})", "",
                  f"Reference: {report.reference.get('model', 'the PyTorch model')}. Criterion: per element "
                  f"|a-b| <= atol or |a-b| <= rtol x |reference|; {report.tolerances or 'atol / rtol as given'}.", ""]
        lines += _md_table(("comparison", "input shape", "output", "max abs err", "max rel err", "mean |ref|",
                            "atol", "rtol", "result"),
                           [(f"{c.reference} vs {c.candidate}", c.input_shapes, o.name, _num(o.max_abs_error),
                             _num(o.max_rel_error), _num(o.reference_mean_abs), f"{o.atol:.3g}", f"{o.rtol:g}",
                             ("PASS" if o.passed else "**FAIL**") + (f" ({o.note})" if o.note else ""))
                            for c in report.comparisons for o in c.outputs])
        lines += [f"- {s['runner']}: skipped ({s['reason']})" for s in report.skipped]
    for extra, title in ((paro_report, "PARO quality"), (quant_report, "quantized parity")):
        if extra is None:
            continue
        t = extra.thresholds
        lines += ["", f"### {title} ({extra.mode})", "",
                  f"Criterion: cosine >= {t.min_cosine} and mean |error| <= {t.max_mean_error} x mean |reference|.", ""]
        lines += _md_table(("comparison", "input shape", "output", "cosine", "mean err / mean |ref|", "result"),
                           [(f"{extra.reference} vs {c}", r.input_shapes, r.name, f"{r.cosine:.5f}",
                             f"{r.relative_mean_error:.4f}",
                             "info" if c in extra.informational else ("PASS" if r.passed else "**FAIL**"))
                            for c, r in extra.outputs])
        lines += ["", *(f"- {case.suite.split(': ', 1)[-1]}, {case.name}: {case.detail}"
                        + (" **FAIL**" if case.failure else "") for case in _sample_cases(extra, title))]
    if warnings:
        lines += ["", "### Warnings", "", *(f"- {w}" for w in warnings)]
    if versions:
        lines += ["", "<sub>" + ", ".join(f"{k} {v}" for k, v in versions.items()) + "</sub>"]
    return "\n".join(lines) + "\n"
