"""The export job as a Python API: load -> ONNX -> parity -> artifacts. The CLI is a thin layer on it."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from attn_export import defaults
from attn_export.errors import AttnExportError, wrap_failure
from attn_export.loader import LoadedModel
from attn_export.onnx_utils import save_atomically
from attn_export.outdir import Extras, staged_extras, staged_output
from attn_export.parity import ParityReport, Tolerances, onnx_io
from attn_export.quality import QuantParityReport, QuantThresholds
from attn_export.registry import DOMAIN

if TYPE_CHECKING:
    from attn_export.calib.qdq import QuantOptions

ONNX_NAME = "model.onnx"
REPORT_NAME = "report.json"
ENGINE_NAME = "model.engine"
ENGINE_META_NAME = "engine.json"
CALIB_CACHE_NAME = "calib_cache.json"
PARO_PLAN_NAME = "paro_plan.json"
PARO_ARRAYS_NAME = "paro_plan.npz"
REFERENCE_NAME = "reference.npz"  # attn_export.reference: check inputs and reference outputs
QUANT_MODES = ("int8", "int4")


@dataclass
class ExportOptions:
    """Everything an export or a check can be asked for, as the CLI flags name it. ``prepare()`` checks the
    combination and resolves what follows from it (opset, quantization, thresholds, engine) before any work."""

    opset: int | None = None  # default: defaults.OPSET (INT4: at least defaults.INT4_MIN_OPSET)
    lowering: str = defaults.LOWERING  # "plugin" | "attention" (attn_export.lowering); attention: opset >= 23
    dynamic_batch: bool = True
    dynamic_spatial: bool | None = None  # None: dynamic where the model declares spatial dims (zoo models)
    check: bool = True
    tolerances: Tolerances = field(default_factory=lambda: Tolerances(None, None))  # None: the precision's default
    inputs_npz: str | None = None
    seed: int = defaults.SEED
    command: Sequence[str] = field(default_factory=lambda: list(sys.argv))
    engine: bool | None = None  # None: build one when TensorRT and the plugin library are present
    max_batch: int = defaults.MAX_BATCH
    timing_cache: str | None = None
    quantize: str | None = None  # "int8" or "int4"
    int4_block: int = defaults.INT4_BLOCK
    calib_method: str = defaults.CALIB_METHOD
    calib_samples: int = defaults.CALIB_SAMPLES
    calib_data: str | None = None
    calib_cache: str | None = None  # reuse the amax of an earlier INT8 calibration
    calib_preprocess: str = defaults.CALIB_PREPROCESS
    exclude: Sequence[str] = ()
    quant_min_cosine: float | None = None  # default: defaults.QUANT_THRESHOLDS[mode]
    quant_max_error: float | None = None
    quant_min_sample_cosine: float | None = None
    quant_min_top1: float | None = None
    check_samples: int = defaults.CHECK_SAMPLES  # real samples held out of the calibration data for the checks
    allow_inconclusive: bool = False  # accept a quality check whose null control passes too
    sensitivity: bool = False  # measure every quantized layer alone (report.json, console)
    auto_exclude: float | None = None  # keep sensitive layers in float until the worst sample cosine reaches this
    smooth: float | None = None  # SmoothQuant alpha for INT8 activations
    paro: bool | None = None  # None: as the zoo model declares (paro-dit-tiny exports with PARO)
    paro_grid: str | None = None  # "FxHxW"
    paro_prefix: int | None = None
    paro_density: float | None = None
    paro_block: int | None = None
    paro_qk: str | None = None  # "int8" | "int4" | "fp16"; default: --int8/--int4's precision, else int8
    paro_pv: str | None = None
    paro_buckets: int | None = None
    paro_plan: str | None = None  # reuse a plan (its paro_plan.json) instead of planning
    dtype: str = defaults.DTYPE  # "fp32" | "fp16" | "bf16": the precision of the exported file
    shapes: Sequence[str] = ()  # --shapes NAME=MIN:OPT:MAX: the engine's first optimization profile
    profiles: Sequence[str] = ()  # --profile "NAME=MIN:OPT:MAX,...": one more profile each
    junit: str | None = None  # JUnit XML of the parity check
    summary: str | None = None  # Markdown summary of the parity check
    triton_repo: str | None = None  # write a Triton model repository entry here
    triton_name: str | None = None  # its name [the model's]
    # Resolved by prepare():
    quant: QuantOptions | None = None
    quant_thresholds: QuantThresholds | None = None
    shape_profiles: list = field(default_factory=list)  # attn_export.shapes.Profile per --shapes / --profile
    prepared: bool = False

    def prepare(self) -> ExportOptions:
        """Check the options and resolve the derived ones, in place; an explicit --engine without TensorRT
        or the plugin library fails here. Idempotent."""
        if self.prepared:
            return self
        from attn_export import lowering, precision, shapes, triton
        from attn_export.onnx_export import check_opset

        asked_opset = self.opset
        lowering.check_lowering(self.lowering)
        if self.lowering == "attention":
            lowering.attention_opset(asked_opset)  # an explicit opset below 23: exit 2 before any work
        self.dtype = precision.check_name(self.dtype)
        if self.dtype != "fp32" and self.quantize:
            raise AttnExportError(f"--dtype {self.dtype} and --{self.quantize} are exclusive: Q/DQ files are "
                                  "calibrated and checked in fp32")
        if self.dtype != "fp32" and self.paro:
            raise AttnExportError(f"--dtype {self.dtype} does not apply to PARO exports (their attention quantizes "
                                  "itself): drop one")
        if self.dtype == "bf16":
            if self.opset is not None and self.opset < defaults.BF16_MIN_OPSET:
                raise AttnExportError(f"--dtype bf16 needs --opset {defaults.BF16_MIN_OPSET} or newer (ONNX has "
                                      "bfloat16 Conv from opset 22)")
            self.opset = max(check_opset(self.opset), defaults.BF16_MIN_OPSET)
        self.tolerances = precision.tolerances(self.dtype, self.tolerances)
        self.shape_profiles = shapes.parse_profiles(self.shapes, self.profiles)
        if (self.junit or self.summary) and not self.check:
            raise AttnExportError(f"--{'junit' if self.junit else 'summary'} reports the parity check: drop --no-check")
        self.prepare_check()
        triton.check_repository_path(self.triton_repo, self.triton_name)
        if self.triton_name is not None:
            triton.model_name("", self.triton_name)
        if self.quantize is None:
            if self.exclude or (self.calib_data and not self.paro):
                raise AttnExportError(f"--{'exclude' if self.exclude else 'calib-data'} applies to quantization"
                                      f"{'' if self.exclude else ' and PARO'}: add --int8, --int4"
                                      f"{'' if self.exclude else ' or --paro'}")
            if self.calib_cache:
                raise AttnExportError("--calib-cache holds INT8 activation ranges: add --int8")
            self.opset = check_opset(self.opset)
        else:
            self._prepare_quantization()
        from attn_export import quantize_step

        quantize_step.check_options(self)
        if self.lowering == "attention":  # the explicit opset was checked above; defaults rise to 23
            self.opset = max(self.opset, lowering.ATTENTION_MIN_OPSET)
        if self.max_batch < 1:
            raise AttnExportError(f"--max-batch {self.max_batch} must be at least 1")
        self._check_paro_flags()
        self.engine = self._wants_engine()
        self.prepared = True
        return self

    def prepare_check(self, report: str | os.PathLike | None = None) -> ExportOptions:
        """What `attn-export check` can be asked for beyond the model: its report files must be writable paths
        (not folders). Called by prepare(), and by the check before it loads the model."""
        for flag, path in (("--report", report), ("--junit", self.junit), ("--summary", self.summary)):
            if path is not None and Path(path).is_dir():
                raise AttnExportError(f"{flag} {path} is a folder; pass a file path")
        if self.check_samples < 0:
            raise AttnExportError(f"--check-samples {self.check_samples} must be 0 or more")
        self.thresholds("int8")  # the threshold flags are in range
        return self

    def _prepare_quantization(self) -> None:
        from attn_export.calib.qdq import QuantOptions
        from attn_export.onnx_export import check_opset

        mode = self.quantize
        if mode not in QUANT_MODES:
            raise AttnExportError(f"quantization mode '{mode}' is not one of {', '.join(QUANT_MODES)}")
        if mode == "int4":
            if self.opset is not None and self.opset < defaults.INT4_MIN_OPSET:
                raise AttnExportError(f"--int4 needs --opset {defaults.INT4_MIN_OPSET} or newer (block-wise "
                                      "DequantizeLinear)")
            self.opset = max(check_opset(self.opset), defaults.INT4_MIN_OPSET)
            if self.calib_cache:
                raise AttnExportError("--calib-cache holds INT8 activation ranges: add --int8")
        else:
            self.opset = check_opset(self.opset)
        self.quant = QuantOptions(mode, self.calib_method, self.calib_samples, self.int4_block, tuple(self.exclude))
        self.quant.validate()
        self.quant_thresholds = self.thresholds(mode)

    def thresholds(self, mode: str) -> QuantThresholds:
        """The quality thresholds of ``mode`` ("int8", "paro-int4", ...) with the ones the user gave."""
        for flag, value, low, high in (("--quant-min-cosine", self.quant_min_cosine, -1, 1),
                                       ("--quant-max-error", self.quant_max_error, 0, math.inf),
                                       ("--quant-min-sample-cosine", self.quant_min_sample_cosine, -1, 1),
                                       ("--quant-min-top1", self.quant_min_top1, 0, 1)):
            if value is not None and not low <= value <= high:  # NaN fails too
                raise AttnExportError(f"{flag} {value} must lie in [{low}, {high}]")
        return QuantThresholds.for_mode(mode, self.quant_min_cosine, self.quant_max_error,
                                        self.quant_min_sample_cosine, self.quant_min_top1)

    def _check_paro_flags(self) -> None:
        """PARO flags without --paro, and values that are wrong whatever the model (before any work)."""
        from attn_export import paro_export

        given = [name for name in ("grid", "prefix", "density", "block", "qk", "pv", "buckets", "plan")
                 if getattr(self, f"paro_{name}") is not None]
        if given and self.paro is False:
            raise AttnExportError(f"--paro-{given[0]} applies to PARO: drop --no-paro")
        if self.paro_grid is not None:
            paro_export.parse_grid(self.paro_grid)
        if self.paro_density is not None and not 0 < self.paro_density <= 1:
            raise AttnExportError(f"--paro-density {self.paro_density} must lie in (0, 1]")
        if self.paro_prefix is not None and self.paro_prefix < 0:
            raise AttnExportError(f"--paro-prefix {self.paro_prefix} must be a non-negative token count")
        if self.paro_block is not None and self.paro_block < 1:
            raise AttnExportError(f"--paro-block {self.paro_block} must be a positive token count")
        if self.paro_buckets is not None and self.paro_buckets < 1:
            raise AttnExportError(f"--paro-buckets {self.paro_buckets} must be at least 1")
        for flag, text in (("--paro-qk", self.paro_qk), ("--paro-pv", self.paro_pv)):
            bits = paro_export.parse_bits(text, flag, 16)
            if bits < 16 and self.lowering == "attention":
                raise AttnExportError(f"{flag} {text}: --lowering attention writes float PARO (ONNX's Attention has "
                                      f"no form of its quantization emulation): drop {flag}, or use --lowering plugin")

    def paro_for(self, source: str) -> bool:
        """Whether an export of ``source`` uses PARO: --paro / --no-paro, else the zoo model's own default."""
        from attn_export import paro_export

        if self.paro is not None:
            return self.paro
        return paro_export.zoo_paro(source) is not None or any(
            getattr(self, f"paro_{name}") is not None for name in ("grid", "plan"))

    def paro_settings(self, source: str):
        """The resolved PARO settings of an export of ``source`` (None without PARO): flags first, then the
        zoo model's defaults; bits default to --int8/--int4's precision, else int8 (--lowering attention: float)."""
        from attn_export import paro_export
        from attn_export.calib.paro import DEFAULT_BLOCK, DEFAULT_DENSITY

        if not self.paro_for(source):
            return None
        if self.dynamic_spatial:
            raise AttnExportError("--dynamic-spatial: a PARO plan is made for one token count (its grid); export "
                                  "with static spatial dims, or with --no-paro")
        zoo = paro_export.zoo_paro(source)
        if self.paro_grid is None and zoo is None:
            raise AttnExportError("--paro needs --paro-grid FxHxW: the frames, height and width of the token grid "
                                  "(plus --paro-prefix for text or register tokens before it)")
        default_bits = 4 if self.quantize == "int4" else 8
        if self.lowering == "attention":
            default_bits = 16  # float PARO: the Attention operator has no form of the QK/PV quantization emulation
        plan = self.paro_plan
        if plan is None and zoo is not None and self.paro_grid is None and self.paro_density is None \
                and self.paro_block is None and self.paro_buckets is None:
            plan = str(zoo.plan_path())  # the plan the zoo model ships
        return paro_export.ParoSettings(
            grid=paro_export.parse_grid(self.paro_grid) if self.paro_grid else tuple(zoo.grid),
            prefix=self.paro_prefix if self.paro_prefix is not None else (zoo.prefix if zoo else 0),
            block=self.paro_block or (zoo.block if zoo else DEFAULT_BLOCK),
            density=self.paro_density or (zoo.density if zoo else DEFAULT_DENSITY),
            qk_bits=paro_export.parse_bits(self.paro_qk, "--paro-qk", default_bits),
            pv_bits=paro_export.parse_bits(self.paro_pv, "--paro-pv", default_bits),
            buckets=self.paro_buckets or 1, plan_file=plan)

    def _wants_engine(self) -> bool:
        """Whether to build an engine; an explicit request without TensorRT fails here, before any work."""
        from attn_export import trt

        plugins = self.lowering == "plugin"  # the attention lowering runs on stock TensorRT, no plugin library
        if self.engine:
            trt.require_engine_tools() if plugins else trt.require_attention_tensorrt()
            return True
        return self.engine is None and trt.engine_available(plugins)

    def step_titles(self, source: str = "") -> dict[str, str]:
        """The title of every step an export of ``source`` runs, keyed by role, in order (load comes first)."""
        titles = {}
        paro = self.paro_for(source)
        if paro:
            plan = self.paro_settings(source).plan_file
            titles["paro"] = f"load the PARO plan {Path(plan).name}" if plan else "plan PARO attention"
        titles["export"] = "export to ONNX"
        mode = self.quant.mode if self.quant else None
        if mode:
            titles["quantize"] = f"calibrate and quantize ({mode})"
        if self.engine:
            titles["engine"] = "build TensorRT engine"
        if self.check:
            titles["check"] = "check parity: PyTorch vs ONNX Runtime" + (" vs TensorRT" if self.engine and not mode
                                                                         else "")
            if paro:
                titles["check_paro"] = "check PARO quality: PyTorch dense vs ONNX Runtime"
            if mode:
                titles["check_quantized"] = f"check {mode} parity: PyTorch fp32 vs quantized"
        return titles

    def step_count(self, source: str = "") -> int:
        """Steps of an export of ``source``, loading included (for numbered progress)."""
        return 1 + len(self.prepare().step_titles(source))


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


def quantized_name(mode: str) -> str:
    return f"model.{mode}.onnx"


def export_job(loaded: LoadedModel, outdir: str | os.PathLike, opts: ExportOptions, step=None) -> ExportResult:
    """Write OUTDIR/model.onnx and (unless opts.check is False) OUTDIR/report.json atomically, with the
    quantized file, the engine, the JUnit and summary files and the Triton entry when asked for.

    ``step(title)`` returns a context manager that reports progress of one step (default: silent); the
    titles are ``opts.step_titles()``.
    """
    from attn_export import precision, shapes
    from attn_export.onnx_export import export

    opts.prepare()
    step = step or _silent_step
    titles = opts.step_titles(loaded.source)
    paro = opts.paro_settings(loaded.source)
    dtype = opts.dtype
    outdir = Path(outdir)
    build_engine = opts.engine
    _check_dynamic_spatial(loaded, opts.dynamic_spatial)
    _check_precision(loaded, dtype, paro)
    triton_name = _triton_name(loaded, opts)
    if opts.shape_profiles:  # names, ranks and static dims as the file will have them, before any work
        shapes.check_against_model(opts.shape_profiles, _expected_inputs(loaded, opts), loaded.source, loaded.spatial)
    # Read user inputs and the first calibration sample before any work, so that a bad file fails fast.
    user_feed = read_inputs(opts.inputs_npz, loaded) if opts.check and opts.inputs_npz else None
    held = held_out_samples(loaded, opts, bool(paro)) if opts.check and user_feed is None and (opts.quant or paro) \
        else None
    calib = _calibration_data(loaded, opts, skip=held.rows if held else 0) if opts.quant else None
    quant_name = quantized_name(opts.quant.mode) if opts.quant else None
    owned = (ONNX_NAME, REPORT_NAME, ENGINE_NAME, ENGINE_META_NAME, quantized_name("int8"), quantized_name("int4"),
             CALIB_CACHE_NAME, PARO_PLAN_NAME, PARO_ARRAYS_NAME, REFERENCE_NAME)
    warnings: list[str] = []
    original, paro_job = loaded, None
    extras = Extras()
    with staged_output(outdir, owned=owned, extras=extras) as stage:
        loaded, call_records = _convert_calls(loaded, opts.seed)
        if paro:
            with step(titles["paro"]):
                paro_job = _paro_job(loaded, opts, paro, stage, held)
                if paro_job.planned and paro_job.plan.source == RANDOM_DESCRIPTION:
                    warnings.append(PARO_RANDOM_PLAN)
                loaded = paro_job.loaded  # the model to export: its SDPA calls run as paro_attention
        with step(titles["export"]):
            spatial = opts.dynamic_spatial is not False  # declared spatial dims are dynamic unless refused
            dynamic = loaded.dynamic_shapes(opts.dynamic_batch, spatial) if loaded.dynamic_shapes else None
            examples = loaded.random_inputs(opts.seed)
            model = loaded.program if loaded.program is not None else loaded.module
            output_names = _output_names(loaded, examples)
            proto = export(precision.cast_module(model, dtype), precision.cast_tensors(examples, dtype),
                           stage / ONNX_NAME, dynamic_shapes=None if loaded.program else dynamic, opset=opts.opset,
                           input_names=loaded.input_names, output_names=output_names, lowering=opts.lowering)
            if dtype != "fp32":
                precision.mark(proto, dtype)
                save_atomically(proto, stage / ONNX_NAME)
        onnx_inputs, _ = onnx_io(stage / ONNX_NAME)
        if opts.shape_profiles:  # what the file declares dynamic is the last word
            shapes.check_against_model(opts.shape_profiles, onnx_inputs, ONNX_NAME)
        inputs = (check_inputs(loaded, stage / ONNX_NAME, opts, user_feed, held, paro.buckets if paro else 1)
                  if opts.check or build_engine else None)
        if inputs:
            inputs.feeds = precision.cast_feeds(inputs.feeds, dtype)
        if paro and paro.buckets > 1:
            from attn_export.paro_export import add_buckets, mark_buckets

            mark_buckets(proto, stage / ONNX_NAME, paro.buckets)
            if inputs:
                inputs.feeds = add_buckets(inputs.feeds, paro.buckets)
        feeds, source = (inputs.feeds, inputs.description) if inputs else ([], "")
        quant = None
        if opts.quant:
            with step(titles["quantize"]):
                from attn_export import quantize_step

                skip = held.rows if held else 0
                quant = quantize_step.run(proto, calib, lambda: _calibration_data(loaded, opts, skip),
                                          stage / quant_name, opts, inputs, stage / CALIB_CACHE_NAME)
                if calib.warning:
                    warnings.append(calib.warning)
        final = stage / (quant_name or ONNX_NAME)  # the engine is built from what ships
        seen = [{i.name: i.shape for i in loaded.inputs}, *({n: a.shape for n, a in f.items()} for f in feeds)]
        profiles = shapes.engine_profiles(onnx_inputs, opts.shape_profiles, seen, opts.max_batch) \
            if build_engine or opts.shape_profiles else []
        engine = None
        if build_engine:
            with step(titles["engine"]):
                from attn_export import trt

                if opts.check:  # the engine's runner uses its first profile
                    shapes.check_covers(profiles[0], [{n: a.shape for n, a in f.items()} for f in feeds])
                trt.build_engine(final, stage / ENGINE_NAME, profiles, opts.timing_cache,
                                 meta_path=stage / ENGINE_META_NAME, precision=dtype)
                engine = stage / ENGINE_NAME
        elif opts.shape_profiles:
            warnings.append("no TensorRT engine was built here (no TensorRT or plugin library): --shapes / --profile "
                            "were checked against model.onnx and shape the Triton entry only")
        report = quant_report = paro_report = None
        if opts.check:
            reference = parity_reference(loaded, feeds[0]) if not paro else _paro_reference(loaded)
            refusal = precision.onnxruntime_refusal(stage / ONNX_NAME) if dtype != "fp32" else None
            if refusal and engine is None:
                raise precision.unrunnable_error(ONNX_NAME, dtype, refusal)
            with step(titles["check"]):
                from attn_export.parity import check_parity

                tolerances = paro_tolerances(paro, opts.tolerances) if paro else opts.tolerances
                report = check_parity(reference, stage / ONNX_NAME, feeds, tolerances, opts.command, source,
                                      engine_path=None if quant else engine, precision=dtype,
                                      skip_onnxruntime=refusal)
            warnings += report.warnings
            warnings += [f"{s['runner']} was not compared: {s['reason']}" for s in report.skipped]
            extra = {"check_inputs": inputs.to_dict()}
            if paro:
                with step(titles["check_paro"]):
                    paro_report = _check_paro(original, paro, stage / ONNX_NAME, inputs, opts)
                warnings += paro_report.warnings
                extra["paro"] = {"onnx": ONNX_NAME, "plan": PARO_PLAN_NAME, "settings": paro.to_dict(),
                                 "float": _float_paro_note(opts),
                                 "planned": paro_job.planned, "calls": paro_job.plan.summary()["calls"],
                                 "skipped_calls": paro_job.plan.summary()["skipped_calls"],
                                 "parity": paro_report.to_dict()}
            if quant and paro:
                reference = _paro_dense_reference(original, paro)  # the quantized file against the dense model
            if quant:
                with step(titles["check_quantized"]):
                    from attn_export.controls import first_quantized_input_zeroed
                    from attn_export.quality import check_quantized

                    quant_report = check_quantized(reference, stage / quant_name, inputs, opts.quant.mode,
                                                   opts.quant_thresholds, engine_path=engine,
                                                   control=first_quantized_input_zeroed(stage / quant_name),
                                                   shuffle_control=True, allow_inconclusive=opts.allow_inconclusive)
                warnings += [w for w in quant_report.warnings if w not in warnings]
                extra["quantization"] = {
                    "onnx": quant_name, "mode": opts.quant.mode, "method": opts.quant.method,
                    "calibration_data": calib.description, "warning": calib.warning,
                    "parity": quant_report.to_dict(), **quant.summary()}
            gate_reference = _paro_dense_reference(original, paro) if paro else reference
            _save_reference(stage / REFERENCE_NAME, gate_reference, stage / ONNX_NAME, inputs, loaded.source)
            extra["reference_outputs"] = REFERENCE_NAME
            summary = {**export_summary(proto), "lowering": opts.lowering, "precision": dtype,
                       "converted_modules": loaded.conversions,
                       "converted_calls": [r.describe() for r in call_records]}
            _write_report(stage / REPORT_NAME, report, loaded, onnx=ONNX_NAME, export=summary,
                          engine=ENGINE_NAME if engine else None,
                          status=_quality_status(quant_report, paro_report), **extra)
            _write_check_files(extras, opts, loaded.source, str(outdir / ONNX_NAME), report, quant_report,
                               paro_report, warnings)
        triton_command = None
        if opts.triton_repo:
            triton_command = _write_triton(extras, opts, triton_name, final, engine, profiles)
    triton_path = Path(opts.triton_repo) / triton_name if opts.triton_repo else None
    return ExportResult(outdir / ONNX_NAME, outdir / REPORT_NAME if report else None, report,
                        outdir / ENGINE_NAME if engine else None, outdir / quant_name if quant_name else None,
                        quant_report, warnings, paro_report, outdir / PARO_PLAN_NAME if paro_job else None,
                        paro_job.plan if paro_job else None, [r.describe() for r in call_records],
                        Path(opts.junit) if opts.junit else None, Path(opts.summary) if opts.summary else None,
                        triton_path, triton_command, quant_notes=quant.table() if quant else "")


def _save_reference(path: Path, reference, onnx_path: Path, inputs, model: str) -> None:
    """OUTDIR/reference.npz: the check inputs and the gate's reference outputs on them (reference.py)."""
    from attn_export import reference as saved

    names, outputs = onnx_io(onnx_path)
    values = saved.reference_outputs(reference.model, inputs.feeds, list(names), outputs)
    saved.save(path, inputs.feeds, values, reference.to_dict(), inputs.to_dict(), model)


def _convert_calls(loaded: LoadedModel, seed: int):
    """The model with its NATTEN functional and FlexAttention calls converted to our ops (analysed in one
    eager pass); the model as written stays the parity reference. Unchanged when it makes no such call."""
    from attn_export.call_convert import CallConverter, ConversionRefused, Converted
    from attn_export.inputs import name_forward_inputs

    if loaded.program is not None:
        return loaded, []
    converter = CallConverter()
    try:
        records = converter.analyse(loaded.module, loaded.random_inputs(seed))
        if records:
            converter.confirm(loaded.module, loaded.random_inputs(seed + 1))
    except ConversionRefused:
        raise
    except Exception:  # noqa: BLE001 - the model rejects these inputs: the export step names the failure
        return loaded, []
    if not records:
        return loaded, []
    module = name_forward_inputs(Converted(loaded.module, converter).train(loaded.module.training),
                                 loaded.input_names)
    return dataclasses.replace(loaded, module=module, original=loaded.original or loaded.module), records


def _check_precision(loaded: LoadedModel, dtype: str, paro) -> None:
    """--dtype fp16 / bf16 casts an nn.Module; a .pt2 program is exported as saved, and PARO quantizes itself."""
    if dtype == "fp32":
        return
    if loaded.program is not None:
        raise AttnExportError(f"--dtype {dtype}: {loaded.source} is a torch.export archive, exported as saved; "
                              f"export the module in {dtype} and save that, or drop --dtype")
    if paro:
        raise AttnExportError(f"--dtype {dtype} does not apply to PARO exports ({loaded.source} exports with PARO): "
                              "pass --no-paro, or drop --dtype")


def _expected_inputs(loaded: LoadedModel, opts: ExportOptions) -> dict[str, list]:
    """Each input's dims as the ONNX file will declare them (a name where dynamic), predicted before the export;
    a .pt2 keeps dynamic shapes we cannot read ahead, so there only names and ranks are known."""
    if loaded.program is not None:
        return {i.name: ["?"] * len(i.shape) for i in loaded.inputs}
    return {info.name: list(info.shape) for info in model_input_infos(loaded, opts)}


def _triton_name(loaded: LoadedModel, opts: ExportOptions) -> str | None:
    from attn_export import triton

    if not opts.triton_repo:
        return None
    name = triton.model_name(loaded.source, opts.triton_name)
    triton.check_repository_path(opts.triton_repo, name)
    return name


def _write_triton(extras, opts: ExportOptions, name: str, final: Path, engine: Path | None, profiles) -> str:
    """Stage DIR/NAME (the engine and the plugin library, or the ONNX file) for the commit; returns serve.sh's line."""
    from attn_export import native, triton

    kind = "engine" if engine else "onnx"
    entry = triton.entry_for(final, name, kind, profiles, opts.max_batch)
    folder = extras.path(Path(opts.triton_repo) / name, folder=True)
    plugins = opts.lowering == "plugin"  # an attention-lowered engine runs without our library
    return triton.write_entry(folder, entry, engine or final, native.plugin_library() if engine and plugins else None,
                              needs_plugins=plugins)


def _write_check_files(extras, opts: ExportOptions, model: str, onnx: str, report, quant_report=None,
                       paro_report=None, warnings=()) -> None:
    """Stage the JUnit and Markdown files of a check (committed with the report, or discarded with it)."""
    from attn_export import ci

    if opts.junit:
        properties = {"model": model, "onnx_file": onnx}
        if report is not None:
            properties.update(precision=report.precision, tolerances=report.tolerances,
                              **{f"version.{k}": v for k, v in report.versions.items()})
        extras.path(opts.junit).write_text(ci.junit_xml(ci.report_cases(report, quant_report, paro_report),
                                                        properties=properties))
    if opts.summary:
        extras.path(opts.summary).write_text(ci.summary_markdown(
            model, onnx, report, quant_report, paro_report, warnings,
            report.versions if report is not None else None))


def _paro_job(loaded: LoadedModel, opts: ExportOptions, paro, stage: Path, held=None):
    """Plan (or load the plan of) the model's SDPA calls, measure the held-out quality per head, save the plan."""
    import itertools

    from attn_export import paro_export
    from attn_export.check_inputs import skip_held_out

    if paro.plan_file:
        feeds, description = (), f"plan file {paro.plan_file}"
    else:
        source = calibration_source(loaded, opts)
        feeds = itertools.islice(skip_held_out(source.feeds, held.rows if held else 0), opts.calib_samples)
        description = source.description
    job = paro_export.prepare(loaded, paro, feeds, description)
    if opts.check:
        paro_export.held_out_quality(loaded, job.plan, paro, opts.seed, held.feeds if held else None)
    job.plan.save(stage / PARO_PLAN_NAME)
    return job


def _float_paro_note(opts: ExportOptions) -> str | None:
    if opts.lowering != "attention":
        return None
    return ("--lowering attention writes float PARO (qk and pv unquantized): ONNX's Attention operator has no form of "
            "PARO's QK/PV quantization emulation; export with --lowering plugin for it")


def _paro_reference(exported: LoadedModel):
    from attn_export.parity import Reference

    return Reference(exported.module, "pytorch-paro", "the model with its SDPA calls run as paro_attention (the "
                     "exported computation), on the CPU")


def _paro_dense_reference(original: LoadedModel, paro):
    from attn_export.parity import Reference
    from attn_export.paro_export import DropBucket

    model = DropBucket(original.module).eval() if paro.buckets > 1 else original.module
    return Reference(model, "pytorch-dense", "the model as written (dense attention), on the CPU")


# Fake quantization rounds at half steps: runtimes whose sums differ in the last bit round a rare element one
# step apart (one P step moves an output by up to |v| / qmax). The elementwise check of a quantized PARO
# export therefore tolerates that much (atol or rtol), never less than asked for.
PARO_TOLERANCE_FLOOR = {16: 0.0, 8: 2e-3, 4: 2e-2}


def paro_tolerances(paro, tolerances: Tolerances) -> Tolerances:
    floor = PARO_TOLERANCE_FLOOR[min(paro.qk_bits, paro.pv_bits)]
    return Tolerances(max(tolerances.atol, floor), max(tolerances.rtol, floor),
                      {n: max(t, floor) for n, t in tolerances.per_output_atol.items()},
                      {n: max(t, floor) for n, t in tolerances.per_output_rtol.items()})


def paro_thresholds(paro, opts: ExportOptions):
    """PARO quality thresholds: those of the coarser precision (fp16 PARO, sparse only: int8's)."""
    return opts.thresholds("int4" if min(paro.qk_bits, paro.pv_bits) == 4 else "int8")


def _check_paro(original: LoadedModel, paro, onnx_path: Path, inputs, opts: ExportOptions):
    """The PARO file against the dense model it replaces, by the quantization-aware criterion, with the attention
    outputs zeroed as its null control."""
    from attn_export.controls import attention_zeroed
    from attn_export.quality import check_quantized

    return check_quantized(_paro_dense_reference(original, paro), onnx_path, inputs, paro.mode,
                           paro_thresholds(paro, opts), fused_row=False, control=attention_zeroed(onnx_path),
                           allow_inconclusive=opts.allow_inconclusive)


@contextlib.contextmanager
def _silent_step(title: str):
    yield


def paro_in(onnx_path: Path) -> dict | None:
    """For a file with ParoAttention nodes: its criterion name ("paro-int8", by the coarsest bits of its
    nodes) and its timestep buckets (model metadata, 1 without); None for other files."""
    import onnx

    from attn_export.paro_export import BIT_NAMES, BUCKETS_METADATA
    from attn_export.registry import PARO

    model = onnx.load(str(onnx_path), load_external_data=False)
    nodes = [n for n in model.graph.node if n.domain == DOMAIN and n.op_type == PARO.onnx_op_type]
    if not nodes:
        return None
    bits = min(onnx.helper.get_attribute_value(a) for n in nodes for a in n.attribute if a.name in ("qk_bits",
                                                                                                 "pv_bits"))
    buckets = next((int(p.value) for p in model.metadata_props if p.key == BUCKETS_METADATA), 1)
    return {"mode": f"paro-{BIT_NAMES[bits]}", "buckets": buckets}


def quantized_mode(onnx_path: Path) -> str | None:
    """"int4" / "int8" for a file with DequantizeLinear nodes (by its narrowest quantized initializer)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    if not any(n.op_type == "DequantizeLinear" for n in model.graph.node):
        return None
    int4 = {onnx.TensorProto.INT4, onnx.TensorProto.UINT4}
    return "int4" if any(i.data_type in int4 for i in model.graph.initializer) else "int8"


def _check_dynamic_spatial(loaded: LoadedModel, dynamic_spatial: bool | None) -> None:
    """An explicit --dynamic-spatial / --static-spatial must be one this model source can honour."""
    if loaded.program is not None and dynamic_spatial is not None:
        raise AttnExportError(f"--{'dynamic' if dynamic_spatial else 'static'}-spatial: {loaded.source} is a "
                              "torch.export archive, exported with the dynamic shapes it was saved with; drop the flag")
    if dynamic_spatial and not loaded.spatial:
        raise AttnExportError(f"--dynamic-spatial: {loaded.source} declares no dynamic spatial dims (zoo models do); "
                              "drop the flag, or save a .pt2 with torch.export and your own dynamic_shapes")


def model_input_infos(loaded: LoadedModel, opts: ExportOptions):
    """The inputs the exported ONNX file will take, before it exists: dtypes, and the export shapes with the
    batch and declared spatial dims symbolic where they will be dynamic."""
    from attn_export.calib.data import InputInfo

    infos = []
    for spec in loaded.inputs:
        dims: list = list(spec.shape)
        if opts.dynamic_batch and loaded.program is None:
            dims[0] = "batch"
        if opts.dynamic_spatial is not False:
            for axis, dim in loaded.spatial.get(spec.name, {}).items():
                dims[axis] = dim.name
        infos.append(InputInfo(spec.name, dims, np.dtype(str(spec.dtype).replace("torch.", ""))))
    return infos


def calibration_source(loaded: LoadedModel, opts: ExportOptions, infos=None):
    """Where INT8 calibration samples come from: --calib-data, else the zoo model's own data, else seeded
    random inputs (with the loud warning for a user's model). ``infos`` describe the model's inputs."""
    from attn_export.calib import data as calib_data
    from attn_export.models import zoo

    if opts.calib_data:
        infos = infos if infos is not None else model_input_infos(loaded, opts)
        return calib_data.from_spec(opts.calib_data, infos, opts.calib_preprocess)
    if loaded.source.startswith("zoo:") and zoo.entry(loaded.source[4:]).calib_data is not None:
        return calib_data.CalibSource(zoo.entry(loaded.source[4:]).calib_data(), f"{loaded.source} calibration data")
    return calib_data.random_source(lambda seed: loaded.random_inputs(opts.seed + 1000 + seed),
                                    loaded.input_names, warn=not loaded.source.startswith("zoo:"))


def _calibration_data(loaded: LoadedModel, opts: ExportOptions, skip: int = 0):
    """The calibration source of this run without its first ``skip`` feeds (held out for the check), its first
    sample already checked against the model's inputs: none for a calibration cache or INT4 (weight-only; a given
    --calib-data is still read, so a bad file is reported)."""
    from attn_export.calib import data as calib_data
    from attn_export.check_inputs import skip_held_out

    if opts.calib_cache:
        return calib_data.CalibSource((), f"calibration cache {opts.calib_cache}")
    if opts.quant.mode != "int8" and not opts.calib_data:
        return calib_data.CalibSource((), "none (INT4 is weight-only)")
    infos = model_input_infos(loaded, opts)
    source = calibration_source(loaded, opts, infos)
    if opts.quant.mode != "int8":  # nothing is calibrated: the data only feeds the check
        return calib_data.checked_source(source, infos)
    rest = dataclasses.replace(source, feeds=skip_held_out(source.feeds, skip),
                               description=source.description + (f", after the {skip} sample(s) held out for the "
                                                                 "check" if skip else ""),
                               count=None if source.count is None else source.count - skip)
    return calib_data.checked_source(rest, infos)


RANDOM_DESCRIPTION = "seeded random inputs"
PARO_RANDOM_PLAN = ("PARO was planned on seeded RANDOM inputs: the orders and masks fit random activations, not "
                    "the model's real ones; pass --calib-data with real samples (or --paro-plan with a plan made "
                    "on them)")


def held_out_samples(loaded: LoadedModel, opts: ExportOptions, planned: bool = False):
    """Real samples for the quality checks, held out of the calibration data (its first samples, never calibrated
    or planned on; at most a quarter of it): a HeldOut with no feeds when the calibration data is random, or
    none is held out. ``planned``: PARO plans on the data (so INT4, which calibrates nothing, still leaves some)."""
    from attn_export.calib.data import check_feed
    from attn_export.check_inputs import HeldOut, count_rows, hold_out_count, split_held_out

    if opts.check_samples == 0:
        return HeldOut([], "", "--check-samples 0 held no real sample out")
    infos = model_input_infos(loaded, opts)
    source = calibration_source(loaded, opts, infos)
    if not source.real:
        return HeldOut([], "")
    total = source.count
    if opts.quant and opts.quant.mode == "int4" and not planned:
        total = None  # weight-only: nothing is calibrated, the check may have all of it
    elif total is None:  # a stream of unknown length: count it, up to what decides the split
        total = count_rows(calibration_source(loaded, opts, infos).feeds, 4 * opts.check_samples)
    count = hold_out_count(total, opts.check_samples)
    if count == 0:
        return HeldOut([], source.description, f"{source.description} has {total} sample(s), too few to hold a "
                                                 "quarter out")
    held, _ = split_held_out(source.feeds, count)
    by_name = {i.name: i for i in infos}
    held = [check_feed(feed, by_name, index) for index, feed in enumerate(held)]  # as calibration checks its own
    return HeldOut(held, source.description)


def check_job(loaded: LoadedModel, onnx_path: str | os.PathLike, report_path: str | os.PathLike | None,
              opts: ExportOptions, step=None, engine_path: str | os.PathLike | None = None):
    """Compare an existing ONNX file (and optionally a TensorRT engine built from it) with the PyTorch
    model; optionally write the JSON report (and opts.junit / opts.summary, all or none of them). A Q/DQ file
    is judged by the quantized criterion; an fp16 / bf16 file by its precision's tolerances."""
    from attn_export import controls, precision
    from attn_export.parity import check_parity
    from attn_export.quality import check_quantized

    step = step or _silent_step
    onnx_path = _checked_files(onnx_path, report_path, opts, engine_path)
    dtype = precision.onnx_precision(onnx_path)
    user_feed = read_inputs(opts.inputs_npz, loaded) if opts.inputs_npz else None
    mode = qdq_mode = quantized_mode(onnx_path)
    paro = paro_in(onnx_path)
    held = held_out_samples(loaded, opts) if user_feed is None and (mode or paro) else None
    inputs = check_inputs(loaded, onnx_path, opts, user_feed, held, paro["buckets"] if paro else 1)
    feeds = inputs.feeds = precision.cast_feeds(inputs.feeds, dtype)
    source = inputs.description
    if paro:  # a PARO file approximates the dense model: its buckets come from the timestep, as at run time
        from attn_export.paro_export import DropBucket, add_buckets

        feeds = inputs.feeds = add_buckets(feeds, paro["buckets"]) if paro["buckets"] > 1 else feeds
        if paro["buckets"] > 1:
            loaded = dataclasses.replace(loaded, module=DropBucket(loaded.module).eval())
        mode = mode or paro["mode"]
    reference = parity_reference(loaded, feeds[0])
    if mode:  # Q/DQ or PARO: the quantization-aware criterion, not elementwise tolerances
        control = controls.first_quantized_input_zeroed(onnx_path) if qdq_mode else controls.attention_zeroed(onnx_path)
        with step(f"check {mode} parity: PyTorch fp32 vs quantized ONNX" + (" and TensorRT" if engine_path else "")):
            report = check_quantized(reference, onnx_path, inputs, mode, opts.thresholds(mode),
                                     engine_path=engine_path, fused_row=qdq_mode is not None, control=control,
                                     shuffle_control=qdq_mode is not None, allow_inconclusive=opts.allow_inconclusive)
    else:
        refusal = precision.onnxruntime_refusal(onnx_path) if dtype != "fp32" else None
        if refusal and engine_path is None:
            raise precision.unrunnable_error(onnx_path.name, dtype, refusal, export=False)
        with step("check parity: PyTorch vs ONNX Runtime" + (" vs TensorRT" if engine_path else "")):
            report = check_parity(reference, onnx_path, feeds, precision.tolerances(dtype, opts.tolerances),
                                  opts.command, source, engine_path=engine_path, precision=dtype,
                                  skip_onnxruntime=refusal)
    _write_check_outputs(report, report_path, opts, loaded.source, onnx_path, bool(paro), inputs.to_dict())
    return report


def _write_check_outputs(report, report_path, opts: ExportOptions, model: str, onnx_path: Path, paro: bool,
                         inputs: dict) -> None:
    """The report, JUnit and summary files a check was asked for (all or none of them)."""
    if report_path or opts.junit or opts.summary:
        with staged_extras() as extras:
            if report_path:
                _write_report(extras.path(report_path), report, model, check_inputs=inputs)
            quant = isinstance(report, QuantParityReport)
            _write_check_files(extras, opts, model, str(onnx_path), None if quant else report,
                               report if quant and not paro else None, report if quant and paro else None,
                               report.warnings)


def _checked_files(onnx_path, report_path, opts: ExportOptions, engine_path) -> Path:
    """What every check needs before it runs: writable report paths, a valid ONNX file, an engine with TensorRT."""
    opts.prepare_check(report_path)
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise AttnExportError(f"ONNX file {onnx_path} does not exist; export one first with `attn-export MODEL -o DIR`")
    _validate_onnx(onnx_path)
    if engine_path is not None:
        require_engine_file(engine_path)
    return onnx_path


def check_reference_job(reference_path: str | os.PathLike, onnx_path: str | os.PathLike,
                        report_path: str | os.PathLike | None, opts: ExportOptions, step=None,
                        engine_path: str | os.PathLike | None = None):
    """Check an ONNX file (and an engine) against the reference outputs an export saved, without the model."""
    from attn_export import reference

    step = step or _silent_step
    onnx_path = _checked_files(onnx_path, report_path, opts, engine_path)
    saved = reference.load(reference_path)
    report = reference.check_against(saved, reference_path, onnx_path, opts, step, engine_path)
    _write_check_outputs(report, report_path, opts, saved.meta.get("model", str(reference_path)), onnx_path,
                         paro_in(onnx_path) is not None, saved.meta.get("check_inputs", {}))
    return report


def require_engine_file(path: str | os.PathLike) -> None:
    """A check of an engine needs TensorRT, the plugin library (unless its engine.json lists no plugin layers:
    the attention lowering) and the file (exit 3 / 2 naming the missing one)."""
    from attn_export import trt

    trt.require_engine_tools() if trt.engine_needs_plugins(path) else trt.require_tensorrt()
    if not Path(path).is_file():
        raise AttnExportError(f"--engine {path} does not exist; build one with `attn-export MODEL --engine`")


CHECK_STEPS = 2  # load, check


def parity_reference(loaded: LoadedModel, feed: dict):
    """The reference of the parity check: the model as the user wrote it, when third-party modules were
    converted and the original runs here (so a wrong conversion fails the check); else the loaded model."""
    import torch

    from attn_export.parity import Reference

    if loaded.original is None:
        return Reference(loaded.module)
    args = [torch.from_numpy(np.ascontiguousarray(feed[name])) for name in loaded.input_names]
    try:
        from attn_export.call_convert import quiet_third_party

        with torch.inference_mode(), quiet_third_party():
            loaded.original(*args)
    except Exception as exc:  # noqa: BLE001 - e.g. a third-party kernel that needs a GPU
        brief = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        return Reference(loaded.module, "pytorch-converted",
                         f"the converted model on the CPU: the original cannot run here ({brief})")
    return Reference(loaded.original, "pytorch-original",
                     "the model as written (its third-party attention modules and calls unconverted), on the CPU")


def _write_report(path: Path, report: ParityReport, loaded: LoadedModel | str, status: str | None = None,
                  **extra) -> None:
    """report.json; ``status`` overrides the parity report's where a quality check failed or was inconclusive."""
    data = {**report.to_dict(), "model": loaded if isinstance(loaded, str) else loaded.source, **extra}
    if status and data["status"] == "pass":
        data["status"] = status
    path.write_text(json.dumps(data, indent=2) + "\n")


def _quality_status(*reports) -> str | None:
    """"fail" if a quality check failed, else "inconclusive" if one could not tell the file from a broken one."""
    statuses = {r.status for r in reports if r is not None}
    return "fail" if "fail" in statuses else "inconclusive" if "inconclusive" in statuses else None


def check_feeds(loaded: LoadedModel, onnx_path: Path, seed: int, user_feed: dict | None = None,
                user_source: str | None = None) -> tuple[list[dict], str]:
    """The user's inputs; or seeded random inputs at the export shapes, plus one more batch size where
    the ONNX batch is dynamic and one more spatial size where the model declares dynamic spatial dims
    that the ONNX file kept dynamic, so the check exercises the dynamism the file claims."""
    if user_feed is not None:
        return [user_feed], str(user_source)
    from attn_export.paro_export import BUCKET_INPUT

    base = {i.name: i.shape for i in loaded.inputs}
    dynamic = _dynamic_axes(onnx_path)
    batched = {name: axes for name, axes in dynamic.items() if name != BUCKET_INPUT}  # the bucket has no batch
    variants = [base]
    if batched and all(0 in axes for axes in batched.values()):
        variants.append({name: (shape[0] + 1, *shape[1:]) if name in batched else shape
                         for name, shape in base.items()})
    grown = loaded.grown_spatial_shapes(dynamic)
    if grown != base:
        variants.append(grown)
    feeds = [dict(zip(loaded.input_names, (t.numpy() for t in loaded.random_inputs(seed + i, shapes))))
             for i, shapes in enumerate(variants)]
    return feeds, f"random, seeds {seed} to {seed + len(feeds) - 1}"


def check_inputs(loaded: LoadedModel, onnx_path: Path, opts: ExportOptions, user_feed: dict | None = None,
                 held=None, buckets: int = 1):
    """The check's inputs (check_inputs.CheckInputs): the user's; else held-out real samples at the export shape
    (in batches the file and the engine profile accept; one sample per batch with PARO timestep buckets, whose
    layout is chosen per batch) plus random inputs at the extra shapes that prove its dynamic axes; else random."""
    from attn_export.check_inputs import combine

    feeds, source = check_feeds(loaded, onnx_path, opts.seed, user_feed, opts.inputs_npz)
    from attn_export.paro_export import BUCKET_INPUT

    dynamic = {n: axes for n, axes in _dynamic_axes(onnx_path).items() if n != BUCKET_INPUT}
    batch_dynamic = bool(dynamic) and all(0 in axes for axes in dynamic.values())
    static_batch = None if batch_dynamic else int(feeds[0][loaded.input_names[0]].shape[0])
    cap = 1 if buckets > 1 else min(defaults.CHECK_BATCH, opts.max_batch, *_profile_batches(opts, loaded))
    why = held.why_none if held and not held.feeds else ""
    return combine(feeds, source, user=user_feed is not None, held=held.feeds if held else None,
                   held_description=held.description if held else "", static_batch=static_batch, cap=cap,
                   why_random=why)


def _profile_batches(opts: ExportOptions, loaded: LoadedModel) -> list[int]:
    """The largest batch the engine's first profile (--shapes) takes, if it names an input."""
    profile = opts.shape_profiles[0] if opts.shape_profiles else {}
    return [profile[n].max[0] for n in loaded.input_names if n in profile and profile[n].max]


def _dynamic_axes(onnx_path: Path) -> dict[str, set[int]]:
    """The axes of each graph input that the ONNX file leaves symbolic."""
    inputs, _ = onnx_io(onnx_path)
    return {name: {axis for axis, d in enumerate(dims) if not isinstance(d, int)} for name, dims in inputs.items()}


def read_inputs(path: str, loaded: LoadedModel) -> dict:
    try:
        with np.load(path, allow_pickle=False) as data:
            feed = {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise AttnExportError(f"--inputs file {path} does not exist") from None
    except Exception as exc:  # corrupt or non-npz files raise many types
        raise AttnExportError(f"cannot read --inputs {path} as a .npz of arrays ({type(exc).__name__}); "
                              "write it with numpy.savez(path, NAME=array, ...)") from exc
    if set(feed) != set(loaded.input_names):
        raise AttnExportError(f"--inputs {path} holds {sorted(feed)}; the model's inputs are {loaded.input_names}")
    for info in loaded.inputs:
        array = feed[info.name]
        want = str(info.dtype).replace("torch.", "")
        if array.dtype.name != want:
            raise AttnExportError(f"--inputs {path}: '{info.name}' is {array.dtype.name}; the model takes {want}")
        if info.shape and array.ndim != len(info.shape):
            raise AttnExportError(f"--inputs {path}: '{info.name}' has {array.ndim} dims; the model takes "
                                  f"{len(info.shape)}")
    return feed


def _output_names(loaded: LoadedModel, examples) -> list[str]:
    """Names for the ONNX outputs, from one eager run (which also shows that the inputs fit; an
    attention layer that rejects them is named in the error)."""
    import torch

    # The modules being run, outermost first: when an attention op rejects its inputs, the innermost
    # one still running is the layer that called it (whatever class the user's layer is).
    running: list[str] = []

    def leave(*_) -> None:  # a forward hook that returned a value would replace the module's output
        running.pop()

    hooks = []
    for name, module in loaded.module.named_modules():
        if name:
            hooks.append(module.register_forward_pre_hook(lambda *_, name=name: running.append(name)))
            hooks.append(module.register_forward_hook(leave))
    try:
        with torch.inference_mode():
            count = len(torch.utils._pytree.tree_leaves(loaded.module(*examples)))
    except AttnExportError as exc:
        raise AttnExportError(f"layer '{running[-1]}': {exc}" if running else str(exc)) from exc
    except Exception as exc:  # the model rejects inputs of these shapes
        shapes = ", ".join(f"{i.name}={'x'.join(map(str, i.shape))}" for i in loaded.inputs)
        raise wrap_failure(exc, f"running the model on inputs {shapes}",
                           "pass --input-shape with shapes it accepts") from exc
    finally:
        for hook in hooks:
            hook.remove()
    return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]


def export_summary(proto) -> dict:
    from attn_export.onnx_utils import opset_of

    custom = Counter(n.op_type for n in proto.graph.node if n.domain == DOMAIN)
    return {
        "opset": opset_of(proto),
        "custom_nodes": dict(custom),
        "local_functions": sorted(f"{f.domain}::{f.name}" + (f"[{f.overload}]" if f.overload else "")
                                  for f in proto.functions),
        "inputs": {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
                   for i in proto.graph.input},
    }


def _validate_onnx(path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise AttnExportError(f"{path} is not a valid ONNX model ({detail})") from exc


# ---------------------------------------------------------------------------------------------
# The Python API: what `attn-export MODEL` and `attn-export check` do, without the CLI.


def run(model, outdir: str | os.PathLike = "out", *, factory: str | None = None, trust_pickle: bool = False,
        input_shapes: Mapping[str, Sequence[int]] | None = None, example_inputs=None, progress=None,
        **options) -> ExportResult:
    """Export ``model`` ("zoo:NAME", a file, or an nn.Module) to ``outdir`` as `attn-export MODEL` does.

    ``options`` are ExportOptions fields (``quantize="int8"``, ``opset=21``, ``engine=False``, ...). Raises
    AttnExportError (its ``exit_code`` says what kind) for bad input; check ``result.passed``.
    """
    from attn_export.loader import load_model

    opts = ExportOptions(**options).prepare()
    loaded = load_model(model, factory, trust_pickle, _shapes(input_shapes), example_inputs)
    return export_job(loaded, outdir, opts, progress)


def check(model, onnx_path: str | os.PathLike, report: str | os.PathLike | None = None, *,
          engine: str | os.PathLike | None = None, factory: str | None = None, trust_pickle: bool = False,
          input_shapes: Mapping[str, Sequence[int]] | None = None, example_inputs=None, progress=None, **options):
    """Compare ``model`` with an exported ONNX file (and engine) as `attn-export check` does; returns the report."""
    from attn_export.loader import load_model

    opts = ExportOptions(**options)
    loaded = load_model(model, factory, trust_pickle, _shapes(input_shapes), example_inputs)
    return check_job(loaded, onnx_path, report, opts, progress, engine_path=engine)


def _shapes(input_shapes) -> dict[str, tuple[int, ...]]:
    return {name: tuple(int(d) for d in dims) for name, dims in (input_shapes or {}).items()}
