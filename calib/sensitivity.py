"""Which quantized layers cost accuracy, and keeping the worst of them in float.

``layer_sensitivity`` quantizes one layer at a time (every other layer float, activation ranges from the run's
calibration) and measures the model's output against the float file on the check inputs (held-out real samples
where there are some): the layers whose quantization alone hurts most come first. ``auto_exclude`` then keeps
the most sensitive layers in float, one at a time, until the whole quantized model meets a target worst-sample
cosine, and names what it kept. Both run ONNX Runtime with Q/DQ evaluated exactly (onnxruntime_cpu.EXACT_QDQ).
"""

from __future__ import annotations

import glob
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
import onnx

from attn_export.calib import qdq
from attn_export.errors import AttnExportError
from attn_export.onnxruntime_cpu import onnxruntime_session
from attn_export.quality import sample_cosines


@dataclass
class LayerSensitivity:
    layer: str  # the node name of the Conv / MatMul / Gemm
    op: str
    worst_cosine: float  # the worst sample's cosine with the float model (every output)
    relative_error: float  # mean |error| / mean |float| over every output and sample

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Fallback:
    """What --auto-exclude kept in float and what the model then measured."""

    target: float
    kept_float: list[str]
    worst_cosine: float
    steps: list[dict]  # per step: the layer kept in float and the worst cosine after it

    def to_dict(self) -> dict:
        return asdict(self)


class OutputJudge:
    """The float file's outputs on the check feeds, and how far a candidate file's outputs are from them."""

    def __init__(self, float_model: onnx.ModelProto, feeds: Sequence[Mapping[str, np.ndarray]]):
        self.feeds = [dict(f) for f in feeds]
        self.reference = _run(float_model.SerializeToString(), self.feeds, exact_qdq=False)

    def measure(self, model: onnx.ModelProto) -> tuple[float, float]:
        """(worst sample cosine, relative mean error) of ``model`` against the float outputs."""
        got = _run(model.SerializeToString(), self.feeds, exact_qdq=True)
        worst, error, scale = 1.0, 0.0, 0.0
        for feed, ref_outputs, cand_outputs in zip(self.feeds, self.reference, got):
            rows = int(next(iter(feed.values())).shape[0]) if feed else 1
            for ref, cand in zip(ref_outputs, cand_outputs):
                worst = min([worst, *(c if np.isfinite(c) else -1.0 for c in sample_cosines(ref, cand, rows))])
                error += float(np.abs(ref.astype(np.float64) - cand).sum())
                scale += float(np.abs(ref.astype(np.float64)).sum())
        return worst, (error / scale if scale > 0 else 0.0)


def _run(model: bytes, feeds, exact_qdq: bool) -> list[list[np.ndarray]]:
    session = onnxruntime_session(model, exact_qdq=exact_qdq)
    return [session.run(None, feed) for feed in feeds]


def only(layer: str, layers: Sequence[str]) -> tuple[str, ...]:
    """Exclude patterns that leave exactly ``layer`` quantized (node names escaped: they may hold [ ] * ?)."""
    return tuple(glob.escape(name) for name in layers if name != layer)


def layer_sensitivity(model: onnx.ModelProto, options: qdq.QuantOptions, amax: Mapping[str, float],
                      judge: OutputJudge) -> list[LayerSensitivity]:
    """Every quantized layer's cost when it alone is quantized, the most harmful first."""
    layers = qdq.quantized_layers(model, options.mode, options.exclude)
    results = []
    for name, op in layers:
        alone = replace(options, exclude=(*options.exclude, *only(name, [n for n, _ in layers])))
        worst, error = judge.measure(qdq.quantize(model, None, alone, cached_amax=amax).model)
        results.append(LayerSensitivity(name, op, worst, error))
    return sorted(results, key=lambda r: (-r.relative_error, r.worst_cosine))


def auto_exclude(model: onnx.ModelProto, options: qdq.QuantOptions, amax: Mapping[str, float], judge: OutputJudge,
                 ranking: Sequence[LayerSensitivity], target: float) -> tuple[qdq.QuantResult, Fallback]:
    """Keep layers of ``ranking`` in float, most sensitive first, until the quantized model's worst sample cosine
    reaches ``target``; returns the quantized model and what was kept."""
    kept: list[str] = []
    result = qdq.quantize(model, None, options, cached_amax=amax)
    worst, _ = judge.measure(result.model)
    steps = [{"kept_float": None, "worst_cosine": worst}]
    for layer in ranking:
        if worst >= target:
            break
        if len(kept) + 1 == len(ranking):  # only the float model itself would be left
            raise AttnExportError(f"--auto-exclude {target}: with every layer but '{layer.layer}' in float the worst "
                                  f"sample cosine is still {worst:.5f}; lower the target or drop --auto-exclude")
        kept.append(layer.layer)
        trial = replace(options, exclude=(*options.exclude, *(glob.escape(n) for n in kept)))
        result = qdq.quantize(model, None, trial, cached_amax=amax)
        worst, _ = judge.measure(result.model)
        steps.append({"kept_float": layer.layer, "worst_cosine": worst})
    return result, Fallback(target, kept, worst, steps)
