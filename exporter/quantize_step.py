"""The quantize step of an export: [smooth] -> calibrate -> write Q/DQ -> [sensitivity, auto-exclude] -> save.

Inputs: the float ONNX model, the calibration source (its held-out samples already removed), the check inputs
(for the sensitivity measurements) and the options. Outputs: OUTDIR/model.int8.onnx (or int4), the calibration
cache, and what report.json says about smoothing, per-layer sensitivity and the layers kept in float.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from attn_export.calib import qdq
from attn_export.calib.sensitivity import OutputJudge, auto_exclude, layer_sensitivity
from attn_export.calib.smooth import smooth
from attn_export.errors import AttnExportError
from attn_export.tables import render_table


@dataclass
class QuantStep:
    result: object  # attn_export.calib.qdq.QuantResult
    smoothed: list = field(default_factory=list)  # calib.smooth.Smoothed
    sensitivity: list = field(default_factory=list)  # calib.sensitivity.LayerSensitivity, most harmful first
    fallback: object | None = None  # calib.sensitivity.Fallback

    def summary(self) -> dict:
        extra = {}
        if self.smoothed:
            extra["smoothing"] = [s.to_dict() for s in self.smoothed]
        if self.sensitivity:
            extra["sensitivity"] = [s.to_dict() for s in self.sensitivity]
        if self.fallback is not None:
            extra["auto_exclude"] = self.fallback.to_dict()
        return {**self.result.summary(), **extra}

    def table(self, top: int = 10) -> str:
        """The most sensitive layers and what --auto-exclude kept, for the console."""
        lines = []
        if self.sensitivity:
            rows = [(s.layer, s.op, f"{s.relative_error:.4f}", f"{s.worst_cosine:.5f}") for s in self.sensitivity[:top]]
            lines += [f"quantization sensitivity (each layer quantized alone; {len(self.sensitivity)} layers, most "
                      "harmful first):", render_table(("layer", "op", "mean err / mean |float|", "worst sample cosine"),
                                                      rows)]
        if self.fallback is not None:
            kept = ", ".join(self.fallback.kept_float) or "none"
            lines.append(f"--auto-exclude {self.fallback.target}: kept in float: {kept}; worst sample cosine "
                         f"{self.fallback.worst_cosine:.5f}")
        if self.smoothed:
            lines.append("smoothed: " + ", ".join(f"{s.tensor} (channel range x{s.range_ratio_before:g} -> "
                                                  f"x{s.range_ratio_after:g})" for s in self.smoothed))
        return "\n".join(lines)


def run(proto, source, fresh_source: Callable[[], object], path: Path, opts, inputs, cache_path: Path) -> QuantStep:
    """Quantize ``proto`` into ``path``. ``fresh_source()`` opens the calibration data once more (smoothing reads
    it before calibration); ``inputs`` are the check's (CheckInputs) for the sensitivity measurements."""
    int8 = opts.quant.mode == "int8"
    smoothed = []
    if opts.smooth is not None:
        proto, smoothed = smooth(proto, fresh_source().feeds, opts.smooth, opts.quant.samples, opts.quant.exclude)
    cached = qdq.read_cache(opts.calib_cache) if opts.calib_cache else None
    result = qdq.quantize(proto, source.feeds if int8 else None, opts.quant, cached_amax=cached)
    step = QuantStep(result, smoothed)
    if opts.sensitivity or opts.auto_exclude is not None:
        _tune(step, proto, opts, inputs)
    qdq.save(step.result.model, path)
    if int8 and step.result.activation_amax:
        qdq.write_cache(cache_path, step.result, opts.quant, source.description)
    return step


def _tune(step: QuantStep, proto, opts, inputs) -> None:
    """Per-layer sensitivity on the check inputs (real ones where there are), and the --auto-exclude fallback."""
    if opts.auto_exclude is not None and not inputs.real:
        raise AttnExportError("--auto-exclude keeps layers in float until the check on real data meets the target: "
                              "pass --calib-data with real samples (some are held out) or --inputs FILE.npz")
    real = [f for f, origin in zip(inputs.feeds, inputs.origins) if origin != "random"] or inputs.feeds
    judge = OutputJudge(proto, real)
    amax = step.result.activation_amax
    step.sensitivity = layer_sensitivity(proto, opts.quant, amax, judge)
    if opts.auto_exclude is not None:
        result, step.fallback = auto_exclude(proto, opts.quant, amax, judge, step.sensitivity, opts.auto_exclude)
        result.samples, result.calibration_seconds = step.result.samples, step.result.calibration_seconds
        result.activation_amax = step.result.activation_amax
        step.result = result
