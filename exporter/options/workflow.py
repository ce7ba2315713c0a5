"""`attn-export ci-template`: what the written workflow checks and where its jobs install attn-export from."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from attn_export.options.flags import flag


@dataclass
class WorkflowFlags:
    """The ci-template flags; attn_export.ci.WorkflowOptions is what they become (with the model's flags)."""

    gpu: bool = False
    model: str = "zoo:nat-tiny"
    onnx: str = "model.onnx"  # the committed ONNX file the CPU job checks
    install: Sequence[str] = ()  # pip requirements: where attn-export comes from, your package (required)
    force: bool = False

    FLAGS = (
        flag("--gpu", field="gpu", is_flag=True, commands=("ci-template",),
             help="Add a job for a self-hosted GPU runner: the CPU job exports, the GPU job builds the plugins and the "
                  "engine and checks it against the export's reference outputs (no model needed there)."),
        flag("--model", field="model", metavar="MODEL", show_default=True, commands=("ci-template",),
             help="The model to check."),
        flag("--onnx", field="onnx", metavar="FILE", show_default=True, commands=("ci-template",),
             help="The committed ONNX file the CPU job checks the model against."),
        flag("--install", field="install", multiple=True, metavar="REQUIREMENT", commands=("ci-template",),
             help="pip requirements the jobs install (repeatable, required): where attn-export comes from (a wheel "
                  "committed to your repository, a git URL) and -e . for your package; attn-export is on no "
                  "package index."),
        flag("--force", field="force", is_flag=True, commands=("ci-template",), help="Replace an existing file."),
    )

    def model_args(self, factory: str | None, input_shapes: Sequence[str]) -> list[str]:
        """The model's flags as the workflow's commands pass them."""
        return [*(["--factory", factory] if factory else []),
                *(a for shape in input_shapes for a in ("--input-shape", shape))]
