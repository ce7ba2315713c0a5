"""Wall-clock timing shared by the CPU benchmarks (run as `python bench/NAME.py`: bench/ is on sys.path)."""

from __future__ import annotations

import statistics
import time


def median_ms(fn, reps: int) -> float:
    """Median wall time of ``fn()`` in ms over ``reps`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)
