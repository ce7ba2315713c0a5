"""Export and check options as groups (Polygraphy's argument groups): each group declares its flags once (Flag data
that the CLI turns into click options), their defaults (its dataclass fields, read from attn_export.defaults), its
validation and the API fields they set. ``ExportOptions`` is every group in one object: the Python API's keyword
arguments are its fields, so the API and the CLI cannot drift.

Import-light: ``validate()`` needs neither torch nor onnx, so a bad flag is answered before either loads;
``prepare()`` then resolves what depends on the installation (TensorRT present, the quantizer's options).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from attn_export import defaults
from attn_export.errors import AttnExportError
from attn_export.options.bench import BenchOptions
from attn_export.options.check import CheckGroup
from attn_export.options.engine import EngineGroup
from attn_export.options.export import ExportGroup
from attn_export.options.flags import click_options, fields_of, given_values
from attn_export.options.model import ModelSource
from attn_export.options.paro import ParoGroup
from attn_export.options.quantization import QuantizationGroup
from attn_export.options.report import ReportGroup
from attn_export.options.workflow import WorkflowFlags
from attn_export.quant_rules import QUANT_MODES
from attn_export.tolerances import Tolerances

GROUPS = (ExportGroup, QuantizationGroup, ParoGroup, EngineGroup, CheckGroup, ReportGroup)

__all__ = ["GROUPS", "QUANT_MODES", "BenchOptions", "CheckGroup", "EngineGroup", "ExportGroup", "ExportOptions",
           "ModelSource", "ParoGroup", "QuantizationGroup", "ReportGroup", "WorkflowFlags", "click_options",
           "fields_of", "from_command_line", "given_values"]


@dataclass
class ExportOptions(ReportGroup, CheckGroup, EngineGroup, ParoGroup, QuantizationGroup, ExportGroup):
    """Everything an export or a check can be asked for, field by field as the groups declare it. ``prepare()``
    checks the combination and resolves what follows from it (opset, quantization, thresholds, engine) before any
    work; ``validate()`` is its import-light first half."""

    # Resolved by prepare():
    quant: object | None = None  # attn_export.calib.qdq.QuantOptions
    quant_thresholds: object | None = None  # attn_export.quality.QuantThresholds
    shape_profiles: list = field(default_factory=list)  # attn_export.shapes.Profile per --shapes / --profile
    prepared: bool = False

    def validate(self) -> ExportOptions:
        """Every flag, alone and with the others, without importing torch or onnx (exit 2 on the first wrong one)."""
        for group in GROUPS:
            group.validate(self)
        if self.dtype != "fp32" and self.quantize:
            raise AttnExportError(f"--dtype {self.dtype} and --{self.quantize} are exclusive: Q/DQ files are "
                                  "calibrated and checked in fp32")
        if self.quantize == "int4" and self.opset is not None and self.opset < defaults.INT4_MIN_OPSET:
            raise AttnExportError(f"--int4 needs --opset {defaults.INT4_MIN_OPSET} or newer (block-wise "
                                  "DequantizeLinear)")
        return self

    def prepare(self) -> ExportOptions:
        """Check the options and resolve the derived ones, in place; an explicit --engine without TensorRT
        or the plugin library fails here. Idempotent."""
        if self.prepared:
            return self
        self.validate()
        from attn_export import precision  # torch: flags are valid by now

        least = defaults.INT4_MIN_OPSET if self.quantize == "int4" else None
        self.opset = self.resolved_opset(least)
        self.tolerances = precision.tolerances(self.dtype, self.tolerances or Tolerances(None, None))
        self.shape_profiles = self.parse_shape_profiles()
        self.quant = self.quant_options()
        if self.quant is not None:
            self.quant.validate()
            self.quant_thresholds = self.thresholds(self.quantize)
        self.engine = self._wants_engine()
        self.prepared = True
        return self

    def prepare_check(self, report: str | os.PathLike | None = None) -> ExportOptions:
        """What `attn-export check` can be asked for beyond the model (before it loads): report paths that are files,
        thresholds in range."""
        ReportGroup.validate(self, report)
        CheckGroup.validate(self)
        if self.tolerances is None:  # the file's precision decides the defaults (attn_export.precision)
            self.tolerances = Tolerances(None, None)
        return self

    def thresholds(self, mode: str):
        """The quality thresholds of ``mode`` ("int8", "paro-int4", ...) with the ones the user gave."""
        from attn_export.quality import QuantThresholds  # torch: thresholds are read once the flags are valid

        CheckGroup.validate(self)
        return QuantThresholds.for_mode(mode, self.quant_min_cosine, self.quant_max_error,
                                        self.quant_min_sample_cosine, self.quant_min_top1)

    def _wants_engine(self) -> bool:
        """Whether to build an engine; an explicit request without TensorRT fails here, before any work."""
        from attn_export import trt  # torch: flags are valid by now

        plugins = self.lowering == "plugin"  # the attention lowering runs on stock TensorRT, no plugin library
        if self.engine:
            trt.require_engine_tools() if plugins else trt.require_attention_tensorrt()
            return True
        return self.engine is None and trt.engine_available(plugins)


def from_command_line(command: list[str]) -> tuple[ExportOptions, ModelSource]:
    """The options and the model source the current click command's flags give (validated: exit 2 on a bad one)."""
    values = CheckGroup.from_flags(given_values())
    source = ModelSource(**fields_of(ModelSource, values))
    source.shapes()
    opts = ExportOptions(**fields_of(ExportOptions, values), command=command)
    return opts, source
