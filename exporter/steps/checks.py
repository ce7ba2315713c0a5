"""The steps that judge: the inputs every check uses, the export's parity check, the quality gate of the PARO and
quantized files (attn_export.judge picks it from each file), and the report and reference outputs they leave."""

from __future__ import annotations

from attn_export import precision, shapes
from attn_export.artifacts import ENGINE_NAME, ONNX_NAME, PARO_PLAN_NAME, REFERENCE_NAME, export_summary
from attn_export.judge import Criterion, judge, parity_reference
from attn_export.paro_export import add_buckets
from attn_export.steps import convert as conversion
from attn_export.steps import data, outputs, paro


def preflight(job) -> None:
    """Before any work: the flags against this model, the user's inputs, the held-out samples and the first
    calibration sample, so that a bad file fails fast."""
    opts, loaded = job.opts, job.loaded
    conversion.check_dynamic_spatial(loaded, opts.dynamic_spatial)
    conversion.check_precision(loaded, opts.dtype, job.paro)
    job.triton_name = outputs.triton_name(loaded, opts)
    if opts.shape_profiles:  # names, ranks and static dims as the file will have them
        shapes.check_against_model(opts.shape_profiles, conversion.expected_inputs(loaded, opts), loaded.source,
                                   loaded.spatial)
    job.user_feed = data.read_inputs(opts.inputs_npz, loaded) if opts.check and opts.inputs_npz else None
    if opts.check and job.user_feed is None and (opts.quant or job.paro):
        job.held = data.held_out_samples(loaded, opts, bool(job.paro))
    if opts.quant:
        job.calib = data.calibration_data(loaded, opts, skip=job.held.rows if job.held else 0)


def gather_inputs(job) -> None:
    """The check's inputs (held-out real samples, or the user's, or random), in the file's precision."""
    buckets = job.paro.buckets if job.paro else 1
    job.inputs = data.check_inputs(job.loaded, job.onnx_path, job.opts, job.user_feed, job.held, buckets)
    job.inputs.feeds = precision.cast_feeds(job.inputs.feeds, job.opts.dtype)
    if buckets > 1:
        job.inputs.feeds = add_buckets(job.inputs.feeds, buckets)


def check_export(job) -> None:
    """model.onnx element by element against the computation it exports (the PARO model for a PARO file, with
    the tolerance its quantization emulation needs); the engine too unless a quantized file ships."""
    opts = job.opts
    job.reference = (paro.exported_reference(job.loaded) if job.paro
                     else parity_reference(job.loaded, job.inputs.feeds[0]))
    tolerances = paro.paro_tolerances(job.paro, opts.tolerances) if job.paro else opts.tolerances
    engine = None if opts.quant else job.engine
    job.report = judge(Criterion.elementwise(opts.dtype), job.reference, job.onnx_path, job.inputs, opts,
                       engine_path=engine, tolerances=tolerances, export=True)
    job.warn(*job.report.warnings, *(f"{s['runner']} was not compared: {s['reason']}" for s in job.report.skipped))


def check_paro(job) -> None:
    """The PARO file against the dense model it replaces, by the quality gate (attention zeroed: the control)."""
    reference = paro.dense_reference(job.original, job.paro)
    criterion = Criterion.paro(job.paro, job.opts.dtype)
    job.paro_report = judge(criterion, reference, job.onnx_path, job.inputs, job.opts)
    job.warn(*job.paro_report.warnings)
    plan = job.paro_job.plan.summary()
    job.report_extra["paro"] = {"onnx": ONNX_NAME, "plan": PARO_PLAN_NAME, "settings": job.paro.to_dict(),
                                "float": paro.float_note(job.opts), "planned": job.paro_job.planned,
                                "calls": plan["calls"], "skipped_calls": plan["skipped_calls"],
                                "parity": job.paro_report.to_dict()}


def check_quantized(job) -> None:
    """The quantized file (and the engine built from it) against the float model, by the quality gate."""
    reference = paro.dense_reference(job.original, job.paro) if job.paro else job.reference
    path = job.stage / job.quant_name
    job.quant_report = judge(Criterion.of(path), reference, path, job.inputs, job.opts, engine_path=job.engine)
    job.warn(*job.quant_report.warnings)
    opts = job.opts
    job.report_extra["quantization"] = {
        "onnx": job.quant_name, "mode": opts.quant.mode, "method": opts.quant.method,
        "calibration_data": job.calib.description, "warning": job.calib.warning,
        "parity": job.quant_report.to_dict(), **job.quant.summary()}


def save(job) -> None:
    """report.json, reference.npz (the gate's reference outputs on the check inputs) and the JUnit / summary files."""
    opts, loaded = job.opts, job.loaded
    gate_reference = paro.dense_reference(job.original, job.paro) if job.paro else job.reference
    outputs.save_reference(job.stage / REFERENCE_NAME, gate_reference, job.onnx_path, job.inputs, loaded)
    summary = {**export_summary(job.proto), "lowering": opts.lowering, "precision": opts.dtype,
               "converted_modules": loaded.conversions, "converted_calls": [r.describe() for r in job.call_records]}
    outputs.write_report(job.stage / "report.json", job.report, loaded, onnx=ONNX_NAME, export=summary,
                         engine=ENGINE_NAME if job.engine else None,
                         status=outputs.quality_status(job.quant_report, job.paro_report),
                         check_inputs=job.inputs.to_dict(), **job.report_extra, reference_outputs=REFERENCE_NAME)
    outputs.write_check_files(job.extras, opts, loaded.source, str(job.outdir / ONNX_NAME), job.report,
                              job.quant_report, job.paro_report, job.warnings)
