"""The checks: whether to run them, their inputs, the float tolerances and the quality (quantized / PARO) gate."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import click

from attn_export import defaults
from attn_export.errors import AttnExportError
from attn_export.options.flags import flag
from attn_export.tolerances import Tolerances

_SAMPLE = ", ".join(f"{v[2]} {m}" for m, v in defaults.QUANT_THRESHOLDS.items())
_TOP1 = ", ".join(f"{v[3]:.2f} {m}" for m, v in defaults.QUANT_THRESHOLDS.items())
_COSINE = ", ".join(f"{v[0]} {m}" for m, v in defaults.QUANT_THRESHOLDS.items())
_ERROR = ", ".join(f"{v[1]:.2f} {m}" for m, v in defaults.QUANT_THRESHOLDS.items())
_LOW = ", ".join(f"{defaults.DTYPE_TOLERANCES[d]:g}" for d in defaults.DTYPE_TOLERANCES)
_THRESHOLDS = (("--quant-min-cosine", "quant_min_cosine", -1, 1), ("--quant-max-error", "quant_max_error", 0, math.inf),
               ("--quant-min-sample-cosine", "quant_min_sample_cosine", -1, 1),
               ("--quant-min-top1", "quant_min_top1", 0, 1))


def parse_tolerances(flag_name: str, values: Sequence[str]) -> tuple[float | None, dict[str, float]]:
    """--atol / --rtol entries (``TOL`` or ``OUTPUT=TOL``): the default (None if not given) and per-output values."""
    base, per_output = None, {}
    for value in values:
        name, sep, number = value.rpartition("=")
        try:
            tol = float(number)
        except ValueError:
            raise AttnExportError(f"{flag_name} '{value}' is not a number or OUTPUT=NUMBER") from None
        if tol < 0:
            raise AttnExportError(f"{flag_name} '{value}' is negative; tolerances are >= 0")
        if sep:
            per_output[name] = tol
        else:
            base = tol
    return base, per_output


@dataclass
class CheckGroup:
    check: bool = True
    tolerances: object | None = None  # attn_export.tolerances.Tolerances; None: the precision's defaults
    inputs_npz: str | None = None
    quant_min_cosine: float | None = None  # default: defaults.QUANT_THRESHOLDS[mode]
    quant_max_error: float | None = None
    quant_min_sample_cosine: float | None = None
    quant_min_top1: float | None = None
    check_samples: int = defaults.CHECK_SAMPLES  # real samples held out of the calibration data for the checks
    allow_inconclusive: bool = False  # accept a quality check whose null control passes too

    FLAGS = (
        flag("--no-check", field="check", value=False, is_flag=True, commands=("export",),
             help="Skip the PyTorch vs ONNX Runtime parity check."),
        flag("--inputs", field="inputs_npz", type=click.Path(dir_okay=False), metavar="FILE.npz",
             help="Check on these inputs (a .npz keyed by input name) instead of seeded random ones."),
        flag("--atol", field="atol", multiple=True, metavar="[OUTPUT=]TOL",
             help=f"Absolute tolerance (default {defaults.ATOL:g}; fp16 / bf16 files: {_LOW} x each output's mean "
                  "|reference|)."),
        flag("--rtol", field="rtol", multiple=True, metavar="[OUTPUT=]TOL",
             help=f"Relative tolerance (default {defaults.RTOL:g}; fp16 / bf16 files: {_LOW})."),
        flag("--quant-min-cosine", field="quant_min_cosine", type=float,
             help=f"Quantized parity: least cosine similarity per output [default: {_COSINE}]."),
        flag("--quant-max-error", field="quant_max_error", type=float,
             help=f"Quantized parity: largest mean |error| / mean |reference| [default: {_ERROR}]."),
        flag("--quant-min-sample-cosine", field="quant_min_sample_cosine", type=float,
             help=f"Quantized / PARO check: least cosine of any one sample [default: {_SAMPLE}]."),
        flag("--quant-min-top1", field="quant_min_top1", type=float,
             help="Quantized / PARO check: least share of real samples whose top-1 class (outputs [batch, classes]) "
                  f"matches the float model's [default: {_TOP1}]."),
        flag("--check-samples", field="check_samples", type=int,
             help="Real samples held out of the calibration data (never calibrated on) for the quantized and PARO "
                  f"checks [default: {defaults.CHECK_SAMPLES}; 0: none]."),
        flag("--allow-inconclusive", field="allow_inconclusive", is_flag=True,
             help="Accept a quantized / PARO check whose null control (a deliberately broken variant) passes too; "
                  "without it that check exits 1."),
    )

    @staticmethod
    def from_flags(values: dict) -> dict:
        """--atol / --rtol (strings) as the tolerances field."""
        atol, rtol = values.pop("atol", ()), values.pop("rtol", ())
        if atol or rtol:
            (a, per_a), (r, per_r) = parse_tolerances("--atol", atol), parse_tolerances("--rtol", rtol)
            values["tolerances"] = Tolerances(a, r, per_a, per_r)
        return values

    def validate(self) -> None:
        if self.check_samples < 0:
            raise AttnExportError(f"--check-samples {self.check_samples} must be 0 or more")
        for flag_name, name, low, high in _THRESHOLDS:
            value = getattr(self, name)
            if value is not None and not low <= value <= high:  # NaN fails too
                raise AttnExportError(f"{flag_name} {value} must lie in [{low}, {high}]")
