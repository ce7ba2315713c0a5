"""The float check's elementwise tolerances: a value type with no dependency on the check itself, so that
attn_export.precision (which fills in a precision's defaults) and attn_export.parity (which applies them) both
import it without importing each other."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from attn_export import defaults
from attn_export.errors import AttnExportError

DEFAULT_ATOL = defaults.ATOL
DEFAULT_RTOL = defaults.RTOL


@dataclass(frozen=True)
class Tolerances:
    """Default atol/rtol plus per-output overrides. An element passes if it meets atol OR rtol
    (Polygraphy's elementwise rule); an output passes if every element does.

    None stands for "not given": attn_export.precision.tolerances() fills it in with the export precision's
    default. ``atol_scale``: the default atol is relative to each output's mean |reference| (fp16 / bf16 files,
    whose rounding error grows with the values' size); per-output atol values stay absolute."""

    atol: float | None = DEFAULT_ATOL
    rtol: float | None = DEFAULT_RTOL
    per_output_atol: Mapping[str, float] = field(default_factory=dict)
    per_output_rtol: Mapping[str, float] = field(default_factory=dict)
    atol_scale: bool = False

    def for_output(self, name: str, scale: float = 1.0) -> tuple[float, float]:
        """(atol, rtol) of output ``name``; ``scale`` is its mean |reference| (used with atol_scale)."""
        atol = DEFAULT_ATOL if self.atol is None else self.atol
        if name in self.per_output_atol:
            atol = self.per_output_atol[name]
        elif self.atol_scale and math.isfinite(scale):
            atol *= scale
        return atol, self.per_output_rtol.get(name, DEFAULT_RTOL if self.rtol is None else self.rtol)

    def describe(self) -> str:
        """The rule, as the table and report.json state it."""
        atol = DEFAULT_ATOL if self.atol is None else self.atol
        rtol = DEFAULT_RTOL if self.rtol is None else self.rtol
        return f"atol {atol:g}{' x mean |reference| per output' if self.atol_scale else ''}, rtol {rtol:g}"

    def check_names(self, output_names: Sequence[str]) -> None:
        unknown = (set(self.per_output_atol) | set(self.per_output_rtol)) - set(output_names)
        if unknown:
            raise AttnExportError(
                f"tolerance given for unknown output(s) {sorted(unknown)}; outputs are: {', '.join(output_names)}")
