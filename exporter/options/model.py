"""Where the model comes from: --input-shape, --factory, --trust-pickle (the loader's arguments, not ExportOptions)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from attn_export.options.flags import flag
from attn_export.shapes import parse_input_shapes


@dataclass
class ModelSource:
    """How to load MODEL: the keyword arguments of attn_export.run / check beside the ExportOptions."""

    input_shapes: Sequence[str] = ()
    factory: str | None = None
    trust_pickle: bool = False

    FLAGS = (
        flag("--input-shape", field="input_shapes", multiple=True, metavar="NAME=DIMS",
             commands=("export", "check", "ci-template"),
             help="Shape of an input, e.g. images=1x3x64x64 (repeatable)."),
        flag("--factory", field="factory", metavar="MODULE:FUNC", commands=("export", "check", "bench", "ci-template"),
             help="Function that builds the model for a checkpoint (module:function or file.py:function).",
             help_for={"bench": "With --model: the function that builds it.",
                       "ci-template": "For a checkpoint MODEL: the function that builds it."}),
        flag("--trust-pickle", field="trust_pickle", is_flag=True, commands=("export", "check", "bench"),
             help="Allow loading a pickled whole module; this runs code from the file.",
             help_for={"bench": "Allow loading a pickled model for the eager rows."}),
    )

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """--input-shape as a mapping (checked: a malformed entry exits 2 before the model loads)."""
        return parse_input_shapes(self.input_shapes)

    def given(self) -> bool:
        return bool(self.input_shapes or self.factory)
