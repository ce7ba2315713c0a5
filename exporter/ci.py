"""The parity check as a CI job: a GitHub Actions workflow that runs `attn-export check` (CPU) and, optionally, the
TensorRT engine check on a self-hosted GPU runner. The JUnit XML and Markdown summary those jobs upload are rendered
by attn_export.ci_reports (re-exported here).

No YAML library is needed: the workflow is written as text and every `attn-export` command in it is parsed by the
CLI itself before it is written (``validate_invocation``). The CLI's click command is handed in (or found as the
running command's root), never imported: attn_export.cli imports this module, not the other way round.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import click

from attn_export import defaults

# Re-exported: the pipeline and older callers import the report rendering from attn_export.ci.
from attn_export.ci_reports import (  # noqa: F401
    Case,
    junit_xml,
    parity_cases,
    quant_cases,
    report_cases,
    summary_markdown,
)
from attn_export.errors import AttnExportError
from attn_export.outdir import write_text_atomically
from attn_export.shapes import parse_input_shapes

# ---------------------------------------------------------------------------------------------
# The CLI's own parser, for commands written into workflows (and for tests)


def _unparsed(ctx) -> list[str]:
    """A group context's subcommand and its arguments (click 8.2 keeps the first in a private field and
    deprecates the public one; 8.1 has only the public one)."""
    fields = vars(ctx)
    protected = fields["_protected_args"] if "_protected_args" in fields else fields.get("protected_args", [])
    return [*protected, *ctx.args]


def cli_command(command: click.Command | None = None) -> click.Command:
    """``command``, else the root command of the click invocation running now (``attn-export ci-template``)."""
    if command is not None:
        return command
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        raise ValueError("no attn-export command is running: pass the CLI's click command (attn_export.cli.main)")
    return ctx.find_root().command


def validate_invocation(argv: Sequence[str], command: click.Command | None = None) -> list[str]:
    """Parse ``argv`` (``attn-export ...``) with the CLI's own parser (``command``: attn_export.cli.main; by default
    the running invocation's root command), down to the leaf command, without running it; returns the leaf
    command's path (e.g. ["check"]). A parse error raises AttnExportError naming it."""
    main = cli_command(command)
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


EXPORT_DIR = "export"  # the CPU job's export (model.onnx, reference.npz) that the GPU job downloads


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
    return json.dumps(value)  # a JSON string is a valid YAML scalar


def workflow_commands(opts: WorkflowOptions) -> dict[str, list[list[str]]]:
    """The `attn-export` commands of each job, as argv lists (what ci-template validates and writes)."""
    out = opts.report_dir
    check = ["attn-export", "check", opts.model, opts.onnx, *opts.model_args, "--report", f"{out}/report.json",
             "--junit", f"{out}/junit.xml", "--summary", f"{out}/summary.md"]
    commands = {"cpu": [check]}
    if opts.gpu:  # the CPU job exports (reference outputs included); the GPU job needs no model, only those files
        ex = EXPORT_DIR
        commands["cpu"].append(["attn-export", opts.model, *opts.model_args, "-o", ex, "--no-engine"])
        commands["gpu"] = [
            ["attn-export", "plugins", "build", "--arch", "native"],
            ["attn-export", "engine", f"{ex}/model.onnx", "--reference", f"{ex}/reference.npz"],
            ["attn-export", "check", "--reference", f"{ex}/reference.npz", f"{ex}/model.onnx", "--engine",
             f"{ex}/model.engine", "--report", f"{out}/report-trt.json", "--junit", f"{out}/junit-trt.xml",
             "--summary", f"{out}/summary-trt.md"],
        ]
    return commands


def workflow_yaml(opts: WorkflowOptions, command: click.Command | None = None) -> str:
    """A GitHub Actions workflow: the CPU parity job (and with ``gpu`` the TensorRT job on a self-hosted runner).
    Every attn-export command is validated with the CLI's parser (``command``, see validate_invocation) first."""
    if not opts.install:
        raise AttnExportError(NO_INSTALL)
    commands = workflow_commands(opts)
    main = cli_command(command)
    for argvs in commands.values():
        for argv in argvs:
            validate_invocation(argv, main)
    return _cpu_job(opts, commands["cpu"]) + (_gpu_job(opts, commands["gpu"]) if opts.gpu else "")


def _cpu_job(opts: WorkflowOptions, commands: Sequence[Sequence[str]]) -> str:
    """The workflow's head and its CPU job: install, check the committed ONNX, summary, upload."""
    out = opts.report_dir
    torch_pin = defaults.CI_TORCH
    cpu_run = [shlex.join(a) for a in commands]  # attn-export creates the report folder
    return f"""# Parity check of the exported ONNX against the PyTorch model (written by `attn-export ci-template`).
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
        run: {_run_block(cpu_run[:1])}{_export_steps(cpu_run[1:])}
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


def _export_steps(commands: Sequence[str]) -> str:
    """With --gpu: the CPU job also exports the model (its check writes reference.npz) and uploads that folder."""
    if not commands:
        return ""
    return f"""
      - name: Export for the TensorRT job (model.onnx and the reference outputs on the check inputs)
        run: {_run_block(commands)}
      - name: Upload the export
        uses: actions/upload-artifact@v4
        with:
          name: parity-export
          path: {_yaml_str(EXPORT_DIR + "/")}
          if-no-files-found: error"""


def _gpu_job(opts: WorkflowOptions, commands: Sequence[Sequence[str]]) -> str:
    """The TensorRT job on a self-hosted GPU runner, without the model: the CPU job's export downloaded, the plugins
    built, the engine built from model.onnx, checked against reference.npz; summary, upload."""
    out = opts.report_dir
    torch_pin = defaults.CI_TORCH
    gpu_run = [shlex.join(a) for a in commands]
    labels = ", ".join(_yaml_str(label) for label in opts.runner_labels)
    return f"""
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
      - name: Download the CPU job's export (model.onnx and its reference outputs)
        uses: actions/download-artifact@v4
        with:
          name: parity-export
          path: {_yaml_str(EXPORT_DIR)}
      - name: Build the plugin library and the engine, check it against the saved reference outputs
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
            {EXPORT_DIR}/engine.json
          if-no-files-found: warn
"""


def write_workflow(path: str | os.PathLike, opts: WorkflowOptions, force: bool = False,
                   command: click.Command | None = None) -> Path:
    """Write the workflow to ``path`` atomically; refuses a folder, an existing file without ``force``, and input
    shapes the check could not read (the CLI parser takes any string for them). ``command``: the CLI's click
    command that validates the workflow's command lines (see validate_invocation)."""
    path = Path(path)
    if path.is_dir():
        raise AttnExportError(f"-o {path} is a folder; pass the workflow file's path")
    if path.exists() and not force:
        raise AttnExportError(f"{path} exists; pass --force to replace it")
    args = list(opts.model_args)
    parse_input_shapes([args[i + 1] for i, a in enumerate(args[:-1]) if a == "--input-shape"])
    return write_text_atomically(workflow_yaml(opts, command), path)
