"""The TensorRT engine: whether to build one, its optimization profiles and timing cache."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import click

from attn_export import defaults, shapes
from attn_export.errors import AttnExportError
from attn_export.options.flags import flag


@dataclass
class EngineGroup:
    engine: bool | None = None  # None: build one when TensorRT and the plugin library are present
    max_batch: int = defaults.MAX_BATCH
    timing_cache: str | None = None
    shapes: Sequence[str] = ()  # --shapes NAME=MIN:OPT:MAX: the engine's first optimization profile
    profiles: Sequence[str] = ()  # --profile "NAME=MIN:OPT:MAX,...": one more profile each

    FLAGS = (
        flag("--engine/--no-engine", field="engine", commands=("export",),
             help="Build OUTDIR/model.engine with TensorRT and the plugin library [default: when both are present]; "
                  "parity then also runs the engine. --engine without them exits 3."),
        flag("--max-batch", field="max_batch", type=int, show_default=True, commands=("export", "engine"),
             help="Largest batch of the engine's optimization profile (with --dynamic-batch)."),
        flag("--timing-cache", field="timing_cache", type=click.Path(dir_okay=False), metavar="FILE",
             commands=("export", "engine"), help="TensorRT timing cache to read and update (speeds up rebuilds)."),
        flag("--shapes", field="shapes", multiple=True, metavar="NAME=MIN:OPT:MAX", commands=("export", "engine"),
             help="Engine optimization profile range of an input, e.g. images=1x3x64x64:8x3x224x224:32x3x384x384 "
                  "(repeatable; only dims the ONNX file leaves dynamic may vary) [default: the check's shapes, "
                  "batch 1 to --max-batch]."),
        flag("--profile", field="profiles", multiple=True, metavar="NAME=MIN:OPT:MAX,...",
             commands=("export", "engine"),
             help="One more optimization profile: comma-separated ranges (repeatable; inputs left out take the "
                  "default range). --shapes gives the first profile."),
    )

    def validate(self) -> None:
        if self.max_batch < 1:
            raise AttnExportError(f"--max-batch {self.max_batch} must be at least 1")
        shapes.parse_profiles(self.shapes, self.profiles)

    def parse_shape_profiles(self) -> list:
        """attn_export.shapes.Profile per --shapes / --profile."""
        return shapes.parse_profiles(self.shapes, self.profiles)
