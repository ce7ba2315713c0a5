"""The C++ index math shared by the CUDA kernel and the plugin (plugins/kernels/na_index.h) against
the Python reference formula, on thousands of random per-axis configurations."""

from __future__ import annotations

import random

import pytest

from attn_export.models import na_kernel_sim as sim
from attn_export.models.neighborhood import axis_window

from native_tools import answer_lines, ask, build_dump


@pytest.fixture(scope="module")
def index_dump(tmp_path_factory):
    return build_dump(tmp_path_factory, "na_index_dump")


def random_axes(count: int, seed: int) -> list[tuple[int, int, int, int, bool]]:
    rng = random.Random(seed)
    configs = []
    while len(configs) < count:
        k = rng.randint(2, 13)
        s = rng.randint(1, k)
        d = rng.choice([1, 1, 2, 3, 5])
        n = rng.randint(k * d, k * d + 40)
        configs.append((n, k, s, d, rng.random() < 0.35))
    return configs


def reference_windows(n, k, s, d, causal) -> list[tuple[int, int]]:
    """Window of each query, in the dump's order (group, then position), from axis_window."""
    key, _, valid = axis_window(n, k, s, d, causal)
    windows = []
    for g in range(min(d, n)):
        for i in range(g, n, d):
            keys = key[i][valid[i]] // d
            windows.append((int(keys.min()), int(keys.max()) + 1))
            # The window is contiguous in group coordinates: the kernel's [begin, end) test is exact.
            assert len(keys) == windows[-1][1] - windows[-1][0]
    return windows


def test_windows_match_reference_formula(index_dump):
    configs = random_axes(3000, seed=1)
    rows = ask(index_dump, [f"W {n} {k} {s} {d} {int(c)}" for n, k, s, d, c in configs])
    for config, row in zip(configs, rows, strict=True):
        got = list(zip(row[0::2], row[1::2]))
        assert got == reference_windows(*config), f"window mismatch for n,k,s,d,causal={config}"


def test_tile_kv_range_is_the_union_of_the_tile_windows(index_dump):
    configs = [(*c, random.Random(i).choice([1, 2, 4, 8, 16, 64])) for i, c in enumerate(random_axes(2000, seed=2))]
    rows = ask(index_dump, [f"T {n} {k} {s} {d} {int(c)} {t}" for n, k, s, d, c, t in configs])
    for (n, k, s, d, causal, tile), row in zip(configs, rows, strict=True):
        windows = reference_windows(n, k, s, d, causal)
        expected, offset = [], 0
        for g in range(min(d, n)):
            n_g = (n - g + d - 1) // d
            group = windows[offset:offset + n_g]
            offset += n_g
            for first in range(0, n_g, tile):
                part = group[first:first + tile]
                expected.append((min(b for b, _ in part), max(e for _, e in part)))
        assert list(zip(row[0::2], row[1::2])) == expected, f"kv range mismatch for {(n, k, s, d, causal, tile)}"


def test_tile_shape_matches_the_simulator(index_dump):
    rng = random.Random(3)
    configs = []
    for _ in range(1000):
        rank = rng.randint(1, 3)
        n = [1] * (3 - rank) + [rng.randint(2, 300) for _ in range(rank)]
        d = [1] * (3 - rank) + [rng.choice([1, 1, 2, 4]) for _ in range(rank)]
        configs.append((n, d, rng.choice([16, 32, 64])))
    rows = ask(index_dump, [f"S {' '.join(map(str, n + d))} {t}" for n, d, t in configs])
    for (n, d, tokens), row in zip(configs, rows, strict=True):
        assert row == sim.choose_tile_shape(n, d, tokens)
        assert 1 <= row[0] * row[1] * row[2] <= tokens


def test_interior_kv_tiles_are_exactly_those_inside_every_window(index_dump):
    """kv_tile_interior (the core's rule for skipping the element mask) against brute force: a kv tile is
    interior iff every key slot of it is below the tile range's end and inside the window of every query of
    the query tile, on thousands of random axes and tile sizes."""
    configs = [(*c, tile) for c, tile in zip(random_axes(1500, seed=4), random.Random(5).choices([1, 2, 4, 8, 16, 64],
                                                                                                  k=1500), strict=True)]
    rows = ask(index_dump, [f"I {n} {k} {s} {d} {int(c)} {tile}" for n, k, s, d, c, tile in configs])
    interior_seen = 0
    for (n, k, s, d, causal, tile), row in zip(configs, rows, strict=True):
        expected = []
        for g in range(min(d, n)):
            n_g = sim.ceil_div(n - g, d)
            for first in range(0, n_g, tile):
                last = min(first + tile, n_g) - 1
                begin, end = sim.tile_kv_range(first, last, n_g, k, s, causal)
                windows = [sim.window(i, n_g, k, s, causal) for i in range(first, last + 1)]
                for kv in range(begin, end, tile):
                    keys = range(kv, kv + tile)
                    inside = all(j < end and lo <= j < hi for j in keys for lo, hi in windows)
                    expected += [kv, int(inside)]
        assert row == expected, f"interior tiles differ for n,k,s,d,causal,tile={(n, k, s, d, causal, tile)}"
        interior_seen += sum(expected[1::2])
    assert interior_seen > 1000  # the rule is exercised, not vacuous


def random_keep_mask_cases(count: int, seed: int):
    """Tile shapes of the core (powers of two, at most 64 slots), kv tile origins and ends, and query windows
    that overlap the tile partly, wholly or not at all."""
    rng = random.Random(seed)
    cases = []
    for _ in range(count):
        tile = [1, 1, 1]
        for _ in range(rng.randint(0, 6)):
            tile[rng.randrange(3)] *= 2
        origin = [rng.randint(0, 20) for _ in range(3)]
        kv_end = [o + rng.randint(1, 2 * t) for o, t in zip(origin, tile, strict=True)]
        begin = [o + rng.randint(-6, t + 1) for o, t in zip(origin, tile, strict=True)]
        end = [b + rng.randint(0, 12) for b in begin]
        if rng.random() < 0.2:  # a window around the whole tile (the case the core skips)
            begin = [o - rng.randint(0, 3) for o in origin]
            end = [o + t + rng.randint(0, 3) for o, t in zip(origin, tile, strict=True)]
            kv_end = [max(e, o + t) for e, o, t in zip(kv_end, origin, tile, strict=True)]
        cases.append((tile, origin, kv_end, begin, end))
    return cases


def brute_keep_mask(tile, origin, kv_end, begin, end) -> int:
    mask, slot = 0, 0
    for a0 in range(tile[0]):
        for a1 in range(tile[1]):
            for a2 in range(tile[2]):
                pos = (origin[0] + a0, origin[1] + a1, origin[2] + a2)
                if all(begin[a] <= pos[a] < min(end[a], kv_end[a]) for a in range(3)):
                    mask |= 1 << slot
                slot += 1
    return mask


def test_slot_keep_mask_is_the_element_mask(index_dump):
    """slot_keep_mask (the core's element mask as 64 bits, built per row and tile) against a per-slot window
    test, in C++ (na_index.h) and in the simulator's mirror, on random tiles, windows and tile ends."""
    cases = random_keep_mask_cases(3000, seed=9)
    rows = answer_lines(index_dump, ["M " + " ".join(str(x) for part in case for x in part) for case in cases])
    full = 0
    for case, row in zip(cases, rows, strict=True):
        expected = brute_keep_mask(*case)
        assert int(row) == expected, f"slot_keep_mask{case}: {int(row):#x} != {expected:#x}"
        assert sim.slot_keep_mask(*case) == expected, f"simulator mirror{case}"
        full += expected == (1 << 64) - 1
    assert full > 20  # whole tiles inside a window occur: the skip rule is exercised
