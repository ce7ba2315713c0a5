"""The `attn-export` command line: thin click commands over attn_export's Python API.

Exit codes (docs/architecture.md, Errors and exit codes): 0 success, 1 a check failed, 2 bad input or usage,
3 a requested step needs something absent.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import traceback

import click

from attn_export import defaults
from attn_export.errors import EXIT_CHECK_FAILED, AttnExportError, unexpected_failure

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


class StepProgress:
    """Numbered steps on stderr with their durations; a live tqdm line while a step runs on a terminal."""

    def __init__(self, total: int):
        from tqdm import tqdm

        self.total, self.done = total, 0
        self._write = tqdm.write
        self._bar = tqdm(total=total, file=sys.stderr, leave=False, disable=not sys.stderr.isatty(),
                         bar_format="{desc} [{elapsed}]")

    @contextlib.contextmanager
    def __call__(self, title: str):
        label = f"[{self.done + 1}/{self.total}] {title}"
        self._bar.set_description_str(f"{label} ...")
        start = time.perf_counter()
        stop = threading.Event()
        if not self._bar.disable:  # tqdm redraws only on updates: tick the elapsed time meanwhile
            threading.Thread(target=self._tick, args=(stop,), daemon=True).start()
        outcome = "failed after "
        try:
            yield
            outcome = ""
        finally:
            stop.set()
            self.done += 1
            self._bar.update(1)
            self._write(f"{label}: {outcome}{time.perf_counter() - start:.1f} s", file=sys.stderr)
            if outcome or self.done == self.total:
                self._bar.close()

    def _tick(self, stop: threading.Event) -> None:
        while not stop.wait(0.5):
            self._bar.refresh()


def _parse_tolerances(atol: tuple[str, ...], rtol: tuple[str, ...]):
    from attn_export.parity import Tolerances

    def split(values, flag, default):
        base, per_output = default, {}
        for value in values:
            name, sep, number = value.rpartition("=")
            try:
                tol = float(number)
            except ValueError:
                raise AttnExportError(f"{flag} '{value}' is not a number or OUTPUT=NUMBER") from None
            if tol < 0:
                raise AttnExportError(f"{flag} '{value}' is negative; tolerances are >= 0")
            if sep:
                per_output[name] = tol
            else:
                base = tol
        return base, per_output

    # None where not given: the precision's default (fp16 / bf16 files have their own)
    a, per_a = split(atol, "--atol", None)
    r, per_r = split(rtol, "--rtol", None)
    return Tolerances(a, r, per_a, per_r)


def _model_options(func):
    options = [
        click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME=DIMS",
                     help="Shape of an input, e.g. images=1x3x64x64 (repeatable)."),
        click.option("--factory", metavar="MODULE:FUNC",
                     help="Function that builds the model for a checkpoint (module:function or file.py:function)."),
        click.option("--trust-pickle", is_flag=True,
                     help="Allow loading a pickled whole module; this runs code from the file."),
        click.option("--inputs", "inputs_npz", type=click.Path(dir_okay=False), metavar="FILE.npz",
                     help="Check on these inputs (a .npz keyed by input name) instead of seeded random ones."),
        click.option("--atol", multiple=True, metavar="[OUTPUT=]TOL",
                     help=f"Absolute tolerance (default {defaults.ATOL:g}; fp16 / bf16 files: "
                          f"{defaults.DTYPE_TOLERANCES['fp16']:g} / {defaults.DTYPE_TOLERANCES['bf16']:g} x each "
                          "output's mean |reference|)."),
        click.option("--rtol", multiple=True, metavar="[OUTPUT=]TOL",
                     help=f"Relative tolerance (default {defaults.RTOL:g}; fp16 / bf16 files: "
                          f"{defaults.DTYPE_TOLERANCES['fp16']:g} / {defaults.DTYPE_TOLERANCES['bf16']:g})."),
        click.option("--seed", type=int, default=defaults.SEED, show_default=True, help="Seed of random inputs."),
        click.option("--debug", is_flag=True, help="Show tracebacks."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _ci_report_options(func):
    func = click.option("--summary", type=click.Path(), metavar="FILE.md",  # a folder: one-line error (prepare)
                        help="Also write the check as Markdown (a CI job summary page).")(func)
    return click.option("--junit", type=click.Path(), metavar="FILE.xml",
                        help="Also write the check as JUnit XML: one test case per output and input set.")(func)


def _quant_threshold_options(func):
    cosine = ", ".join(f"{c} {m}" for m, (c, *_) in defaults.QUANT_THRESHOLDS.items())
    error = ", ".join(f"{e:.2f} {m}" for m, (_, e, *_) in defaults.QUANT_THRESHOLDS.items())
    func = click.option("--quant-max-error", type=float, help="Quantized parity: largest mean |error| / mean "
                        f"|reference| [default: {error}].")(func)
    func = click.option("--quant-min-cosine", type=float, help="Quantized parity: least cosine similarity per output "
                        f"[default: {cosine}].")(func)
    return _quality_options(func)


GROUP_KEY = "attn_export.option_groups"


def _group_option(*decls, field: str, **attrs):
    """An option declared once, its value kept under its ExportOptions field (read back with _group_fields), so no
    command lists it in its signature or passes it on by hand."""

    def keep(ctx, _param, value):
        if value is not None:
            ctx.meta.setdefault(GROUP_KEY, {})[field] = value
        return value

    return click.option(*decls, expose_value=False, callback=keep, **attrs)


def _quality_options(func):
    sample = ", ".join(f"{v[2]} {m}" for m, v in defaults.QUANT_THRESHOLDS.items())
    top1 = ", ".join(f"{v[3]:.2f} {m}" for m, v in defaults.QUANT_THRESHOLDS.items())
    options = [
        _group_option("--quant-min-sample-cosine", field="quant_min_sample_cosine", type=float,
                        help=f"Quantized / PARO check: least cosine of any one sample [default: {sample}]."),
        _group_option("--quant-min-top1", field="quant_min_top1", type=float,
                        help="Quantized / PARO check: least share of real samples whose top-1 class (outputs "
                             f"[batch, classes]) matches the float model's [default: {top1}]."),
        _group_option("--check-samples", field="check_samples", type=int,
                        help="Real samples held out of the calibration data (never calibrated on) for the "
                             f"quantized and PARO checks [default: {defaults.CHECK_SAMPLES}; 0: none]."),
        _group_option("--allow-inconclusive", field="allow_inconclusive", is_flag=True, default=None,
                        help="Accept a quantized / PARO check whose null control (a deliberately broken variant) "
                             "passes too; without it that check exits 1."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _group_fields() -> dict:
    """The values of the options declared with _group_option on this command line, by ExportOptions field."""
    return dict(click.get_current_context().meta.get(GROUP_KEY, {}))


def _load(model: str, factory, trust_pickle: bool, input_shapes, steps: int):
    """Load MODEL as the first of ``steps`` numbered steps; return it and the step reporter."""
    from attn_export.loader import load_model, parse_input_shapes

    step = StepProgress(steps)
    with step(f"load {model}"):
        loaded = load_model(model, factory, trust_pickle, parse_input_shapes(input_shapes))
    for line in loaded.conversions:
        click.echo(f"    converted {line}", err=True)
    return loaded, step


def _report_outcome(report, report_path) -> int:
    """Print the parity table; exit code 1 when it failed."""
    if report is None:
        return 0
    click.echo(report.table())
    if report_path:
        click.echo(f"wrote {report_path}")
    if not report.passed:
        verdict = _verdict(report) if hasattr(report, "status") else "FAILED"
        click.echo(f"parity {verdict}: see the table above" + (f" and {report_path}" if report_path else ""),
                   err=True)
        return EXIT_CHECK_FAILED
    return 0


def _verdict(report) -> str:
    return "INCONCLUSIVE" if report.status == "inconclusive" else "FAILED"


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


@main.command("export")
@click.argument("model")
@click.option("-o", "--output", "outdir", default="out", show_default=True, metavar="OUTDIR",
              help="Folder for model.onnx and report.json (written atomically).")
@click.option("--dynamic-batch/--static-batch", default=True, show_default=True, help="Dynamic batch dimension.")
@click.option("--dynamic-spatial/--static-spatial", default=None,
              help="Dynamic spatial dims where the model declares them (zoo models) [default: dynamic for zoo models, "
                   "static for checkpoints and pickles; a .pt2 keeps its own].")
@click.option("--opset", type=int, help=f"ONNX opset ({defaults.SUPPORTED_OPSETS[0]}-{defaults.SUPPORTED_OPSETS[-1]}, "
                                        f"default {defaults.OPSET}; --int4 needs {defaults.INT4_MIN_OPSET}).")
@click.option("--lowering", default=defaults.LOWERING, show_default=True, metavar="|".join(defaults.LOWERINGS),
              help="How each attention call is written: plugin = one attn_export node + its local function "
                   "(TensorRT runs our plugin); attention = standard ops around ONNX's Attention with an exact mask "
                   f"(opset >= {defaults.ATTENTION_MIN_OPSET}; stock TensorRT >= 10.14 and ONNX Runtime, no plugin).")
@click.option("--no-check", is_flag=True, help="Skip the PyTorch vs ONNX Runtime parity check.")
@click.option("--engine/--no-engine", default=None,
              help="Build OUTDIR/model.engine with TensorRT and the plugin library [default: when both are present]; "
                   "parity then also runs the engine. --engine without them exits 3.")
@click.option("--max-batch", type=int, default=defaults.MAX_BATCH, show_default=True,
              help="Largest batch of the engine's optimization profile (with --dynamic-batch).")
@click.option("--timing-cache", type=click.Path(dir_okay=False), metavar="FILE",
              help="TensorRT timing cache to read and update (speeds up rebuilds).")
@click.option("--int8", is_flag=True,
              help="Also write OUTDIR/model.int8.onnx: W8A8 Q/DQ on MatMul/Gemm/Conv, calibrated.")
@click.option("--int4", is_flag=True, help="Also write OUTDIR/model.int4.onnx: INT4 weight-only blocks on MatMul/Gemm "
                                           "(exports with opset 21).")
@click.option("--int4-block", type=int, default=defaults.INT4_BLOCK, show_default=True,
              help="INT4 block size along the input dim.")
@click.option("--calib-method", default=defaults.CALIB_METHOD, show_default=True, metavar="NAME",
              help="Activation calibrator: max, percentile (99.99), entropy (KL, as TensorRT) or mse.")
@click.option("--calib-samples", type=int, default=defaults.CALIB_SAMPLES, show_default=True,
              help="Calibration samples to use.")
@click.option("--calib-data", metavar="SOURCE",
              help="A .npz / .npy of inputs, a folder of images, or file.py:function returning feed dicts "
                   "[default: the zoo model's data; seeded random data, with a warning, for other models].")
@click.option("--calib-cache", type=click.Path(dir_okay=False), metavar="FILE",
              help="Reuse the activation amax of an earlier --int8 run (its OUTDIR/calib_cache.json) instead of "
                   "calibrating.")
@click.option("--calib-preprocess", default=defaults.CALIB_PREPROCESS, show_default=True, metavar="raw|unit|imagenet",
              help="For an image folder: pixels 0-255 (raw), 0-1 (unit) or ImageNet-normalized RGB.")
@_group_option("--sensitivity", field="sensitivity", is_flag=True, default=None,
                 help="Quantization: measure every quantized layer alone on the check inputs (real samples where "
                      "given) and list the most harmful first (console and report.json).")
@_group_option("--auto-exclude", field="auto_exclude", type=float, metavar="COSINE",
                 help="Quantization: keep the most sensitive layers in float, one at a time, until the worst sample "
                      "cosine on the held-out real data reaches COSINE (e.g. 0.99); lists what it kept.")
@_group_option("--smooth", field="smooth", type=float, metavar="ALPHA",
                 help="INT8: SmoothQuant-style smoothing of MatMul/Gemm inputs with outlier channels (ALPHA 0.5 "
                      "is SmoothQuant's).")
@click.option("--exclude", multiple=True, metavar="PATTERN",
              help="Keep nodes or weights whose name matches this glob in float (repeatable).")
@click.option("--paro/--no-paro", default=None,
              help="Replace every F.scaled_dot_product_attention call with PARO attention (per-head token order, "
                   "block mask, INT8/INT4): plans them on calibration data and writes OUTDIR/paro_plan.json "
                   "[default: off; on for zoo models built for it].")
@click.option("--paro-grid", metavar="FxHxW", help="PARO: the token grid (frames x height x width) after the prefix.")
@click.option("--paro-prefix", type=int, metavar="P", help="PARO: text / register tokens before the grid [0].")
@click.option("--paro-density", type=float, metavar="D", help="PARO: fraction of blocks kept per head [0.3].")
@click.option("--paro-block", type=int, metavar="N", help="PARO: block size of the mask, in tokens [64].")
@click.option("--paro-qk", metavar="int8|int4|fp16", help="PARO: QK precision [--int8/--int4's, else int8].")
@click.option("--paro-pv", metavar="int8|int4|fp16", help="PARO: PV precision [--int8/--int4's, else int8].")
@click.option("--paro-buckets", type=int, metavar="T", help="PARO: one mask per diffusion-time bucket; the model "
                                                           "needs a 'timestep' input in [0, 1] [1].")
@click.option("--paro-plan", type=click.Path(dir_okay=False), metavar="FILE",
              help="PARO: reuse this plan (an earlier OUTDIR/paro_plan.json) instead of planning.")
@click.option("--dtype", default=defaults.DTYPE, show_default=True, metavar="fp32|fp16|bf16",
              help="Precision of the exported file (attention nodes included); checked against the fp32 PyTorch "
                   f"model with the precision's tolerances. bf16 exports with opset >= {defaults.BF16_MIN_OPSET}.")
@click.option("--shapes", multiple=True, metavar="NAME=MIN:OPT:MAX",
              help="Engine optimization profile range of an input, e.g. images=1x3x64x64:8x3x224x224:32x3x384x384 "
                   "(repeatable; only dims the ONNX file leaves dynamic may vary) [default: the check's shapes, "
                   "batch 1 to --max-batch].")
@click.option("--profile", "profiles", multiple=True, metavar="NAME=MIN:OPT:MAX,...",
              help="One more optimization profile: comma-separated ranges (repeatable; inputs left out take the "
                   "default range). --shapes gives the first profile.")
@click.option("--triton-repo", type=click.Path(), metavar="DIR",
              help="Also write a Triton model repository entry DIR/NAME: the engine (tensorrt_plan, with the plugin "
                   "library) or, without one, model.onnx (onnxruntime_onnx); config.pbtxt and serve.sh.")
@click.option("--triton-name", metavar="NAME", help="Name of the Triton entry [the model's: zoo:nat-tiny -> nat-tiny].")
@_ci_report_options
@_quant_threshold_options
@_model_options
def export_cmd(model, outdir, dynamic_batch, dynamic_spatial, opset, lowering, no_check, engine, max_batch,
               timing_cache,
               int8, int4, int4_block, calib_method, calib_samples, calib_data, calib_cache, calib_preprocess, exclude,
               paro, paro_grid, paro_prefix, paro_density, paro_block, paro_qk, paro_pv, paro_buckets, paro_plan,
               dtype, shapes, profiles, triton_repo, triton_name, junit, summary,
               quant_min_cosine, quant_max_error, input_shapes, factory, trust_pickle, inputs_npz, atol, rtol, seed,
               debug):
    """Export MODEL (zoo:NAME, a .pt2 archive, a checkpoint with --factory, or a pickle with
    --trust-pickle) to OUTDIR/model.onnx (with --int8/--int4 also model.int8/int4.onnx; with TensorRT
    also model.engine) and check parity (report.json). Exit 1 if parity fails."""

    def body():
        from attn_export.pipeline import ExportOptions, export_job

        if int8 and int4:
            raise AttnExportError("--int8 and --int4 are exclusive: choose one")
        opts = ExportOptions(
            opset=opset, lowering=lowering, dynamic_batch=dynamic_batch, dynamic_spatial=dynamic_spatial,
            check=not no_check,
            tolerances=_parse_tolerances(atol, rtol), inputs_npz=inputs_npz, seed=seed,
            command=["attn-export", *sys.argv[1:]], engine=engine, max_batch=max_batch, timing_cache=timing_cache,
            quantize="int8" if int8 else "int4" if int4 else None, int4_block=int4_block, calib_method=calib_method,
            calib_samples=calib_samples, calib_data=calib_data, calib_cache=calib_cache,
            calib_preprocess=calib_preprocess, exclude=exclude, quant_min_cosine=quant_min_cosine,
            quant_max_error=quant_max_error, paro=paro, paro_grid=paro_grid, paro_prefix=paro_prefix,
            paro_density=paro_density, paro_block=paro_block, paro_qk=paro_qk, paro_pv=paro_pv,
            paro_buckets=paro_buckets, paro_plan=paro_plan, dtype=dtype, shapes=shapes, profiles=profiles,
            junit=junit, summary=summary, triton_repo=triton_repo, triton_name=triton_name, **_group_fields(),
        ).prepare()  # every flag is checked before any work
        loaded, step = _load(model, factory, trust_pickle, input_shapes, steps=opts.step_count(model))
        result = export_job(loaded, outdir, opts, step)
        for line in result.converted_calls:
            click.echo(f"    converted call {line}", err=True)
        for path in (result.onnx_path, result.quantized_path, result.engine_path, result.paro_plan_path):
            if path:
                click.echo(f"wrote {path}")
        if result.paro_plan is not None:
            from attn_export.paro_export import plan_table

            click.echo(plan_table(result.paro_plan))
        extra_reports = result.quant_report or result.paro_report
        code = _report_outcome(result.report, None if extra_reports else result.report_path)
        if result.paro_report is not None:
            click.echo(result.paro_report.table())
            if not result.paro_report.passed:
                click.echo(f"PARO quality {_verdict(result.paro_report)}: see the table above and "
                           f"{result.report_path}", err=True)
                code = EXIT_CHECK_FAILED
            if result.quant_report is None:
                click.echo(f"wrote {result.report_path}")
        if result.quant_notes:
            click.echo(result.quant_notes)
        if result.quant_report is not None:
            click.echo(result.quant_report.table())
            click.echo(f"wrote {result.report_path}")
            if not result.quant_report.passed:
                click.echo(f"{opts.quant.mode} parity {_verdict(result.quant_report)}: see the table above and "
                           f"{result.report_path}", err=True)
                code = EXIT_CHECK_FAILED
        _echo_extra_files(result.junit_path, result.summary_path)
        if result.triton_path:
            click.echo(f"wrote {result.triton_path} (Triton model repository entry); serve it with "
                       f"{result.triton_path / 'serve.sh'}")
        for warning in result.warnings:  # after the tables, where they are seen
            click.echo(f"WARNING: {warning}", err=True)
        return code

    _run(debug, body)


def _echo_extra_files(*paths) -> None:
    for path in paths:
        if path:
            click.echo(f"wrote {path}")


@main.command("check")
@_group_option("--calib-data", field="calib_data", metavar="SOURCE",
               help="Real samples for a quantized or PARO file's check: the first --check-samples of them (at most a "
                    "quarter), as the export held them out of its calibration (a .npz, .npy, image folder or "
                    "file.py:function, as for export).")
@_group_option("--calib-preprocess", field="calib_preprocess", metavar="raw|unit|imagenet",
               help="For an image folder in --calib-data: pixels 0-255 (raw), 0-1 (unit) or ImageNet-normalized.")
@click.argument("model")
@click.argument("onnx_file", type=click.Path(), metavar="ONNX", required=False)
@click.option("--reference", "reference_path", type=click.Path(dir_okay=False), metavar="FILE",
              help="Compare with the reference outputs an export saved (OUTDIR/reference.npz) instead of running the "
                   "model: `check --reference FILE ONNX`, no MODEL (for a GPU runner without the PyTorch model).")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Write the JSON report here.")
@click.option("--engine", "engine_file", type=click.Path(dir_okay=False), metavar="ENGINE",
              help="Also run this TensorRT engine (needs TensorRT and the plugin library; else exit 3).")
@_ci_report_options
@_quant_threshold_options
@_model_options
def check_cmd(model, onnx_file, reference_path, report_path, engine_file, junit, summary, quant_min_cosine,
              quant_max_error, input_shapes, factory, trust_pickle, inputs_npz, atol, rtol, seed, debug):
    """Compare MODEL in PyTorch with ONNX on ONNX Runtime (and a TensorRT engine); exit 1 on a
    mismatch (for CI). A quantized (Q/DQ) file is judged by cosine and mean error.

    Random inputs cover two batch sizes where the ONNX batch dimension is dynamic."""

    def body():
        from attn_export.pipeline import CHECK_STEPS, ExportOptions, check_job, require_engine_file

        opts = ExportOptions(tolerances=_parse_tolerances(atol, rtol), inputs_npz=inputs_npz, seed=seed,
                             command=["attn-export", *sys.argv[1:]], quant_min_cosine=quant_min_cosine,
                             quant_max_error=quant_max_error, junit=junit, summary=summary, **_group_fields())
        opts.prepare_check(report_path)  # before loading the model
        if reference_path:
            report = _check_reference(model, onnx_file, reference_path, report_path, engine_file, opts,
                                      factory or input_shapes or inputs_npz or opts.calib_data)
        else:
            if onnx_file is None:
                raise AttnExportError("check needs MODEL and ONNX (or --reference FILE ONNX)")
            if engine_file:
                require_engine_file(engine_file)
            loaded, step = _load(model, factory, trust_pickle, input_shapes, steps=CHECK_STEPS)
            report = check_job(loaded, onnx_file, report_path, opts, step, engine_path=engine_file)
        code = _report_outcome(report, report_path)
        _echo_extra_files(junit, summary)
        for warning in report.warnings:
            click.echo(f"WARNING: {warning}", err=True)
        return code

    _run(debug, body)


def _check_reference(first, second, reference_path, report_path, engine_file, opts, model_flags):
    from attn_export.pipeline import check_reference_job

    if second is not None:
        raise AttnExportError(f"--reference replaces MODEL: pass only the ONNX file (`check --reference "
                              f"{reference_path} {second}`)")
    if model_flags:
        raise AttnExportError("--reference checks the saved inputs without the model: drop --factory, "
                              "--input-shape, --inputs and --calib-data")
    return check_reference_job(reference_path, first, report_path, opts, StepProgress(1), engine_path=engine_file)


@main.command("bench")
@click.argument("outdir", type=click.Path(), metavar="OUTDIR")
@click.option("--runtime", "runtimes", multiple=True, metavar="ort|trt|torch",
              help="Runtimes to time (repeatable) [default: all; ort also tries ONNX Runtime's CUDA and TensorRT "
                   "providers, torch also CUDA; what is absent is listed as skipped].")
@click.option("--batch", "batches", multiple=True, type=int, metavar="N",
              help=f"Batch sizes (repeatable) [default: {', '.join(map(str, defaults.BENCH_BATCHES))}].")
@click.option("--iters", type=int, default=defaults.BENCH_ITERS, show_default=True, help="Timed runs per row.")
@click.option("--warmup", type=int, default=defaults.BENCH_WARMUP, show_default=True,
              help="Untimed runs before them.")
@click.option("--onnx", "onnx_name", default="model.onnx", show_default=True, metavar="FILE",
              help="The ONNX file in OUTDIR to run (e.g. model.int8.onnx).")
@click.option("--model", metavar="MODEL", help="The PyTorch model for the eager rows [report.json's, with its "
                                               "--factory and --input-shape].")
@click.option("--factory", metavar="MODULE:FUNC", help="With --model: the function that builds it.")
@click.option("--trust-pickle", is_flag=True, help="Allow loading a pickled model for the eager rows.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def bench_cmd(outdir, runtimes, batches, iters, warmup, onnx_name, model, factory, trust_pickle, debug):
    """Time the export in OUTDIR: latency p50 / p90 / p99 and throughput per runtime and batch, next to
    PyTorch eager; prints a table and writes OUTDIR/bench.json."""

    def body():
        from attn_export.bench import BENCH_NAME, BenchOptions, bench

        opts = BenchOptions(runtimes, batches, iters, warmup, onnx_name, model, factory, trust_pickle).prepare()
        report = bench(outdir, opts, progress=lambda line: click.echo(f"timing {line} ...", err=True))
        click.echo(report.table())
        click.echo(f"wrote {os.path.join(outdir, BENCH_NAME)}")
        return 0

    _run(debug, body)


@main.command("ci-template")
@click.option("-o", "--output", "output", default=defaults.CI_WORKFLOW, show_default=True, metavar="PATH",
              type=click.Path(), help="Where to write the workflow.")
@click.option("--gpu", is_flag=True, help="Add a job for a self-hosted GPU runner: build the plugins and check the "
                                         "TensorRT engine.")
@click.option("--model", default="zoo:nat-tiny", show_default=True, metavar="MODEL", help="The model to check.")
@click.option("--onnx", default="model.onnx", show_default=True, metavar="FILE",
              help="The committed ONNX file the CPU job checks the model against.")
@click.option("--factory", metavar="MODULE:FUNC", help="For a checkpoint MODEL: the function that builds it.")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME=DIMS", help="Input shapes (repeatable).")
@click.option("--install", "installs", multiple=True, metavar="REQUIREMENT",
              help="pip requirements the jobs install (repeatable, required): where attn-export comes from (a "
                   "wheel committed to your repository, a git URL) and -e . for your package; attn-export is on no "
                   "package index.")
@click.option("--force", is_flag=True, help="Replace an existing file.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def ci_template_cmd(output, gpu, model, onnx, factory, input_shapes, installs, force, debug):
    """Write a GitHub Actions workflow that checks parity in CI: a CPU job (install, `attn-export check` of the
    model against the committed ONNX, JUnit and report.json uploaded, Markdown job summary) and, with --gpu, a
    self-hosted-runner job that builds the plugins and checks the TensorRT engine."""

    def body():
        from attn_export.ci import WorkflowOptions, write_workflow

        model_args = [*(["--factory", factory] if factory else []),
                      *(a for shape in input_shapes for a in ("--input-shape", shape))]
        opts = WorkflowOptions(model=model, onnx=onnx, model_args=model_args, gpu=gpu,
                               install=tuple(installs))
        click.echo(f"wrote {write_workflow(output, opts, force)}")
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
