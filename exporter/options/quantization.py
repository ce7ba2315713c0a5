"""Quantization: --int8 / --int4, calibration, exclusions and the tuning flags (--sensitivity, --auto-exclude,
--smooth)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import click

from attn_export import defaults
from attn_export.errors import AttnExportError
from attn_export.options.flags import flag
from attn_export.quant_rules import check_quant_values

CHECK_CALIB_DATA_HELP = ("Real samples for a quantized or PARO file's check: the first --check-samples of them (at "
                         "most a quarter), as the export held them out of its calibration (a .npz, .npy, image folder "
                         "or file.py:function, as for export).")


@dataclass
class QuantizationGroup:
    quantize: str | None = None  # "int8" or "int4"
    int4_block: int = defaults.INT4_BLOCK
    calib_method: str = defaults.CALIB_METHOD
    calib_samples: int = defaults.CALIB_SAMPLES
    calib_data: str | None = None
    calib_cache: str | None = None  # reuse the amax of an earlier INT8 calibration
    calib_preprocess: str = defaults.CALIB_PREPROCESS
    exclude: Sequence[str] = ()
    sensitivity: bool = False  # measure every quantized layer alone (report.json, console)
    auto_exclude: float | None = None  # keep sensitive layers in float until the worst sample cosine reaches this
    smooth: float | None = None  # SmoothQuant alpha for INT8 activations

    FLAGS = (
        flag("--int8", field="quantize", value="int8", is_flag=True, commands=("export",),
             help="Also write OUTDIR/model.int8.onnx: W8A8 Q/DQ on MatMul/Gemm/Conv, calibrated."),
        flag("--int4", field="quantize", value="int4", is_flag=True, commands=("export",),
             help="Also write OUTDIR/model.int4.onnx: INT4 weight-only blocks on MatMul/Gemm (exports with opset "
                  f"{defaults.INT4_MIN_OPSET})."),
        flag("--int4-block", field="int4_block", type=int, show_default=True, commands=("export",),
             help="INT4 block size along the input dim."),
        flag("--calib-method", field="calib_method", metavar="NAME", show_default=True, commands=("export",),
             help="Activation calibrator: max, percentile (99.99), entropy (KL, as TensorRT) or mse."),
        flag("--calib-samples", field="calib_samples", type=int, show_default=True, commands=("export",),
             help="Calibration samples to use."),
        flag("--calib-data", field="calib_data", metavar="SOURCE", help_for={"check": CHECK_CALIB_DATA_HELP},
             help="A .npz / .npy of inputs, a folder of images, or file.py:function returning feed dicts "
                  "[default: the zoo model's data; seeded random data, with a warning, for other models]."),
        flag("--calib-cache", field="calib_cache", type=click.Path(dir_okay=False), metavar="FILE",
             commands=("export",),
             help="Reuse the activation amax of an earlier --int8 run (its OUTDIR/calib_cache.json) instead of "
                  "calibrating."),
        flag("--calib-preprocess", field="calib_preprocess", metavar="raw|unit|imagenet", show_default=True,
             help="For an image folder: pixels 0-255 (raw), 0-1 (unit) or ImageNet-normalized RGB."),
        flag("--sensitivity", field="sensitivity", is_flag=True, commands=("export",),
             help="Quantization: measure every quantized layer alone on the check inputs (real samples where "
                  "given) and list the most harmful first (console and report.json)."),
        flag("--auto-exclude", field="auto_exclude", type=float, metavar="COSINE", commands=("export",),
             help="Quantization: keep the most sensitive layers in float, one at a time, until the worst sample "
                  "cosine on the held-out real data reaches COSINE (e.g. 0.99); lists what it kept."),
        flag("--smooth", field="smooth", type=float, metavar="ALPHA", commands=("export",),
             help="INT8: SmoothQuant-style smoothing of MatMul/Gemm inputs with outlier channels (ALPHA 0.5 "
                  "is SmoothQuant's)."),
        flag("--exclude", field="exclude", multiple=True, metavar="PATTERN", commands=("export",),
             help="Keep nodes or weights whose name matches this glob in float (repeatable)."),
    )

    def validate(self) -> None:
        """The quantization flags alone and with each other (the export's other flags: ExportOptions.validate)."""
        if self.quantize is None:
            self._validate_without_quantization()
        else:
            if self.quantize == "int4" and self.calib_cache:
                raise AttnExportError("--calib-cache holds INT8 activation ranges: add --int8")
            if self.calib_method not in defaults.CALIB_METHODS:  # as attn_export.calib.make_calibrator says it
                raise AttnExportError(f"unknown calibration method '{self.calib_method}'; use one of "
                                      f"{', '.join(defaults.CALIB_METHODS)}")
            check_quant_values(self.quantize, self.calib_samples, self.int4_block)
        self._validate_tuning()

    def _validate_without_quantization(self) -> None:
        paro = getattr(self, "paro", None)
        if self.exclude or (self.calib_data and not paro):
            raise AttnExportError(f"--{'exclude' if self.exclude else 'calib-data'} applies to quantization"
                                  f"{'' if self.exclude else ' and PARO'}: add --int8, --int4"
                                  f"{'' if self.exclude else ' or --paro'}")
        if self.calib_cache:
            raise AttnExportError("--calib-cache holds INT8 activation ranges: add --int8")

    def _validate_tuning(self) -> None:
        asked = [flag_ for flag_, on in (("--sensitivity", self.sensitivity), ("--auto-exclude", self.auto_exclude),
                                         ("--smooth", self.smooth)) if on not in (None, False)]
        if asked and self.quantize is None:
            raise AttnExportError(f"{asked[0]} applies to quantization: add --int8 or --int4")
        if (self.sensitivity or self.auto_exclude is not None) and not getattr(self, "check", True):
            raise AttnExportError(f"{asked[0]} measures on the check inputs: drop --no-check")
        if self.auto_exclude is not None and not 0 < self.auto_exclude <= 1:
            raise AttnExportError(f"--auto-exclude {self.auto_exclude} is a worst-sample cosine: it must lie in (0, 1]")
        if self.smooth is not None:
            if self.quantize != "int8":
                raise AttnExportError("--smooth balances INT8 activations against weights: use it with --int8")
            if self.calib_cache:
                raise AttnExportError("--smooth recalibrates the smoothed activations: drop --calib-cache")
            if not 0 <= self.smooth <= 1:
                raise AttnExportError(f"--smooth {self.smooth} must lie in [0, 1] (SmoothQuant uses 0.5)")

    def quant_options(self):
        """The quantizer's options (attn_export.calib.qdq.QuantOptions) for --int8 / --int4, else None."""
        if self.quantize is None:
            return None
        from attn_export.calib.qdq import QuantOptions  # onnx: only once the flags are known to be valid

        return QuantOptions(self.quantize, self.calib_method, self.calib_samples, self.int4_block,
                            tuple(self.exclude))
