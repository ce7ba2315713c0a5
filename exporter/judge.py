"""The one check step: it reads the criterion from the file it judges and applies it, for `attn-export MODEL`,
`attn-export check` and `check --reference` alike. Q/DQ and PARO files: the quality gate (worst-sample cosine, mean
error, top-1 agreement on real samples) with its null control; float files: elementwise tolerances of the file's
precision."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from attn_export import controls, precision
from attn_export.artifacts import paro_in, quantized_mode
from attn_export.call_convert import quiet_third_party
from attn_export.loader import LoadedModel
from attn_export.parity import Reference, check_parity
from attn_export.quality import check_quantized


@dataclass(frozen=True)
class Criterion:
    """How a file is judged: ``mode`` "int8" / "int4" (Q/DQ), "paro-int8" / ... (PARO: the coarsest bits of its
    nodes), or None (float: tolerances of ``dtype``); ``buckets``: a PARO file's timestep buckets."""

    mode: str | None
    qdq: bool
    dtype: str
    buckets: int = 1

    @classmethod
    def of(cls, onnx_path: Path) -> Criterion:
        qdq_mode, paro = quantized_mode(onnx_path), paro_in(onnx_path)
        return cls(qdq_mode or (paro["mode"] if paro else None), qdq_mode is not None,
                   precision.onnx_precision(onnx_path), paro["buckets"] if paro else 1)

    @classmethod
    def paro(cls, settings, dtype: str) -> Criterion:
        """A PARO export's quality criterion, from its settings: --lowering attention writes standard ops, so the
        file no longer names its PARO precision."""
        return cls(settings.mode, False, dtype, settings.buckets)

    @classmethod
    def elementwise(cls, dtype: str) -> Criterion:
        """Float tolerances whatever the file holds (an export checks its PARO file against the computation it
        exports, element by element, before the quality gate compares it with the dense model)."""
        return cls(None, False, dtype)

    def title(self, reference: str, engine: bool) -> str:
        if self.mode:
            return f"check {self.mode} parity: {reference} vs quantized ONNX" + (" and TensorRT" if engine else "")
        return f"check parity: {reference} vs ONNX Runtime" + (" vs TensorRT" if engine else "")


def judge(criterion: Criterion, reference: Reference, onnx_path: Path, inputs, opts, engine_path=None,
          tolerances=None, export: bool = False):
    """The report of ``onnx_path`` (and the engine) against ``reference`` on ``inputs`` (CheckInputs) by
    ``criterion``; ``tolerances``: the float check's, else the precision's defaults with the user's."""
    if criterion.mode:
        control = (controls.first_quantized_input_zeroed(onnx_path) if criterion.qdq
                   else controls.attention_zeroed(onnx_path))
        return check_quantized(reference, onnx_path, inputs, criterion.mode, opts.thresholds(criterion.mode),
                               engine_path=engine_path, fused_row=criterion.qdq, control=control,
                               shuffle_control=criterion.qdq, allow_inconclusive=opts.allow_inconclusive)
    dtype = criterion.dtype
    refusal = precision.onnxruntime_refusal(onnx_path) if dtype != "fp32" else None
    if refusal and engine_path is None:
        raise precision.unrunnable_error(Path(onnx_path).name, dtype, refusal, export=export)
    return check_parity(reference, onnx_path, inputs.feeds, tolerances or precision.tolerances(dtype, opts.tolerances),
                        opts.command, inputs.description, engine_path=engine_path, precision=dtype,
                        skip_onnxruntime=refusal)


def parity_reference(loaded: LoadedModel, feed: dict):
    """The reference of the parity check: the model as the user wrote it, when third-party modules were
    converted and the original runs here (so a wrong conversion fails the check); else the loaded model."""
    if loaded.original is None:
        return Reference(loaded.module)
    args = [torch.from_numpy(np.ascontiguousarray(feed[name])) for name in loaded.input_names]
    try:
        with torch.inference_mode(), quiet_third_party():
            loaded.original(*args)
    except Exception as exc:  # noqa: BLE001 - e.g. a third-party kernel that needs a GPU
        brief = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        return Reference(loaded.module, "pytorch-converted",
                         f"the converted model on the CPU: the original cannot run here ({brief})")
    return Reference(loaded.original, "pytorch-original",
                     "the model as written (its third-party attention modules and calls unconverted), on the CPU")
