"""Calibrators: each turns a stream of activation tensors into one amax (the clipping range) for
symmetric quantization. One small interface, as in ModelOpt: ``collect(x)`` (one batch at a time;
memory does not grow with the number of batches), ``reset()``, ``compute_amax()``.

max: the largest |x| seen. The others keep a 2048-bin histogram of |x| whose range doubles (merging bin
pairs) when a larger value arrives, so it stays exact and fixed in size:
percentile: the |x| below which that share of values lies (default 99.99).
entropy: TensorRT's KL-divergence search over clipping points for 8-bit (128 levels of |x|).
mse: the clipping point that minimizes the expected squared quantization error.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from attn_export.errors import AttnExportError

NUM_BINS = 2048
# max, as ModelOpt's INT8 default: entropy (TensorRT's legacy default) clips nat-mnist's bimodal input
# pixels at the background level and drops top-1 from 97.3% to 55% (docs/accuracy.md).
DEFAULT_METHOD = "max"


class MaxCalibrator:
    method = "max"

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self._amax = 0.0
        self._seen = False

    def collect(self, x: np.ndarray) -> None:
        if x.size:
            self._amax = max(self._amax, float(np.abs(x).max()))
            self._seen = True

    def compute_amax(self) -> float:
        if not self._seen:
            raise AttnExportError("calibration saw no values; give at least one calibration sample")
        return self._amax


class HistogramCalibrator:
    """Shared state of the histogram methods: counts of |x| over [0, range) in NUM_BINS equal bins."""

    method = "histogram"

    def __init__(self, num_bits: int = 8):
        self.num_bits = num_bits
        self.reset()

    def reset(self) -> None:
        self.hist = np.zeros(NUM_BINS, dtype=np.int64)
        self.range = 0.0

    def collect(self, x: np.ndarray) -> None:
        values = np.abs(np.asarray(x, dtype=np.float32)).ravel()
        if not values.size:
            return
        peak = float(values.max())
        if self.range == 0.0:
            self.range = peak if peak > 0 else 1.0
        while peak > self.range:  # double the range: bin pairs merge exactly
            self.hist = np.concatenate([self.hist.reshape(-1, 2).sum(axis=1), np.zeros(NUM_BINS // 2, np.int64)])
            self.range *= 2.0
        counts, _ = np.histogram(values, bins=NUM_BINS, range=(0.0, self.range))
        self.hist += counts

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(0.0, self.range, NUM_BINS + 1)

    def _checked(self) -> np.ndarray:
        if self.hist.sum() == 0:
            raise AttnExportError("calibration saw no values; give at least one calibration sample")
        return self.hist

    def compute_amax(self) -> float:  # pragma: no cover - subclasses define it
        raise NotImplementedError


class PercentileCalibrator(HistogramCalibrator):
    method = "percentile"

    def __init__(self, percentile: float = 99.99, num_bits: int = 8):
        if not 0 < percentile <= 100:
            raise AttnExportError(f"percentile {percentile} must lie in (0, 100]")
        self.percentile = percentile
        super().__init__(num_bits)

    def compute_amax(self) -> float:
        hist = self._checked()
        cdf = np.cumsum(hist) / hist.sum()
        index = int(np.searchsorted(cdf, self.percentile / 100.0))
        return float(self.edges[min(index, NUM_BINS - 1) + 1])


class EntropyCalibrator(HistogramCalibrator):
    """Pick the clipping bin i (from 128 on) whose clipped histogram P (outliers folded into the last
    bin) loses least information (KL(P || Q)) when quantized to 2**(num_bits-1) levels and expanded back."""

    method = "entropy"

    def __init__(self, num_bits: int = 8, start_bin: int = 128):
        self.start_bin = start_bin
        super().__init__(num_bits)

    def compute_amax(self) -> float:
        hist = self._checked().astype(np.float64)
        levels = 2 ** (self.num_bits - 1)
        last_used = int(np.nonzero(hist)[0].max()) + 1
        if last_used <= self.start_bin:  # everything fits below the first candidate: nothing to clip
            return float(self.edges[last_used])
        best_i, best_kl = NUM_BINS, np.inf
        for i in range(self.start_bin, NUM_BINS + 1):
            kl = _kl_after_quantization(hist, i, levels)
            if kl < best_kl:
                best_i, best_kl = i, kl
        return float(self.edges[best_i])


def _kl_after_quantization(hist: np.ndarray, i: int, levels: int) -> float:
    reference = hist[:i].copy()
    reference[-1] += hist[i:].sum()  # clip: outliers land in the last kept bin
    source = hist[:i]
    level = (np.arange(i) * levels) // i  # the quantization level each kept bin falls into
    used = source > 0
    totals = np.bincount(level, weights=source, minlength=levels)
    members = np.bincount(level[used], minlength=levels)
    expanded = np.where(used, totals[level] / np.maximum(members[level], 1), 0.0)
    p = reference / reference.sum()
    q_sum = expanded.sum()
    if q_sum == 0:
        return np.inf
    q = expanded / q_sum
    support = p > 0
    if np.any(q[support] == 0):
        return np.inf
    return float(np.sum(p[support] * np.log(p[support] / q[support])))


class MseCalibrator(HistogramCalibrator):
    """Pick, among 128 clipping points spread over the histogram, the one with the least expected
    squared error of symmetric num_bits quantization (rounding inside, clipping outside)."""

    method = "mse"

    def compute_amax(self) -> float:
        hist = self._checked().astype(np.float64)
        edges = self.edges
        centers = (edges[:-1] + edges[1:]) / 2
        qmax = 2 ** (self.num_bits - 1) - 1
        best, best_err = edges[-1], np.inf
        for i in np.unique(np.linspace(8, NUM_BINS, 128).astype(int)):
            amax = edges[i]
            scale = amax / qmax
            quantized = np.clip(np.round(centers / scale), -qmax, qmax) * scale
            err = float(np.sum(hist * (centers - quantized) ** 2))
            if err < best_err:
                best, best_err = amax, err
        return float(best)


@dataclass(frozen=True)
class CalibConfig:
    """A calibration method as data: its name and keyword options."""

    method: str = DEFAULT_METHOD
    options: dict = field(default_factory=dict)


CALIBRATORS = {
    "max": MaxCalibrator,
    "percentile": PercentileCalibrator,
    "entropy": EntropyCalibrator,
    "mse": MseCalibrator,
}


def make_calibrator(config: CalibConfig | str):
    config = CalibConfig(config) if isinstance(config, str) else config
    try:
        cls = CALIBRATORS[config.method]
    except KeyError:
        raise AttnExportError(f"unknown calibration method '{config.method}'; use one of {', '.join(CALIBRATORS)}") from None
    return cls(**config.options)
