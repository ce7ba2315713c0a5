"""The parity check as a CI job: JUnit XML and a Markdown summary of the parity reports, and a GitHub Actions
workflow that runs `attn-export check` (CPU) and, optionally, the TensorRT engine check on a self-hosted GPU runner.

No YAML library is needed: the workflow is written as text and every `attn-export` command in it is parsed by the
CLI itself before it is written (``validate_invocation``).
"""

from __future__ import annotations

import datetime
import math
import os
import platform
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree as ET

from attn_export import defaults
from attn_export.errors import AttnExportError

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


# ---------------------------------------------------------------------------------------------
# The CLI's own parser, for commands written into workflows (and for tests)


def _unparsed(ctx) -> list[str]:
    """A group context's subcommand and its arguments (click 8.2 keeps the first in a private field and
    deprecates the public one; 8.1 has only the public one)."""
    fields = vars(ctx)
    protected = fields["_protected_args"] if "_protected_args" in fields else fields.get("protected_args", [])
    return [*protected, *ctx.args]


def validate_invocation(argv: Sequence[str]) -> list[str]:
    """Parse ``argv`` (``attn-export ...``) with the CLI's own parser, down to the leaf command, without running it;
    returns the leaf command's path (e.g. ["check"]). A parse error raises AttnExportError naming it."""
    import click

    from attn_export.cli import main

    args = list(argv)
    if args and args[0] == "attn-export":
        args = args[1:]
    path = []
    try:
        ctx = main.make_context("attn-export", list(args), resilient_parsing=False)
        command, rest = main, _unparsed(ctx)
        while isinstance(command, click.Group) and rest:
            name, command, rest = command.resolve_command(ctx, rest)
            path.append(name)
            ctx = command.make_context(name, list(rest), parent=ctx, resilient_parsing=False)
            rest = _unparsed(ctx) if isinstance(command, click.Group) else []
    except click.exceptions.Exit:
        pass  # --help / --version parse fine
    except click.ClickException as exc:
        raise AttnExportError(f"`{shlex.join(['attn-export', *args])}` is not a valid invocation: "
                              f"{exc.format_message()}") from exc
    return path


# ---------------------------------------------------------------------------------------------
# GitHub Actions workflow


# attn-export is on no package index: a workflow that installed `attn-export==VERSION` would fail at its first step.
NO_INSTALL = ("ci-template needs --install: attn-export is on no package index, so say where the jobs install it "
              "from, e.g. a wheel committed to your repository (`pip wheel --no-deps -w wheels PATH/TO/attn-export`, "
              f"then --install ./wheels/attn_export-{defaults.__version__}-py3-none-any.whl) or a git URL "
              "(--install 'attn-export @ git+https://HOST/attn-export.git'), and add --install -e . for your own "
              "package")


@dataclass
class WorkflowOptions:
    model: str = "zoo:nat-tiny"
    onnx: str = "model.onnx"  # the committed ONNX file the CPU job checks
    model_args: Sequence[str] = ()  # --factory / --input-shape / ... as the check takes them
    install: Sequence[str] = ()  # pip requirements: where attn-export comes from, your package (required)
    python: str = defaults.CI_PYTHON
    gpu: bool = False
    runner_labels: Sequence[str] = ("self-hosted", "linux", "gpu")
    report_dir: str = "parity"


def _run_block(lines: Sequence[str], indent: int = 10) -> str:
    pad = " " * indent
    return "|\n" + "\n".join(pad + line for line in lines)


def _yaml_str(value: str) -> str:
    import json

    return json.dumps(value)  # a JSON string is a valid YAML scalar


def workflow_commands(opts: WorkflowOptions) -> dict[str, list[list[str]]]:
    """The `attn-export` commands of each job, as argv lists (what ci-template validates and writes)."""
    out = opts.report_dir
    check = ["attn-export", "check", opts.model, opts.onnx, *opts.model_args, "--report", f"{out}/report.json",
             "--junit", f"{out}/junit.xml", "--summary", f"{out}/summary.md"]
    commands = {"cpu": [check]}
    if opts.gpu:
        commands["gpu"] = [
            ["attn-export", "plugins", "build", "--arch", "native"],
            ["attn-export", opts.model, *opts.model_args, "-o", "engine-out", "--engine", "--junit",
             f"{out}/junit-trt.xml", "--summary", f"{out}/summary-trt.md"],
        ]
    return commands


def workflow_yaml(opts: WorkflowOptions) -> str:
    """A GitHub Actions workflow: the CPU parity job (and with ``gpu`` the TensorRT job on a self-hosted runner).
    Every attn-export command is validated with the CLI's parser first."""
    if not opts.install:
        raise AttnExportError(NO_INSTALL)
    commands = workflow_commands(opts)
    for argvs in commands.values():
        for argv in argvs:
            validate_invocation(argv)
    out = opts.report_dir
    torch_pin = defaults.CI_TORCH
    cpu_run = [shlex.join(a) for a in commands["cpu"]]  # attn-export creates the report folder
    text = f"""# Parity check of the exported ONNX against the PyTorch model (written by `attn-export ci-template`).
# The CPU job re-runs the check on every push and pull request: it fails (exit 1) when the committed ONNX
# no longer matches the model, and uploads report.json and a JUnit file; the summary shows on the run's page.
name: attn-export parity

on:
  push:
  pull_request:
  workflow_dispatch:

jobs:
  parity-cpu:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - uses: actions/setup-python@v5
        with:
          python-version: {_yaml_str(opts.python)}
          cache: pip
      - name: Install (CPU PyTorch first, so that pip does not pull the CUDA build)
        id: install
        run: {_run_block([f'pip install {shlex.quote(torch_pin)} --index-url https://download.pytorch.org/whl/cpu',
                          shlex.join(['pip', 'install', *opts.install])])}
      - name: Check the committed ONNX against the model
        id: check
        run: {_run_block(cpu_run)}
      - name: Job summary
        if: always()
        run: {_run_block([f'if [ -f {shlex.quote(out + "/summary.md")} ]; then cat {shlex.quote(out + "/summary.md")} '
                          '>> "$GITHUB_STEP_SUMMARY"; fi'])}
      - name: Upload the report and the JUnit file
        if: always()
        uses: actions/upload-artifact@v4
        with:
          name: parity-cpu
          path: {_yaml_str(out + "/")}
          if-no-files-found: warn
"""
    if opts.gpu:
        gpu_run = [shlex.join(a) for a in commands["gpu"]]
        labels = ", ".join(_yaml_str(label) for label in opts.runner_labels)
        text += f"""
  # Needs a self-hosted runner with an NVIDIA GPU, its driver, the CUDA toolkit (nvcc) and CMake, and TensorRT
  # (pip install tensorrt, or TENSORRT_ROOT pointing at an install with its headers).
  parity-tensorrt:
    needs: parity-cpu
    runs-on: [{labels}]
    steps:
      - uses: actions/checkout@v4
      - name: Install (CUDA PyTorch, TensorRT)
        id: install
        run: {_run_block([f'python -m pip install {shlex.quote(torch_pin)}',
                          shlex.join(['python', '-m', 'pip', 'install', *opts.install, 'tensorrt'])])}
      - name: Build the plugin library, the engine, and check PyTorch vs ONNX Runtime vs TensorRT
        id: check
        env:
          ATTN_EXPORT_BUILD_DIR: ${{{{ github.workspace }}}}/build/attn-export-plugins
        run: {_run_block(gpu_run)}
      - name: Job summary
        if: always()
        run: {_run_block([f'if [ -f {shlex.quote(out + "/summary-trt.md")} ]; then cat '
                          f'{shlex.quote(out + "/summary-trt.md")} >> "$GITHUB_STEP_SUMMARY"; fi'])}
      - name: Upload the report, engine.json and the JUnit file
        if: always()
        uses: actions/upload-artifact@v4
        with:
          name: parity-tensorrt
          path: |
            {out}/
            engine-out/report.json
            engine-out/engine.json
          if-no-files-found: warn
"""
    return text


def write_workflow(path: str | os.PathLike, opts: WorkflowOptions, force: bool = False) -> Path:
    """Write the workflow to ``path`` atomically; refuses a folder, an existing file without ``force``, and input
    shapes the check could not read (the CLI parser takes any string for them)."""
    from attn_export.loader import parse_input_shapes
    from attn_export.outdir import write_text_atomically

    path = Path(path)
    if path.is_dir():
        raise AttnExportError(f"-o {path} is a folder; pass the workflow file's path")
    if path.exists() and not force:
        raise AttnExportError(f"{path} exists; pass --force to replace it")
    args = list(opts.model_args)
    parse_input_shapes([args[i + 1] for i, a in enumerate(args[:-1]) if a == "--input-shape"])
    return write_text_atomically(workflow_yaml(opts), path)
