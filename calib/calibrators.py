"""Calibrators: each turns a stream of activation tensors into one amax (the clipping range) for
symmetric quantization. One small interface, as in ModelOpt: ``collect(x)`` (one batch at a time;
memory does not grow with the number of batches), ``reset()``, ``compute_amax()``.

max: the largest |x| seen. The others keep a histogram of x (2 x 2048 bins over [-range, range), folded to
2048 bins of |x| where a method needs |x|) whose range doubles (merging bin pairs) when a larger value
arrives, so it stays exact and fixed in size:
percentile: the |x| below which that share of values lies (default 99.99).
entropy: TensorRT's KL-divergence search over symmetric clipping windows of the signed histogram (256
levels for 8 bits), as ONNX Runtime's entropy calibrator searches.
mse: the clipping point that minimizes the expected squared quantization error.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from attn_export import defaults
from attn_export.errors import AttnExportError

NUM_BINS = 2048
# max: the simplest method that is right on every model measured (docs/accuracy.md); entropy is right there
# too since its search runs on the signed histogram (it clipped normalized digits at their background before).
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
    """Shared state of the histogram methods: counts of x over [-range, range) in 2 * NUM_BINS equal bins
    (``signed``), and their fold onto |x| over [0, range) in NUM_BINS bins (``hist``).

    The signed counts are kept because folding loses which side a value came from: a normalized image's
    background (-0.42, most of the pixels) and its strokes (up to +2.82) share |x| bins, and a KL search over
    |x| cannot see strokes clipped onto the background's bin (docs/accuracy.md)."""

    method = "histogram"

    def __init__(self, num_bits: int = 8):
        self.num_bits = num_bits
        self.reset()

    def reset(self) -> None:
        self.signed = np.zeros(2 * NUM_BINS, dtype=np.int64)
        self.range = 0.0

    def collect(self, x: np.ndarray) -> None:
        values = np.asarray(x, dtype=np.float32).ravel()
        if not values.size:
            return
        peak = float(np.abs(values).max())
        if self.range == 0.0:
            self.range = peak if peak > 0 else 1.0
        while peak > self.range:  # double the range: bin pairs merge exactly into the middle half
            merged = self.signed.reshape(-1, 2).sum(axis=1)
            quarter = np.zeros(NUM_BINS // 2, np.int64)
            self.signed = np.concatenate([quarter, merged, quarter])
            self.range *= 2.0
        counts, _ = np.histogram(values, bins=2 * NUM_BINS, range=(-self.range, self.range))
        self.signed += counts

    @property
    def hist(self) -> np.ndarray:
        """Counts of |x| over [0, range) in NUM_BINS bins: the signed bins folded at zero."""
        return self.signed[NUM_BINS:] + self.signed[:NUM_BINS][::-1]

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(0.0, self.range, NUM_BINS + 1)

    def _checked(self) -> np.ndarray:
        if self.signed.sum() == 0:
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
    """TensorRT's KL search on the signed histogram, as ONNX Runtime's entropy calibrator does: for every
    symmetric window [-edge i, +edge i) (i from start_bin on), P is the window's histogram with the values
    outside folded into its first and last bin, Q is the window quantized to 2**num_bits levels and expanded
    back over its non-empty bins; amax is the edge of the window with the least KL(P || Q), the widest
    one among equals (as ModelOpt breaks ties), so discrete data that many windows represent exactly is
    not clipped. Windows that leave more than ``max_clipped`` of the values outside are not candidates."""

    method = "entropy"

    def __init__(self, num_bits: int = 8, start_bin: int = 128, max_clipped: float = 1e-3):
        if not 0 <= max_clipped < 1:
            raise AttnExportError(f"entropy max_clipped {max_clipped} must lie in [0, 1)")
        self.start_bin, self.max_clipped = start_bin, max_clipped
        super().__init__(num_bits)

    def compute_amax(self) -> float:
        self._checked()
        signed = self.signed.astype(np.float64)
        used = np.nonzero(signed)[0]
        half_width = int(max(NUM_BINS - used.min(), used.max() + 1 - NUM_BINS))  # bins from zero to the last value
        if half_width <= self.start_bin:  # everything fits inside the first candidate: nothing to clip
            return float(self.edges[half_width])
        search = _KLSearch(signed, 2 ** self.num_bits)
        widths = np.arange(max(self.start_bin, self._narrowest_allowed(signed)), NUM_BINS + 1)
        divergences = np.array([search.kl(NUM_BINS - i, NUM_BINS + i) for i in widths])
        widest_best = len(divergences) - 1 - int(np.argmin(divergences[::-1]))
        return float(self.edges[widths[widest_best]])

    def _narrowest_allowed(self, signed: np.ndarray) -> int:
        """The narrowest half-width that leaves at most max_clipped of the values outside. KL(P || Q) barely
        sees values clipped onto a bin that already holds a spike (an image background, a padding value):
        P's edge bin grows by a fraction of itself, and with a 75% spike a clip of every stroke pixel costs
        almost nothing; TensorRT's recipe is meant to clip rare outliers, so candidates clipping more are out."""
        cumulative = np.cumsum(signed)
        total = cumulative[-1]
        widths = np.arange(1, NUM_BINS + 1)
        outside = cumulative[NUM_BINS - widths - 1] * (widths < NUM_BINS) + total - cumulative[NUM_BINS + widths - 1]
        return int(widths[np.argmax(outside <= self.max_clipped * total)])


class _KLSearch:
    """KL(P || Q) of TensorRT's recipe for a window [lo, hi) of bins, from prefix sums in O(levels).

    P: the window's bins, the values left of it folded into bin lo, those right of it into bin hi-1. Q: bin j
    falls into level floor((j - lo) * levels / (hi - lo)); each non-empty bin gets its level's mean over the
    non-empty bins of that level. With T_l / M_l the sum / non-empty count of level l, O_left / O_right the
    outliers and R the total:
    KL = (sum r log r - sum_l T_l log(T_l / M_l) - O_left log(mean of the first level)
          - O_right log(mean of the last level)) / R + log(C / R),
    where r are P's unnormalized bins and C = the window's sum (Q's total).
    """

    def __init__(self, hist: np.ndarray, levels: int):
        self.hist, self.levels = hist, levels
        self.total = hist.sum()
        self.sum = np.concatenate([[0.0], np.cumsum(hist)])
        self.nonzero = np.concatenate([[0], np.cumsum(hist > 0)])
        with np.errstate(divide="ignore", invalid="ignore"):
            hlogh = np.where(hist > 0, hist * np.log(hist), 0.0)
        self.hlogh = np.concatenate([[0.0], np.cumsum(hlogh)])

    def kl(self, lo: int, hi: int) -> float:
        left, right = self.sum[lo], self.total - self.sum[hi]
        h_first, h_last = self.hist[lo], self.hist[hi - 1]
        if (h_first == 0 and left > 0) or (h_last == 0 and right > 0) or self.sum[hi] == self.sum[lo]:
            return np.inf  # P has mass where Q has none
        width = hi - lo
        bounds = lo - (-np.arange(self.levels + 1) * width // self.levels)  # first bin of each level
        sums = self.sum[bounds[1:]] - self.sum[bounds[:-1]]
        members = self.nonzero[bounds[1:]] - self.nonzero[bounds[:-1]]
        used = members > 0
        r_log_r = self.hlogh[hi] - self.hlogh[lo]
        for h, outliers in ((h_first, left), (h_last, right)) if width > 1 else ((h_first, left + right),):
            if outliers > 0:
                r_log_r += (h + outliers) * np.log(h + outliers) - h * np.log(h)
        r_log_q = float(np.sum(sums[used] * np.log(sums[used] / members[used])))
        for level, outliers in ((0, left), (self.levels - 1, right)):
            if outliers > 0:
                r_log_q += outliers * np.log(sums[level] / members[level])
        q_total = self.sum[hi] - self.sum[lo]
        return float((r_log_r - r_log_q) / self.total + np.log(q_total / self.total))


def _kl_after_quantization(hist: np.ndarray, i: int, levels: int, lo: int = 0) -> float:
    """KL of the window [lo, i) of ``hist`` quantized to ``levels`` levels (TensorRT's recipe)."""
    return _KLSearch(np.asarray(hist, dtype=np.float64), levels).kl(lo, i)


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
