"""The export job as a Python API: load -> steps (attn_export.steps) -> artifacts; the checks of existing files.
The CLI is a thin layer on it; options are attn_export.options' groups."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from attn_export import reference as saved_reference
from attn_export import shapes, steps, trt
from attn_export.artifacts import (  # noqa: F401 - the artifact names, also pipeline's as before
    CALIB_CACHE_NAME,
    ENGINE_META_NAME,
    ENGINE_NAME,
    ONNX_NAME,
    PARO_ARRAYS_NAME,
    PARO_PLAN_NAME,
    REFERENCE_NAME,
    REPORT_NAME,
    paro_in,
    quantized_mode,
    quantized_name,
    validate_onnx,
)
from attn_export.errors import AttnExportError
from attn_export.judge import Criterion, judge, parity_reference
from attn_export.loader import LoadedModel, load_model
from attn_export.options import QUANT_MODES, ExportOptions  # noqa: F401 - ExportOptions is pipeline's too
from attn_export.outdir import staged_extras
from attn_export.parity import ParityReport, onnx_io
from attn_export.paro_export import DropBucket, add_buckets
from attn_export.precision import cast_feeds, onnx_precision
from attn_export.quality import QuantParityReport
from attn_export.steps import data
from attn_export.steps.data import calibration_source, check_feeds  # noqa: F401 - also pipeline's
from attn_export.steps.outputs import write_check_outputs

CHECK_STEPS = 2  # load, check


@dataclass
class ExportResult:
    onnx_path: Path
    report_path: Path | None
    report: ParityReport | None
    engine_path: Path | None = None
    quantized_path: Path | None = None
    quant_report: QuantParityReport | None = None
    warnings: list[str] = field(default_factory=list)
    paro_report: QuantParityReport | None = None  # the PARO file against the dense model
    paro_plan_path: Path | None = None
    paro_plan: object | None = None  # attn_export.calib.paro.ParoPlan
    converted_calls: list[str] = field(default_factory=list)  # NATTEN / FlexAttention calls run as our ops
    junit_path: Path | None = None
    summary_path: Path | None = None
    triton_path: Path | None = None  # DIR/NAME
    triton_command: str | None = None  # the line in DIR/NAME/serve.sh that starts Triton
    quant_notes: str = ""  # smoothing, per-layer sensitivity and the layers --auto-exclude kept in float

    @property
    def passed(self) -> bool:
        return all(r is None or r.passed for r in (self.report, self.quant_report, self.paro_report))


def export_job(loaded: LoadedModel, outdir: str | os.PathLike, opts: ExportOptions, step=None) -> ExportResult:
    """Write OUTDIR/model.onnx and (unless opts.check is False) OUTDIR/report.json atomically, with the
    quantized file, the engine, the JUnit and summary files and the Triton entry when asked for.

    ``step(title)`` returns a context manager that reports progress of one step (default: silent); the
    titles are those of ``steps.plan(opts, loaded.source)``.
    """
    job = steps.run(loaded, outdir, opts, step)
    outdir, opts = job.outdir, job.opts
    return ExportResult(
        outdir / ONNX_NAME, outdir / REPORT_NAME if job.report else None, job.report,
        engine_path=outdir / ENGINE_NAME if job.engine else None,
        quantized_path=outdir / job.quant_name if job.quant_name else None, quant_report=job.quant_report,
        warnings=job.warnings, paro_report=job.paro_report,
        paro_plan_path=outdir / PARO_PLAN_NAME if job.paro_job else None,
        paro_plan=job.paro_job.plan if job.paro_job else None,
        converted_calls=[r.describe() for r in job.call_records],
        junit_path=Path(opts.junit) if opts.junit else None, summary_path=Path(opts.summary) if opts.summary else None,
        triton_path=Path(opts.triton_repo) / job.triton_name if opts.triton_repo else None,
        triton_command=job.triton_command, quant_notes=job.quant.table() if job.quant else "")


def check_job(loaded: LoadedModel, onnx_path: str | os.PathLike, report_path: str | os.PathLike | None,
              opts: ExportOptions, step=None, engine_path: str | os.PathLike | None = None):
    """Compare an existing ONNX file (and optionally a TensorRT engine built from it) with the PyTorch
    model; optionally write the JSON report (and opts.junit / opts.summary, all or none of them). The file says
    how it is judged (attn_export.judge): Q/DQ and PARO files by the quality gate, float files by tolerances."""
    step = step or steps.silent_step
    onnx_path = _checked_files(onnx_path, report_path, opts, engine_path)
    criterion = Criterion.of(onnx_path)
    user_feed = data.read_inputs(opts.inputs_npz, loaded) if opts.inputs_npz else None
    held = data.held_out_samples(loaded, opts) if user_feed is None and criterion.mode else None
    inputs = data.check_inputs(loaded, onnx_path, opts, user_feed, held, criterion.buckets)
    inputs.feeds = cast_feeds(inputs.feeds, criterion.dtype)
    if criterion.buckets > 1:  # a PARO file's buckets come from the timestep, as at run time
        inputs.feeds = add_buckets(inputs.feeds, criterion.buckets)
        loaded = dataclasses.replace(loaded, module=DropBucket(loaded.module).eval())
    reference = parity_reference(loaded, inputs.feeds[0])
    with step(criterion.title("PyTorch fp32" if criterion.mode else "PyTorch", engine_path is not None)):
        report = judge(criterion, reference, onnx_path, inputs, opts, engine_path=engine_path)
    write_check_outputs(report, report_path, opts, loaded.source, onnx_path, paro_in(onnx_path) is not None,
                        inputs.to_dict())
    return report


def check_reference_job(reference_path: str | os.PathLike, onnx_path: str | os.PathLike,
                        report_path: str | os.PathLike | None, opts: ExportOptions, step=None,
                        engine_path: str | os.PathLike | None = None):
    """Check an ONNX file (and an engine) against the reference outputs an export saved, without the model."""
    step = step or steps.silent_step
    onnx_path = _checked_files(onnx_path, report_path, opts, engine_path)
    saved = saved_reference.load(reference_path)
    reference, inputs = saved_reference.replay(saved, reference_path, onnx_path)
    criterion = Criterion.of(onnx_path)
    inputs.feeds = cast_feeds(inputs.feeds, criterion.dtype)
    with step(criterion.title("saved reference", engine_path is not None)):
        report = judge(criterion, reference, onnx_path, inputs, opts, engine_path=engine_path)
    write_check_outputs(report, report_path, opts, saved.meta.get("model", str(reference_path)), onnx_path,
                        paro_in(onnx_path) is not None, saved.meta.get("check_inputs", {}))
    return report


def engine_job(onnx_path: str | os.PathLike, engine_path: str | os.PathLike | None, opts: ExportOptions,
               reference_path: str | os.PathLike | None = None) -> Path:
    """Build a TensorRT engine (and engine.json beside it) from an existing ONNX file, without the PyTorch model:
    the profiles from --shapes / --profile, else from the input shapes of the export's reference.npz (batch 1 to
    --max-batch). Returns the engine's path (default: model.engine beside the ONNX file)."""
    onnx_path = _checked_files(onnx_path, None, opts, None)
    engine_path = Path(engine_path) if engine_path else onnx_path.with_name(ENGINE_NAME)
    if engine_path.is_dir():
        raise AttnExportError(f"-o {engine_path} is a folder; pass the engine's file path")
    opts.shape_profiles = opts.parse_shape_profiles()
    onnx_inputs, _ = onnx_io(onnx_path)
    checked = _reference_shapes(reference_path, onnx_path) if reference_path else []
    seen = _profile_shapes(onnx_path, onnx_inputs, opts, checked)
    profiles = shapes.engine_profiles(onnx_inputs, opts.shape_profiles, seen, opts.max_batch)
    if checked:  # `check --reference` runs these input sets with the engine's first profile
        shapes.check_covers(profiles[0], checked, "check --reference")
    with staged_extras() as extras:
        engine, meta = extras.path(engine_path), extras.path(engine_path.with_name(ENGINE_META_NAME))
        trt.build_engine(onnx_path, engine, profiles, opts.timing_cache, meta_path=meta,
                         precision=onnx_precision(onnx_path))
    return engine_path


def _reference_shapes(reference_path, onnx_path: Path) -> list[dict]:
    """The shapes of a reference.npz's input sets, its export's own input shapes first (the profile's optimum, as
    the export's engine has it); refused when the file belongs to another export."""
    saved = saved_reference.load(reference_path)
    saved_reference.replay(saved, reference_path, onnx_path)  # names the mismatch if another export wrote it
    own = {n: tuple(s) for n, s in saved.meta.get("export_shapes", {}).items()}
    feeds = [{n: a.shape for n, a in feed.items()} for feed in saved.feeds]
    return ([{**feeds[0], **own}] if own and feeds else []) + feeds


def _profile_shapes(onnx_path: Path, onnx_inputs: dict, opts: ExportOptions, checked: list[dict]) -> list[dict]:
    """The shapes the default profile spans: the reference's, else --shapes' optimum and the file's static dims."""
    if checked:
        return checked
    static = {n: dims for n, dims in onnx_inputs.items() if all(isinstance(d, int) for d in dims)}
    given = {n: r.opt for n, r in opts.shape_profiles[0].items()} if opts.shape_profiles else {}
    missing = sorted(set(onnx_inputs) - set(static) - set(given))
    if missing:
        raise AttnExportError(f"{onnx_path.name} has dynamic dims ({', '.join(missing)}): pass --reference "
                              "OUTDIR/reference.npz (the export's check shapes) or --shapes NAME=MIN:OPT:MAX for each")
    return [{**static, **given}]


def _checked_files(onnx_path, report_path, opts: ExportOptions, engine_path) -> Path:
    """What every check needs before it runs: writable report paths, a valid ONNX file, an engine with TensorRT."""
    opts.prepare_check(report_path)
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise AttnExportError(f"ONNX file {onnx_path} does not exist; export one first with `attn-export MODEL -o DIR`")
    validate_onnx(onnx_path)
    if engine_path is not None:
        require_engine_file(engine_path)
    return onnx_path


def require_engine_file(path: str | os.PathLike) -> None:
    """A check of an engine needs TensorRT, the plugin library (unless its engine.json lists no plugin layers:
    the attention lowering) and the file (exit 3 / 2 naming the missing one)."""
    trt.require_engine_tools() if trt.engine_needs_plugins(path) else trt.require_tensorrt()
    if not Path(path).is_file():
        raise AttnExportError(f"--engine {path} does not exist; build one with `attn-export MODEL --engine`")


# ---------------------------------------------------------------------------------------------
# The Python API: what `attn-export MODEL` and `attn-export check` do, without the CLI.


def run(model, outdir: str | os.PathLike = "out", *, factory: str | None = None, trust_pickle: bool = False,
        input_shapes: Mapping[str, Sequence[int]] | None = None, example_inputs=None, progress=None,
        **options) -> ExportResult:
    """Export ``model`` ("zoo:NAME", a file, or an nn.Module) to ``outdir`` as `attn-export MODEL` does.

    ``options`` are ExportOptions fields (``quantize="int8"``, ``opset=21``, ``engine=False``, ...). Raises
    AttnExportError (its ``exit_code`` says what kind) for bad input; check ``result.passed``.
    """
    opts = ExportOptions(**options).prepare()
    loaded = load_model(model, factory, trust_pickle, _shapes(input_shapes), example_inputs)
    return export_job(loaded, outdir, opts, progress)


def check(model, onnx_path: str | os.PathLike, report: str | os.PathLike | None = None, *,
          engine: str | os.PathLike | None = None, factory: str | None = None, trust_pickle: bool = False,
          input_shapes: Mapping[str, Sequence[int]] | None = None, example_inputs=None, progress=None, **options):
    """Compare ``model`` with an exported ONNX file (and engine) as `attn-export check` does; returns the report."""
    opts = ExportOptions(**options)
    loaded = load_model(model, factory, trust_pickle, _shapes(input_shapes), example_inputs)
    return check_job(loaded, onnx_path, report, opts, progress, engine_path=engine)


def _shapes(input_shapes) -> dict[str, tuple[int, ...]]:
    return {name: tuple(int(d) for d in dims) for name, dims in (input_shapes or {}).items()}
