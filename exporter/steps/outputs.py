"""What a run leaves behind: report.json, reference.npz, the JUnit and Markdown files, the Triton entry."""

from __future__ import annotations

import json
from pathlib import Path

from attn_export import ci, native, triton
from attn_export import reference as saved
from attn_export.loader import LoadedModel
from attn_export.options import ExportOptions
from attn_export.outdir import staged_extras
from attn_export.parity import ParityReport, onnx_io
from attn_export.quality import QuantParityReport


def save_reference(path: Path, reference, onnx_path: Path, inputs, loaded: LoadedModel) -> None:
    """OUTDIR/reference.npz: the check inputs, the gate's reference outputs on them and the model's own input
    shapes (reference.py)."""
    names, outputs = onnx_io(onnx_path)
    values = saved.reference_outputs(reference.model, inputs.feeds, list(names), outputs)
    saved.save(path, inputs.feeds, values, reference.to_dict(), inputs.to_dict(), loaded.source,
               {i.name: i.shape for i in loaded.inputs})


def write_report(path: Path, report: ParityReport, loaded: LoadedModel | str, status: str | None = None,
                  **extra) -> None:
    """report.json; ``status`` overrides the parity report's where a quality check failed or was inconclusive."""
    data = {**report.to_dict(), "model": loaded if isinstance(loaded, str) else loaded.source, **extra}
    if status and data["status"] == "pass":
        data["status"] = status
    path.write_text(json.dumps(data, indent=2) + "\n")


def quality_status(*reports) -> str | None:
    """"fail" if a quality check failed, else "inconclusive" if one could not tell the file from a broken one."""
    statuses = {r.status for r in reports if r is not None}
    return "fail" if "fail" in statuses else "inconclusive" if "inconclusive" in statuses else None


def write_check_files(extras, opts: ExportOptions, model: str, onnx: str, report, quant_report=None,
                       paro_report=None, warnings=()) -> None:
    """Stage the JUnit and Markdown files of a check (committed with the report, or discarded with it)."""
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


def write_check_outputs(report, report_path, opts: ExportOptions, model: str, onnx_path: Path, paro: bool,
                         inputs: dict) -> None:
    """The report, JUnit and summary files a check was asked for (all or none of them)."""
    if report_path or opts.junit or opts.summary:
        with staged_extras() as extras:
            if report_path:
                write_report(extras.path(report_path), report, model, check_inputs=inputs)
            quant = isinstance(report, QuantParityReport)
            write_check_files(extras, opts, model, str(onnx_path), None if quant else report,
                               report if quant and not paro else None, report if quant and paro else None,
                               report.warnings)


def triton_name(loaded: LoadedModel, opts: ExportOptions) -> str | None:
    if not opts.triton_repo:
        return None
    name = triton.model_name(loaded.source, opts.triton_name)
    triton.check_repository_path(opts.triton_repo, name)
    return name


def write_triton(extras, opts: ExportOptions, name: str, final: Path, engine: Path | None, profiles) -> str:
    """Stage DIR/NAME (the engine and the plugin library, or the ONNX file) for the commit; returns serve.sh's line."""
    kind = "engine" if engine else "onnx"
    entry = triton.entry_for(final, name, kind, profiles, opts.max_batch)
    folder = extras.path(Path(opts.triton_repo) / name, folder=True)
    plugins = opts.lowering == "plugin"  # an attention-lowered engine runs without our library
    return triton.write_entry(folder, entry, engine or final, native.plugin_library() if engine and plugins else None,
                              needs_plugins=plugins)
