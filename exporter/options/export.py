"""How the ONNX file is written: opset, lowering, dynamic axes, precision, the seed of the random inputs."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from attn_export import defaults
from attn_export.errors import AttnExportError
from attn_export.options.flags import flag

PRECISIONS = ("fp32", *defaults.DTYPE_TOLERANCES)  # attn_export.precision checks files in these


def check_opset(opset: int | None) -> int:
    """The opset to export with: the default, or a supported one given by the user."""
    opset = defaults.OPSET if opset is None else int(opset)
    if opset not in defaults.SUPPORTED_OPSETS:
        raise AttnExportError(f"opset {opset} is not supported; use one of {defaults.SUPPORTED_OPSETS[0]} to "
                              f"{defaults.SUPPORTED_OPSETS[-1]}")
    return opset


def attention_opset(opset: int | None) -> int:
    """The opset of an attention-lowered export: ONNX's Attention exists from opset 23 on."""
    least = defaults.ATTENTION_MIN_OPSET
    if opset is not None and opset < least:
        raise AttnExportError(f"--lowering attention needs --opset {least} or newer (ONNX's Attention "
                              f"operator is opset {least}), got --opset {opset}: raise it or drop it")
    return max(opset or least, least)


@dataclass
class ExportGroup:
    opset: int | None = None  # default: defaults.OPSET (INT4: at least INT4_MIN_OPSET; attention lowering: 23)
    lowering: str = defaults.LOWERING  # "plugin" | "attention" (attn_export.lowering)
    dynamic_batch: bool = True
    dynamic_spatial: bool | None = None  # None: dynamic where the model declares spatial dims (zoo models)
    dtype: str = defaults.DTYPE  # "fp32" | "fp16" | "bf16": the precision of the exported file
    seed: int = defaults.SEED
    command: Sequence[str] = field(default_factory=lambda: list(sys.argv))  # recorded in report.json

    FLAGS = (
        flag("--dynamic-batch/--static-batch", field="dynamic_batch", commands=("export",),
             help="Dynamic batch dimension [default: dynamic]."),
        flag("--dynamic-spatial/--static-spatial", field="dynamic_spatial", commands=("export",),
             help="Dynamic spatial dims where the model declares them (zoo models) [default: dynamic for zoo models, "
                  "static for checkpoints and pickles; a .pt2 keeps its own]."),
        flag("--opset", field="opset", commands=("export",), type=int,
             help=f"ONNX opset ({defaults.SUPPORTED_OPSETS[0]}-{defaults.SUPPORTED_OPSETS[-1]}, default "
                  f"{defaults.OPSET}; --int4 needs {defaults.INT4_MIN_OPSET})."),
        flag("--lowering", field="lowering", commands=("export",), metavar="|".join(defaults.LOWERINGS),
             show_default=True,
             help="How each attention call is written: plugin = one attn_export node + its local function (TensorRT "
                  "runs our plugin); attention = standard ops around ONNX's Attention with an exact mask (opset >= "
                  f"{defaults.ATTENTION_MIN_OPSET}; stock TensorRT >= 10.14 and ONNX Runtime, no plugin)."),
        flag("--dtype", field="dtype", commands=("export",), metavar="|".join(PRECISIONS), show_default=True,
             help="Precision of the exported file (attention nodes included); checked against the fp32 PyTorch "
                  f"model with the precision's tolerances. bf16 exports with opset >= {defaults.BF16_MIN_OPSET}."),
        flag("--seed", field="seed", type=int, show_default=True, help="Seed of random inputs."),
    )

    def validate(self) -> None:
        if self.lowering not in defaults.LOWERINGS:
            raise AttnExportError(f"--lowering {self.lowering} is not one of {', '.join(defaults.LOWERINGS)}")
        if self.lowering == "attention":
            attention_opset(self.opset)  # an explicit opset below 23: exit 2 before any work
        self.dtype = self.dtype or defaults.DTYPE
        if self.dtype not in PRECISIONS:
            raise AttnExportError(f"--dtype {self.dtype} is not one of {', '.join(PRECISIONS)}")
        if self.opset is not None:
            check_opset(self.opset)
        if self.dtype == "bf16" and self.opset is not None and self.opset < defaults.BF16_MIN_OPSET:
            raise AttnExportError(f"--dtype bf16 needs --opset {defaults.BF16_MIN_OPSET} or newer (ONNX has "
                                  "bfloat16 Conv from opset 22)")

    def resolved_opset(self, least: int | None = None) -> int:
        """The opset to write: asked or default, raised to what bf16, INT4 (``least``) and the lowering need."""
        opset = check_opset(self.opset)
        if self.dtype == "bf16":
            opset = max(opset, defaults.BF16_MIN_OPSET)
        if least:
            opset = max(opset, least)
        if self.lowering == "attention":
            opset = max(opset, defaults.ATTENTION_MIN_OPSET)
        return opset
