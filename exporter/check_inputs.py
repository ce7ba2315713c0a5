"""What a check runs on, and where every input came from.

A quality gate is only as good as its inputs: a quantized model that collapsed on real data can look perfect
on seeded random inputs, which a trained model barely reacts to. So when the user gave real data (--calib-data,
or a zoo model's own data), the first samples of it are held out (never calibrated or planned on) and the
checks run on them, next to the random inputs at the extra shapes that prove the file's dynamic axes.
``--inputs`` wins over both. With only random inputs, quantized and PARO checks carry RANDOM_CHECK_WARNING.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from attn_export import defaults

RANDOM_CHECK_WARNING = ("the {what} check ran on seeded RANDOM inputs only{why}: a model can pass on them and "
                        "still collapse on real data; pass --calib-data with real samples (some are held out for the "
                        "check) or --inputs FILE.npz")


@dataclass
class CheckInputs:
    """The feeds of a check, each with where it came from and a name for every sample (batch row) in it."""

    feeds: list[dict]
    origins: list[str]  # per feed: "held-out real", "random", "--inputs"
    samples: list[list[str]]  # per feed, per batch row
    kind: str  # "user" (--inputs), "real" (held-out real samples first), "random"
    description: str
    calibration: str = ""  # what the held-out samples were taken from
    notes: list[str] = field(default_factory=list)

    @property
    def real(self) -> bool:
        return self.kind in ("user", "real")

    def random_warning(self, what: str) -> str | None:
        """The loud warning of a quality check (``what``: "int8", "PARO", ...) that only saw random inputs."""
        why = f" ({'; '.join(self.notes)})" if self.notes else ""
        return None if self.real else RANDOM_CHECK_WARNING.format(what=what, why=why)

    def subset(self, feeds: Sequence[int]) -> CheckInputs:
        """These inputs restricted to the input sets ``feeds`` (indices)."""
        return CheckInputs([self.feeds[i] for i in feeds], [self.origins[i] for i in feeds],
                           [self.samples[i] for i in feeds], self.kind, self.description, self.calibration)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "description": self.description,
                "feeds": [{"origin": o, "samples": s, "shapes": {n: list(a.shape) for n, a in f.items()}}
                          for f, o, s in zip(self.feeds, self.origins, self.samples)],
                "notes": self.notes}


@dataclass
class HeldOut:
    """Feeds held out of the calibration data for the checks, and what they were taken from."""

    feeds: list[dict]
    description: str
    why_none: str = ""  # why no sample was held out of real data

    @property
    def rows(self) -> int:
        """The samples held out (calibration and planning skip as many)."""
        return held_rows(self.feeds)


def count_rows(feeds, limit: int) -> int | None:
    """The samples in a stream of unknown length, read and dropped one feed at a time; None past ``limit``."""
    rows = 0
    for feed in feeds:
        rows += _rows({n: np.asarray(v) for n, v in feed.items()})
        if rows > limit:
            return None
    return rows


def hold_out_count(total: int | None, wanted: int = defaults.CHECK_SAMPLES) -> int:
    """How many samples to hold out of a source of ``total`` (None: unknown) samples: ``wanted``, but never
    more than a quarter of a known total, so calibration keeps most of the data."""
    if total is None:
        return wanted
    return min(wanted, total // 4)


def split_held_out(feeds, count: int) -> tuple[list[dict], Iterator]:
    """The first ``count`` samples (rows) of ``feeds``, and the rest of the stream. A data loader's batch that
    straddles the boundary is split: its first rows are held out, the others stay in the stream."""
    iterator = iter(feeds)
    held, rows = [], 0
    while rows < count:
        feed = next(iterator, None)
        if feed is None:
            break
        feed = {name: np.asarray(value) for name, value in feed.items()}
        take = min(_rows(feed), count - rows)
        held.append(_slice(feed, 0, take))
        rows += take
        if take < _rows(feed):
            return held, itertools.chain([_slice(feed, take, None)], iterator)
    return held, iterator


def skip_held_out(feeds, rows: int) -> Iterator:
    """``feeds`` (a fresh stream of the same source) without its first ``rows`` samples (those held out)."""
    return split_held_out(feeds, rows)[1]


def held_rows(held: Sequence[Mapping[str, np.ndarray]]) -> int:
    return sum(_rows(f) for f in held)


def _slice(feed: Mapping[str, np.ndarray], start: int, stop: int | None) -> dict:
    rows = _rows(feed)
    if start == 0 and (stop is None or stop >= rows):
        return dict(feed)
    return {n: a[start:stop] if np.ndim(a) and a.shape[0] == rows else a for n, a in feed.items()}


def _rows(feed: Mapping[str, np.ndarray]) -> int:
    first = next(iter(feed.values()), None)
    return int(first.shape[0]) if first is not None and np.ndim(first) else 1


def real_batches(held: Sequence[Mapping[str, np.ndarray]], description: str, batch: int | None,
                 cap: int) -> tuple[list[dict], list[list[str]]]:
    """Held-out feeds regrouped into check batches: ``batch`` rows each where the file's batch is static
    (rows that do not fill one are dropped), else up to ``cap`` rows. Each row is named after its place in
    the source ("SOURCE #i")."""
    names = list(held[0]) if held else []
    rows = [{n: feed[n][i:i + 1] for n in names} for feed in held for i in range(_rows(feed))]
    size = batch or max(1, cap)
    feeds, samples = [], []
    for members in _by_shape(rows).values():  # rows of one shape batch together (dynamic dims may differ)
        for start in range(0, len(members), size):
            chunk = members[start:start + size]
            if batch and len(chunk) < batch:
                break
            feeds.append({n: np.ascontiguousarray(np.concatenate([rows[i][n] for i in chunk])) for n in names})
            samples.append([f"{description} #{i}" for i in chunk])
    return feeds, samples


def _by_shape(rows: Sequence[Mapping[str, np.ndarray]]) -> dict[tuple, list[int]]:
    groups: dict[tuple, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(tuple((n, a.shape, str(a.dtype)) for n, a in row.items()), []).append(i)
    return groups


def combine(random_feeds: list[dict], random_source: str, user: bool, held: list[dict] | None = None,
            held_description: str = "", static_batch: int | None = None,
            cap: int = defaults.CHECK_BATCH, why_random: str = "") -> CheckInputs:
    """The check's inputs: the user's; or held-out real samples in place of the random feed at the export
    shape, followed by the random feeds at the extra shapes; or the random feeds alone."""
    if user:
        names = [_names("--inputs", f) for f in random_feeds]
        return CheckInputs(random_feeds, ["--inputs"] * len(random_feeds), names, "user", random_source)
    random_samples = [_names(f"random set {i}", f) for i, f in enumerate(random_feeds)]
    if held:
        feeds, samples = real_batches(held, held_description, static_batch, cap)
        if feeds:
            count = sum(map(len, samples))
            extra = random_feeds[1:]
            description = (f"{count} real samples held out of {held_description} (never calibrated or planned on)"
                           + (f", plus {len(extra)} random input set(s) at the extra shapes that prove the dynamic "
                              "axes" if extra else ""))
            return CheckInputs(feeds + extra, ["held-out real"] * len(feeds) + ["random"] * len(extra),
                               samples + random_samples[1:], "real", description, held_description)
    if held and not why_random:
        why_random = f"the {held_rows(held)} held-out sample(s) fill no batch of {static_batch} the file takes"
    return CheckInputs(random_feeds, ["random"] * len(random_feeds), random_samples, "random", random_source,
                       notes=[why_random] if why_random else [])


def _names(prefix: str, feed: Mapping[str, np.ndarray]) -> list[str]:
    count = _rows(feed)
    return [prefix] if count == 1 else [f"{prefix} #{i}" for i in range(count)]
