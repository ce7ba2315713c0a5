"""PARO attention: --paro and its settings (grid, prefix, density, block, precisions, buckets, a plan to reuse)."""

from __future__ import annotations

from dataclasses import dataclass

import click

from attn_export import defaults
from attn_export.errors import AttnExportError
from attn_export.options.flags import flag

BITS = defaults.PARO_BITS
PARO_SETTINGS = ("grid", "prefix", "density", "block", "qk", "pv", "buckets", "plan")


def parse_grid(text: str) -> tuple[int, int, int]:
    """``FxHxW`` as three positive ints."""
    parts = str(text).lower().split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise AttnExportError(f"--paro-grid '{text}' is not FxHxW with three positive sizes, e.g. 13x30x45")
    return tuple(int(p) for p in parts)


def parse_bits(text: str | None, flag_name: str, default: int) -> int:
    if text is None:
        return default
    if text not in BITS:
        raise AttnExportError(f"{flag_name} '{text}' is not one of {', '.join(BITS)}")
    return BITS[text]


@dataclass
class ParoGroup:
    paro: bool | None = None  # None: as the zoo model declares (paro-dit-tiny exports with PARO)
    paro_grid: str | None = None  # "FxHxW"
    paro_prefix: int | None = None
    paro_density: float | None = None  # default: the zoo model's, else defaults.PARO_DENSITY
    paro_block: int | None = None
    paro_qk: str | None = None  # "int8" | "int4" | "fp16"; default: --int8/--int4's precision, else int8
    paro_pv: str | None = None
    paro_buckets: int | None = None
    paro_plan: str | None = None  # reuse a plan (its paro_plan.json) instead of planning

    FLAGS = (
        flag("--paro/--no-paro", field="paro", commands=("export",),
             help="Replace every F.scaled_dot_product_attention call with PARO attention (per-head token order, "
                  "block mask, INT8/INT4): plans them on calibration data and writes OUTDIR/paro_plan.json "
                  "[default: off; on for zoo models built for it]."),
        flag("--paro-grid", field="paro_grid", metavar="FxHxW", commands=("export",),
             help="PARO: the token grid (frames x height x width) after the prefix."),
        flag("--paro-prefix", field="paro_prefix", type=int, metavar="P", commands=("export",),
             help="PARO: text / register tokens before the grid [default: 0]."),
        flag("--paro-density", field="paro_density", type=float, metavar="D", commands=("export",),
             help=f"PARO: fraction of blocks kept per head [default: {defaults.PARO_DENSITY}; a zoo model's own]."),
        flag("--paro-block", field="paro_block", type=int, metavar="N", commands=("export",),
             help=f"PARO: block size of the mask, in tokens [default: {defaults.PARO_BLOCK}; a zoo model's own]."),
        flag("--paro-qk", field="paro_qk", metavar="|".join(BITS), commands=("export",),
             help="PARO: QK precision [default: --int8/--int4's, else int8]."),
        flag("--paro-pv", field="paro_pv", metavar="|".join(BITS), commands=("export",),
             help="PARO: PV precision [default: --int8/--int4's, else int8]."),
        flag("--paro-buckets", field="paro_buckets", type=int, metavar="T", commands=("export",),
             help="PARO: one mask per diffusion-time bucket; the model needs a 'timestep' input in [0, 1] "
                  f"[default: {defaults.PARO_BUCKETS}]."),
        flag("--paro-plan", field="paro_plan", type=click.Path(dir_okay=False), metavar="FILE",
             commands=("export",),
             help="PARO: reuse this plan (an earlier OUTDIR/paro_plan.json) instead of planning."),
    )

    def validate(self) -> None:
        """PARO flags without --paro, and values that are wrong whatever the model (before any work)."""
        given = [name for name in PARO_SETTINGS if getattr(self, f"paro_{name}") is not None]
        if given and self.paro is False:
            raise AttnExportError(f"--paro-{given[0]} applies to PARO: drop --no-paro")
        if self.paro_grid is not None:
            parse_grid(self.paro_grid)
        if self.paro_density is not None and not 0 < self.paro_density <= 1:
            raise AttnExportError(f"--paro-density {self.paro_density} must lie in (0, 1]")
        if self.paro_prefix is not None and self.paro_prefix < 0:
            raise AttnExportError(f"--paro-prefix {self.paro_prefix} must be a non-negative token count")
        if self.paro_block is not None and self.paro_block < 1:
            raise AttnExportError(f"--paro-block {self.paro_block} must be a positive token count")
        if self.paro_buckets is not None and self.paro_buckets < 1:
            raise AttnExportError(f"--paro-buckets {self.paro_buckets} must be at least 1")
        for flag_name, text in (("--paro-qk", self.paro_qk), ("--paro-pv", self.paro_pv)):
            bits = parse_bits(text, flag_name, 16)
            if bits < 16 and getattr(self, "lowering", "plugin") == "attention":
                raise AttnExportError(f"{flag_name} {text}: --lowering attention writes float PARO (ONNX's Attention "
                                      f"has no form of its quantization emulation): drop {flag_name}, or use "
                                      "--lowering plugin")
        if self.paro and getattr(self, "dynamic_spatial", None):  # a zoo model's own PARO: steps/paro.py says so
            raise AttnExportError("--dynamic-spatial: a PARO plan is made for one token count (its grid); export "
                                  "with static spatial dims, or with --no-paro")
        if self.paro and getattr(self, "dtype", "fp32") != "fp32":
            raise AttnExportError(f"--dtype {self.dtype} does not apply to PARO exports (their attention quantizes "
                                  "itself): drop one")

    def paro_given(self) -> bool:
        """Whether a flag asks for PARO whatever the model (--paro, or a grid or plan of its own)."""
        return any(getattr(self, f"paro_{name}") is not None for name in ("grid", "plan"))
