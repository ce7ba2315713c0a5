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

from attn_export import defaults
from attn_export.errors import AttnExportError

NUM_BINS = 2048
# max, as ModelOpt's INT8 default: entropy (TensorRT's legacy default) clips nat-mnist's bimodal input
# pixels at the background level and drops top-1 from 97.3% to 55% (docs/accuracy.md).
DEFAULT_METHOD = defaults.CALIB_METHOD


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
        last_used = int(np.nonzero(hist)[0].max()) + 1
        if last_used <= self.start_bin:  # everything fits below the first candidate: nothing to clip
            return float(self.edges[last_used])
        search = _KLSearch(hist, 2 ** (self.num_bits - 1))
        divergences = [search.kl(i) for i in range(self.start_bin, NUM_BINS + 1)]
        return float(self.edges[self.start_bin + int(np.argmin(divergences))])


class _KLSearch:
    """KL(P || Q) of TensorRT's recipe for every clipping bin i, from prefix sums in O(levels) per i.

    P: the first i bins, outliers folded into bin i-1. Q: bin j < i falls into level floor(j * levels / i);
    each non-empty bin gets its level's mean over the non-empty bins of that level. With T_l / M_l the sum
    / non-empty count of level l, O the outliers and R the total:
    KL = (sum r log r - sum_l T_l log(T_l / M_l) - O log(mean of the last level)) / R + log(C_i / R),
    where r are P's unnormalized bins and C_i = sum of the first i bins (Q's total).
    """

    def __init__(self, hist: np.ndarray, levels: int):
        self.hist, self.levels = hist, levels
        self.total = hist.sum()
        self.sum = np.concatenate([[0.0], np.cumsum(hist)])
        self.nonzero = np.concatenate([[0], np.cumsum(hist > 0)])
        with np.errstate(divide="ignore", invalid="ignore"):
            hlogh = np.where(hist > 0, hist * np.log(hist), 0.0)
        self.hlogh = np.concatenate([[0.0], np.cumsum(hlogh)])

    def kl(self, i: int) -> float:
        h_last = self.hist[i - 1]
        outliers = self.total - self.sum[i]
        if h_last == 0 and outliers > 0:
            return np.inf  # P has mass where Q has none
        bounds = -(-np.arange(self.levels + 1) * i // self.levels)  # first bin of each level: ceil(l * i / L)
        sums = self.sum[bounds[1:]] - self.sum[bounds[:-1]]
        members = self.nonzero[bounds[1:]] - self.nonzero[bounds[:-1]]
        used = members > 0
        means = sums[used] / members[used]
        r_last = h_last + outliers
        r_log_r = self.hlogh[i - 1] + (r_last * np.log(r_last) if r_last > 0 else 0.0)
        r_log_q = float(np.sum(sums[used] * np.log(means)))
        if outliers > 0:
            last_level = (i - 1) * self.levels // i
            r_log_q += outliers * np.log(sums[last_level] / members[last_level])
        q_total = self.sum[i]
        if q_total == 0:
            return np.inf
        return float((r_log_r - r_log_q) / self.total + np.log(q_total / self.total))


def _kl_after_quantization(hist: np.ndarray, i: int, levels: int) -> float:
    return _KLSearch(np.asarray(hist, dtype=np.float64), levels).kl(i)


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
        raise AttnExportError(f"unknown calibration method '{config.method}'; use one of "
                              f"{', '.join(CALIBRATORS)}") from None
    return cls(**config.options)
