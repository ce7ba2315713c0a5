"""The steps that make artifacts: converted calls, the PARO plan, the ONNX file, the quantized file, the engine's
profiles and the engine, the Triton entry. Each takes the ExportJob (attn_export.steps) and adds to it."""

from __future__ import annotations

from attn_export import precision, quantize_step, shapes, trt
from attn_export.artifacts import CALIB_CACHE_NAME, ENGINE_META_NAME, ENGINE_NAME, ONNX_NAME, PARO_MODE_METADATA
from attn_export.onnx_export import export
from attn_export.onnx_utils import save_atomically
from attn_export.parity import onnx_io
from attn_export.paro_export import mark_buckets, mark_metadata
from attn_export.steps import convert as conversion
from attn_export.steps import outputs, paro
from attn_export.steps.data import RANDOM_DESCRIPTION, calibration_data


def convert(job) -> None:
    """NATTEN / FlexAttention calls as our ops (the model as written stays the reference)."""
    job.loaded, job.call_records = conversion.convert_calls(job.loaded, job.opts.seed)


def plan_paro(job) -> None:
    job.paro_job = paro.plan(job.loaded, job.opts, job.paro, job.stage, job.held)
    if job.paro_job.planned and job.paro_job.plan.source == RANDOM_DESCRIPTION:
        job.warn(paro.PARO_RANDOM_PLAN)
    job.loaded = job.paro_job.loaded  # the model to export: its SDPA calls run as paro_attention


def export_onnx(job) -> None:
    """OUTDIR/model.onnx in the asked precision; a PARO file with timestep buckets records their count."""
    opts, loaded = job.opts, job.loaded
    spatial = opts.dynamic_spatial is not False  # declared spatial dims are dynamic unless refused
    dynamic = loaded.dynamic_shapes(opts.dynamic_batch, spatial) if loaded.dynamic_shapes else None
    examples = loaded.random_inputs(opts.seed)
    model = loaded.program if loaded.program is not None else loaded.module
    names = conversion.output_names(loaded, examples)
    job.proto = export(precision.cast_module(model, opts.dtype), precision.cast_tensors(examples, opts.dtype),
                       job.onnx_path, dynamic_shapes=None if loaded.program else dynamic, opset=opts.opset,
                       input_names=loaded.input_names, output_names=names, lowering=opts.lowering)
    if opts.dtype != "fp32":
        precision.mark(job.proto, opts.dtype)
        save_atomically(job.proto, job.onnx_path)
    if job.paro and job.paro.buckets > 1:
        mark_buckets(job.proto, job.onnx_path, job.paro.buckets)
    if job.paro and opts.lowering == "attention":  # no ParoAttention node is left to say how to judge the file
        mark_metadata(job.proto, job.onnx_path, {PARO_MODE_METADATA: job.paro.mode})
    job.onnx_inputs, _ = onnx_io(job.onnx_path)
    if opts.shape_profiles:  # what the file declares dynamic is the last word
        shapes.check_against_model(opts.shape_profiles, job.onnx_inputs, ONNX_NAME)


def quantize(job) -> None:
    opts, loaded, skip = job.opts, job.loaded, job.held.rows if job.held else 0
    job.quant = quantize_step.run(job.proto, job.calib, lambda: calibration_data(loaded, opts, skip),
                                  job.stage / job.quant_name, opts, job.inputs, job.stage / CALIB_CACHE_NAME)
    if job.calib.warning:
        job.warn(job.calib.warning)


def engine_profiles(job) -> None:
    """The engine's optimization profiles: --shapes / --profile, else the shapes the check and the model use."""
    opts = job.opts
    if not (opts.engine or opts.shape_profiles):
        return
    feeds = job.inputs.feeds if job.inputs else []
    seen = [{i.name: i.shape for i in job.loaded.inputs}, *({n: a.shape for n, a in f.items()} for f in feeds)]
    job.profiles = shapes.engine_profiles(job.onnx_inputs, opts.shape_profiles, seen, opts.max_batch)
    if not opts.engine:
        job.warn("no TensorRT engine was built here (no TensorRT or plugin library): --shapes / --profile were "
                 "checked against model.onnx and shape the Triton entry only")


def build_engine(job) -> None:
    """OUTDIR/model.engine from the file that ships, with engine.json beside it."""
    if job.opts.check:  # the engine's runner uses its first profile
        shapes.check_covers(job.profiles[0], [{n: a.shape for n, a in f.items()} for f in job.inputs.feeds])
    trt.build_engine(job.final, job.stage / ENGINE_NAME, job.profiles, job.opts.timing_cache,
                     meta_path=job.stage / ENGINE_META_NAME, precision=job.opts.dtype)
    job.engine = job.stage / ENGINE_NAME


def deploy(job) -> None:
    """The Triton model repository entry (staged; committed with OUTDIR)."""
    job.triton_command = outputs.write_triton(job.extras, job.opts, job.triton_name, job.final, job.engine,
                                              job.profiles)
