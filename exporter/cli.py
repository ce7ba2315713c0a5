"""The `attn-export` command line: thin click commands over attn_export's Python API.

Exit codes (docs/architecture.md, Errors and exit codes): 0 success, 1 a check failed, 2 bad input or usage,
3 a requested step needs something absent.

Each command body imports its implementation module (torch comes with it) only after its flags are valid: that
is the CLI's one deliberate lazy boundary, so that `attn-export --help` and a flag error take a tenth of a second.
"""

from __future__ import annotations

import os
import sys
import traceback

import click

from attn_export import defaults
from attn_export.console import StepProgress, echo_files, report_outcome, show_export
from attn_export.errors import AttnExportError, unexpected_failure
from attn_export.options import (
    BenchOptions,
    CheckGroup,
    EngineGroup,
    ExportGroup,
    ModelSource,
    ParoGroup,
    QuantizationGroup,
    ReportGroup,
    WorkflowFlags,
    click_options,
    fields_of,
    from_command_line,
    given_values,
)

EPILOG = """\b
Examples:
  attn-export zoo:nat-tiny -o out/nat-tiny
  attn-export model.pt2 -o out/ --input-shape images=1x3x224x224
  attn-export ckpt.pt --factory mypkg.models:build -o out/
  attn-export check zoo:nat-tiny out/nat-tiny/model.onnx --report out/check.json --junit out/junit.xml
  attn-export zoo:nat-tiny -o out --triton-repo out/triton --shapes images=1x3x64x64:8x3x224x224:32x3x384x384
  attn-export bench out/nat-tiny --batch 1 --batch 8
  attn-export ci-template --gpu -o .github/workflows/parity.yml --install ./wheels/attn_export-0.1.0-py3-none-any.whl
  attn-export zoo
  attn-export plugins build --arch 90

`attn-export MODEL ...` is `attn-export export MODEL ...`: see `attn-export export --help`
for its options. Exit codes: 0 ok, 1 check failed, 2 bad input, 3 missing dependency.
"""


class DefaultGroup(click.Group):
    """`attn-export MODEL ...` runs the `export` command; `attn-export check ...` and others as usual."""

    default_command = "export"

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)

    def format_usage(self, ctx, formatter):
        formatter.write_usage(ctx.command_path, "MODEL [OPTIONS]  |  COMMAND [ARGS]...")


def _load(model: str, source, steps: int):
    """Load MODEL (``source``: its --factory, --trust-pickle, --input-shape) as the first of ``steps`` numbered
    steps; return it and the step reporter."""
    from attn_export.loader import load_model

    step = StepProgress(steps)
    with step(f"load {model}"):
        loaded = load_model(model, source.factory, source.trust_pickle, source.shapes())
    for line in loaded.conversions:
        click.echo(f"    converted {line}", err=True)
    return loaded, step


def _run(debug: bool, body) -> None:
    """Run a command body: errors become one line on stderr and their exit code (an exception no step
    expected, e.g. a library's, exits 2 like a named library failure); --debug adds the traceback and keeps
    the exit code."""
    try:
        code = body()
    except click.ClickException:  # usage errors: click prints them and exits 2
        raise
    except Exception as exc:  # noqa: BLE001 - the last resort: never a bare traceback
        error = exc if isinstance(exc, AttnExportError) else unexpected_failure(exc)
        if debug:
            traceback.print_exception(exc, file=sys.stderr)
        click.echo(f"error: {error}", err=True)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted; nothing was written", err=True)
        sys.exit(130)
    sys.exit(code or 0)


@click.group(cls=DefaultGroup, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="attn-export")
def main():
    """Export PyTorch models with neighborhood / block-sparse / PARO attention to ONNX with each
    attention call as one custom node (plus a portable decomposition), and verify parity."""


def _options(command: str) -> tuple:
    """The validated options and model source of this command line (no torch import before they are valid)."""
    opts, source = from_command_line(["attn-export", *sys.argv[1:]])
    opts.prepare_check() if command == "check" else opts.validate()
    return opts, source


@main.command("export")
@click.argument("model")
@click.option("-o", "--output", "outdir", default="out", show_default=True, metavar="OUTDIR",
              help="Folder for model.onnx and report.json (written atomically).")
@click_options("export", (ExportGroup, EngineGroup, QuantizationGroup, ParoGroup, ReportGroup, CheckGroup,
                          ModelSource))
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def export_cmd(model, outdir, debug):
    """Export MODEL (zoo:NAME, a .pt2 archive, a checkpoint with --factory, or a pickle with
    --trust-pickle) to OUTDIR/model.onnx (with --int8/--int4 also model.int8/int4.onnx; with TensorRT
    also model.engine) and check parity (report.json). Exit 1 if parity fails."""

    def body():
        opts, source = _options("export")  # every flag is checked before torch loads
        from attn_export import steps
        from attn_export.pipeline import export_job

        opts.prepare()
        loaded, step = _load(model, source, steps=steps.count(opts, model))
        return show_export(export_job(loaded, outdir, opts, step))

    _run(debug, body)


@main.command("check")
@click.argument("model")
@click.argument("onnx_file", type=click.Path(), metavar="ONNX", required=False)
@click.option("--reference", "reference_path", type=click.Path(dir_okay=False), metavar="FILE",
              help="Compare with the reference outputs an export saved (OUTDIR/reference.npz) instead of running the "
                   "model: `check --reference FILE ONNX`, no MODEL (for a GPU runner without the PyTorch model).")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Write the JSON report here.")
@click.option("--engine", "engine_file", type=click.Path(dir_okay=False), metavar="ENGINE",
              help="Also run this TensorRT engine (needs TensorRT and the plugin library; else exit 3).")
@click_options("check", (ReportGroup, CheckGroup, QuantizationGroup, ExportGroup, ModelSource))
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def check_cmd(model, onnx_file, reference_path, report_path, engine_file, debug):
    """Compare MODEL in PyTorch with ONNX on ONNX Runtime (and a TensorRT engine); exit 1 on a
    mismatch (for CI). A quantized (Q/DQ) or PARO file is judged by the quality gate (cosine, mean error,
    top-1 agreement on real samples, with a null control).

    Random inputs cover two batch sizes where the ONNX batch dimension is dynamic."""

    def body():
        opts, source = _options("check")
        opts.prepare_check(report_path)  # before loading the model
        if reference_path:
            report = _check_reference(model, onnx_file, reference_path, report_path, engine_file, opts,
                                      source.given() or opts.inputs_npz or opts.calib_data)
        else:
            if onnx_file is None:
                raise AttnExportError("check needs MODEL and ONNX (or --reference FILE ONNX)")
            from attn_export.pipeline import CHECK_STEPS, check_job, require_engine_file

            if engine_file:
                require_engine_file(engine_file)
            loaded, step = _load(model, source, steps=CHECK_STEPS)
            report = check_job(loaded, onnx_file, report_path, opts, step, engine_path=engine_file)
        code = report_outcome(report, report_path)
        echo_files(opts.junit, opts.summary)
        for warning in report.warnings:
            click.echo(f"WARNING: {warning}", err=True)
        return code

    _run(debug, body)


def _check_reference(first, second, reference_path, report_path, engine_file, opts, model_flags):
    if second is not None:
        raise AttnExportError(f"--reference replaces MODEL: pass only the ONNX file (`check --reference "
                              f"{reference_path} {second}`)")
    if model_flags:
        raise AttnExportError("--reference checks the saved inputs without the model: drop --factory, "
                              "--input-shape, --inputs and --calib-data")
    from attn_export.pipeline import check_reference_job  # torch: the flags are valid by now

    return check_reference_job(reference_path, first, report_path, opts, StepProgress(1), engine_path=engine_file)


@main.command("engine")
@click.argument("onnx_file", type=click.Path(), metavar="ONNX")
@click.option("-o", "--output", "engine_file", type=click.Path(), metavar="ENGINE",
              help="Where to write the engine (engine.json beside it) [default: model.engine beside ONNX].")
@click.option("--reference", "reference_path", type=click.Path(dir_okay=False), metavar="FILE",
              help="The export's reference.npz: its input shapes shape the optimization profile (as the export's).")
@click_options("engine", (EngineGroup,))
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def engine_cmd(onnx_file, engine_file, reference_path, debug):
    """Build a TensorRT engine from an exported ONNX file, without the PyTorch model (a GPU runner: then `check
    --reference FILE ONNX --engine ENGINE`). Needs TensorRT and, for plugin nodes, the plugin library (else exit 3)."""

    def body():
        opts, _ = _options("engine")
        from attn_export.pipeline import engine_job

        click.echo(f"wrote {engine_job(onnx_file, engine_file, opts, reference_path)}")
        return 0

    _run(debug, body)


@main.command("bench")
@click.argument("outdir", type=click.Path(), metavar="OUTDIR")
@click_options("bench", (BenchOptions, ModelSource))
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def bench_cmd(outdir, debug):
    """Time the export in OUTDIR: latency p50 / p90 / p99 and throughput per runtime and batch, next to
    PyTorch eager; prints a table and writes OUTDIR/bench.json."""

    def body():
        opts = BenchOptions(**fields_of(BenchOptions, given_values())).prepare()
        from attn_export.bench import BENCH_NAME, bench  # torch: the flags are valid by now

        report = bench(outdir, opts, progress=lambda line: click.echo(f"timing {line} ...", err=True))
        click.echo(report.table())
        click.echo(f"wrote {os.path.join(outdir, BENCH_NAME)}")
        return 0

    _run(debug, body)


@main.command("ci-template")
@click.option("-o", "--output", "output", default=defaults.CI_WORKFLOW, show_default=True, metavar="PATH",
              type=click.Path(), help="Where to write the workflow.")
@click_options("ci-template", (WorkflowFlags, ModelSource))
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def ci_template_cmd(output, debug):
    """Write a GitHub Actions workflow that checks parity in CI: a CPU job (install, `attn-export check` of the
    model against the committed ONNX, JUnit and report.json uploaded, Markdown job summary) and, with --gpu, a
    self-hosted-runner job that builds the plugins and the engine and checks it against the CPU job's export."""

    def body():
        values = given_values()
        flags, source = WorkflowFlags(**fields_of(WorkflowFlags, values)), ModelSource(**fields_of(ModelSource, values))
        from attn_export.ci import WorkflowOptions, write_workflow

        opts = WorkflowOptions(model=flags.model, onnx=flags.onnx, gpu=flags.gpu, install=tuple(flags.install),
                               model_args=flags.model_args(source.factory, source.input_shapes))
        click.echo(f"wrote {write_workflow(output, opts, flags.force, main)}")
        return 0

    _run(debug, body)


@main.command("zoo")
def zoo_cmd():
    """List the built-in models (use them as zoo:NAME)."""
    from attn_export.models import zoo

    rows = [(name, ", ".join(f"{s.name}={'x'.join(map(str, s.shape))}" for s in zoo.entry(name).inputs),
             zoo.entry(name).description) for name in zoo.names()]
    widths = [max(len(row[column]) for row in rows) for column in (0, 1)]  # columns as wide as their longest cell
    for name, shapes, description in rows:
        click.echo(f"{name:<{widths[0]}}  {shapes:<{widths[1]}}  {description}")


@main.group("plugins")
def plugins_group():
    """Build and locate the native libraries (CUDA kernels, TensorRT plugins)."""


@plugins_group.command("build")
@click.option("--arch", default=None, metavar="LIST",
              help="CUDA architectures, e.g. 90 or 80;86;89;90 [default: native where a GPU is visible, else 90].")
@click.option("--tensorrt-root", type=click.Path(file_okay=False), metavar="DIR",
              help="TensorRT install whose include/ has NvInfer.h (else TENSORRT_ROOT, else no plugin library).")
@click.option("--build-dir", type=click.Path(file_okay=False), metavar="DIR",
              help="Build folder [default: $ATTN_EXPORT_BUILD_DIR or ~/.cache/attn-export/plugins].")
@click.option("--fetch-trt-headers", is_flag=True,
              help="Download TensorRT headers (PyPI wheel kernel-lens) into the build folder to compile the plugin "
                   "without a TensorRT install (compile check only).")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def plugins_build_cmd(arch, tensorrt_root, build_dir, fetch_trt_headers, debug):
    """Compile plugins/ with CMake and print the library paths."""

    def body():
        import shutil

        from attn_export import native

        chosen = arch or ("native" if shutil.which("nvidia-smi") else "90")
        click.echo(f"building the native libraries for CUDA architectures {chosen} ...", err=True)
        result = native.build(chosen, tensorrt_root, build_dir, fetch_trt_headers,
                              log=lambda line: click.echo(line, err=True))
        click.echo(f"kernels: {result.kernels}")
        if result.plugins:
            click.echo(f"plugins: {result.plugins}")
        else:
            click.echo("plugins: not built (no TensorRT headers: pass --tensorrt-root or set TENSORRT_ROOT)", err=True)
        if build_dir and not os.environ.get(native.BUILD_DIR_ENV):
            click.echo(f"to use them, set {native.BUILD_DIR_ENV}={result.build_dir}", err=True)
        return 0

    _run(debug, body)


@plugins_group.command("path")
def plugins_path_cmd():
    """Print the libraries attn-export would use; exit 3 if the plugin library is not found."""

    def body():
        from attn_export import native
        from attn_export.errors import EXIT_MISSING_DEPENDENCY

        kernels, plugins = native.kernels_library(), native.plugin_library()
        click.echo(f"kernels: {kernels or 'not found'}")
        click.echo(f"plugins: {plugins or 'not found'}")
        if plugins is None:
            click.echo(f"error: no {native.PLUGIN_LIB_NAME}; {native.BUILD_HINT} or set {native.PLUGIN_LIB_ENV}",
                       err=True)
            return EXIT_MISSING_DEPENDENCY
        return 0

    _run(False, body)


if __name__ == "__main__":  # pragma: no cover - last, so that every command above is registered
    main(prog_name="attn-export")
