"""`attn-export bench`: which runtimes and batches to time, how often, on which file of OUTDIR."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from attn_export import defaults
from attn_export.errors import AttnExportError
from attn_export.options.flags import flag

RUNTIMES = ("ort", "trt", "torch")


@dataclass
class BenchOptions:
    runtimes: Sequence[str] = ()  # empty: all
    batches: Sequence[int] = ()  # empty: defaults.BENCH_BATCHES
    iters: int = defaults.BENCH_ITERS
    warmup: int = defaults.BENCH_WARMUP
    onnx: str = "model.onnx"  # the file in OUTDIR to run on ONNX Runtime
    model: str | None = None  # for PyTorch eager [the report's model]
    factory: str | None = None
    trust_pickle: bool = False
    seed: int = defaults.SEED

    FLAGS = (
        flag("--runtime", field="runtimes", multiple=True, metavar="|".join(RUNTIMES), commands=("bench",),
             help="Runtimes to time (repeatable) [default: all; ort also tries ONNX Runtime's CUDA and TensorRT "
                  "providers, torch also CUDA; what is absent is listed as skipped]."),
        flag("--batch", field="batches", multiple=True, type=int, metavar="N", commands=("bench",),
             help=f"Batch sizes (repeatable) [default: {', '.join(map(str, defaults.BENCH_BATCHES))}]."),
        flag("--iters", field="iters", type=int, show_default=True, commands=("bench",), help="Timed runs per row."),
        flag("--warmup", field="warmup", type=int, show_default=True, commands=("bench",),
             help="Untimed runs before them."),
        flag("--onnx", field="onnx", metavar="FILE", show_default=True, commands=("bench",),
             help="The ONNX file in OUTDIR to run (e.g. model.int8.onnx)."),
        flag("--model", field="model", metavar="MODEL", commands=("bench",),
             help="The PyTorch model for the eager rows [default: report.json's, with its --factory and "
                  "--input-shape]."),
    )

    def prepare(self) -> BenchOptions:
        unknown = [r for r in self.runtimes if r not in RUNTIMES]
        if unknown:
            raise AttnExportError(f"--runtime {unknown[0]} is not one of {', '.join(RUNTIMES)}")
        self.runtimes = tuple(dict.fromkeys(self.runtimes or RUNTIMES))
        self.batches = tuple(dict.fromkeys(self.batches or defaults.BENCH_BATCHES))
        for flag_name, value, least in (("--iters", self.iters, 1), ("--warmup", self.warmup, 0)):
            if value < least:
                raise AttnExportError(f"{flag_name} {value} must be at least {least}")
        bad = [b for b in self.batches if b < 1]
        if bad:
            raise AttnExportError(f"--batch {bad[0]} must be at least 1")
        return self
