"""What a run writes beside OUTDIR for CI and deployment: JUnit, a Markdown summary, a Triton repository entry."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click

from attn_export.errors import AttnExportError
from attn_export.options.flags import flag


@dataclass
class ReportGroup:
    junit: str | None = None  # JUnit XML of the parity check
    summary: str | None = None  # Markdown summary of the parity check
    triton_repo: str | None = None  # write a Triton model repository entry here
    triton_name: str | None = None  # its name [the model's]

    FLAGS = (
        flag("--triton-repo", field="triton_repo", type=click.Path(), metavar="DIR", commands=("export",),
             help="Also write a Triton model repository entry DIR/NAME: the engine (tensorrt_plan, with the plugin "
                  "library) or, without one, model.onnx (onnxruntime_onnx); config.pbtxt and serve.sh."),
        flag("--triton-name", field="triton_name", metavar="NAME", commands=("export",),
             help="Name of the Triton entry [default: the model's: zoo:nat-tiny -> nat-tiny]."),
        flag("--junit", field="junit", type=click.Path(), metavar="FILE.xml",
             help="Also write the check as JUnit XML: one test case per output and input set."),
        flag("--summary", field="summary", type=click.Path(), metavar="FILE.md",
             help="Also write the check as Markdown (a CI job summary page)."),
    )

    def validate(self, report: str | None = None) -> None:
        """Report files must be writable paths (not folders); --junit and --summary report a check."""
        for flag_name, path in (("--report", report), ("--junit", self.junit), ("--summary", self.summary)):
            if path is not None and Path(path).is_dir():
                raise AttnExportError(f"{flag_name} {path} is a folder; pass a file path")
        if (self.junit or self.summary) and not getattr(self, "check", True):
            raise AttnExportError(f"--{'junit' if self.junit else 'summary'} reports the parity check: drop --no-check")
        if self.triton_repo is None and self.triton_name is None:
            return
        from attn_export import triton  # onnx (0.2 s): only where a Triton flag is given

        triton.check_repository_path(self.triton_repo, self.triton_name)
        if self.triton_name is not None:
            triton.model_name("", self.triton_name)
