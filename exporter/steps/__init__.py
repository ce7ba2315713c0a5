"""The export as a chain of steps over artifacts (Polygraphy's loaders composed as steps):

    load -> convert calls -> [PARO plan] -> export ONNX -> check inputs -> [quantize] -> [engine]
         -> check parity -> [PARO quality] -> [quantized quality] -> save report and reference -> [deploy]

Each step is a small function of the ExportJob: it reads the artifacts earlier steps left there and adds its own.
``plan(opts, source)`` lists the steps an export runs, each with its progress title (None: not numbered); the
PARO, quantization and engine policies live in their steps (attn_export.steps.paro, attn_export.quantize_step).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from attn_export.artifacts import ONNX_NAME, OWNED, quantized_name
from attn_export.loader import LoadedModel
from attn_export.options import ExportOptions
from attn_export.outdir import Extras, staged_output
from attn_export.steps import checks, paro, produce


@dataclass
class ExportJob:
    """What the steps share: the options, the model as loaded (``original``: the dense reference) and as exported
    (``loaded``), the staging folder, and every artifact so far."""

    opts: ExportOptions
    original: LoadedModel
    loaded: LoadedModel
    outdir: Path
    paro: object | None = None  # attn_export.paro_export.ParoSettings
    stage: Path | None = None
    extras: Extras = field(default_factory=Extras)
    user_feed: dict | None = None  # --inputs
    held: object | None = None  # check_inputs.HeldOut: real samples never calibrated or planned on
    calib: object | None = None  # calib.data.CalibSource, without the held-out samples
    call_records: list = field(default_factory=list)
    paro_job: object | None = None  # paro_export.ParoJob: the plan and the model that runs it
    proto: object | None = None  # the exported onnx.ModelProto
    onnx_inputs: dict = field(default_factory=dict)
    inputs: object | None = None  # check_inputs.CheckInputs
    quant: object | None = None  # quantize_step.QuantStep
    engine: Path | None = None
    profiles: list = field(default_factory=list)
    reference: object | None = None  # parity.Reference of the float check
    report: object | None = None
    quant_report: object | None = None
    paro_report: object | None = None
    report_extra: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    triton_name: str | None = None
    triton_command: str | None = None

    @property
    def onnx_path(self) -> Path:
        return self.stage / ONNX_NAME

    @property
    def quant_name(self) -> str | None:
        return quantized_name(self.opts.quant.mode) if self.opts.quant else None

    @property
    def final(self) -> Path:
        """The file that ships (and that the engine is built from): the quantized one, if any."""
        return self.stage / (self.quant_name or ONNX_NAME)

    def warn(self, *lines: str) -> None:
        self.warnings += [line for line in lines if line not in self.warnings]


@dataclass(frozen=True)
class Step:
    role: str
    run: Callable[[ExportJob], None]
    title: str | None = None  # numbered in the progress; None: a silent step


def plan(opts: ExportOptions, source: str) -> list[Step]:
    """The steps an export of ``source`` runs with ``opts`` (prepared), in order, loading excluded."""
    settings = paro.settings(opts, source)
    mode = opts.quant.mode if opts.quant else None
    engine_rows = " vs TensorRT" if opts.engine and not mode else ""
    wanted = [
        (True, Step("convert", produce.convert)),
        (settings, Step("paro", produce.plan_paro, settings and paro.step_title(settings))),
        (True, Step("export", produce.export_onnx, "export to ONNX")),
        (opts.check or opts.engine, Step("inputs", checks.gather_inputs)),
        (mode, Step("quantize", produce.quantize, f"calibrate and quantize ({mode})")),
        (True, Step("profiles", produce.engine_profiles)),
        (opts.engine, Step("engine", produce.build_engine, "build TensorRT engine")),
        (opts.check, Step("check", checks.check_export, f"check parity: PyTorch vs ONNX Runtime{engine_rows}")),
        (opts.check and settings, Step("check_paro", checks.check_paro,
                                       "check PARO quality: PyTorch dense vs ONNX Runtime")),
        (opts.check and mode, Step("check_quantized", checks.check_quantized,
                                   f"check {mode} parity: PyTorch fp32 vs quantized")),
        (opts.check, Step("save", checks.save)),
        (opts.triton_repo, Step("deploy", produce.deploy)),
    ]
    return [step for want, step in wanted if want]


def count(opts: ExportOptions, source: str) -> int:
    """Numbered steps of an export of ``source``, loading included."""
    return 1 + sum(step.title is not None for step in plan(opts.prepare(), source))


@contextlib.contextmanager
def silent_step(title: str):
    yield


def run(loaded: LoadedModel, outdir: str | Path, opts: ExportOptions, progress=None) -> ExportJob:
    """Run the export's steps into a staging folder, committed to ``outdir`` (atomically) when all succeed."""
    opts.prepare()
    progress = progress or silent_step
    job = ExportJob(opts, loaded, loaded, Path(outdir), paro.settings(opts, loaded.source))
    checks.preflight(job)  # every input the steps will read is checked before any work
    with staged_output(job.outdir, owned=OWNED, extras=job.extras) as stage:
        job.stage = stage
        for step in plan(opts, loaded.source):
            with progress(step.title) if step.title else contextlib.nullcontext():
                step.run(job)
    return job
