"""The C++ reading of padded-ELL rows shared by the block-sparse and PARO kernels (plugins/kernels/
block_layout.h: clamped blocks, the virtual key sequence of a row's listed blocks, the tile_masked rule)
against the simulator's mirror (attn_export.models.bsa_kernel_sim.VirtualKeys), which the simulator tests in
turn prove against the reference op."""

from __future__ import annotations

import random

import pytest

from attn_export.models import bsa_kernel_sim as sim

from native_tools import answer_lines, build_dump


@pytest.fixture(scope="module")
def layout_dump(tmp_path_factory):
    return build_dump(tmp_path_factory, "bsa_layout_dump")


def test_virtual_keys_match_the_simulator(layout_dump):
    rng = random.Random(9)
    requests, mirrors = [], []
    for _ in range(2000):
        block_kv = rng.choice([1, 3, 16, 32, 50, 64, 100, 128])
        seq_kv = rng.randint(1, 700)
        n_blocks = -(-seq_kv // block_kv)
        count = rng.randint(0, min(n_blocks, 12))
        # Listed blocks, sometimes out of range (clamped, never read out of bounds), tail block included often.
        index = [rng.choice([rng.randrange(n_blocks), n_blocks - 1, -1, n_blocks + 3]) for _ in range(count)]
        requests.append(f"V {block_kv} {seq_kv} {n_blocks} {count} " + " ".join(map(str, index)))
        clamped = [min(max(b, 0), n_blocks - 1) for b in index]
        mirrors.append(sim.VirtualKeys(clamped, block_kv, seq_kv))
    masked_seen = unmasked_seen = 0
    for keys, row in zip(mirrors, answer_lines(layout_dump, requests), strict=True):
        slots, masks = row.split("|")
        assert [int(x) for x in slots.split()] == [keys.key(v) for v in range(keys.slots + 3)]
        flags = [int(x) for x in masks.split()]
        assert flags == [int(keys.tile_masked(t)) for t in range(keys.tiles())]
        for t, flag in enumerate(flags):  # the rule is exact: unmasked iff every slot of the tile has a key
            assert bool(flag) == any(keys.key(t * 64 + r) < 0 for r in range(64))
            masked_seen += flag
            unmasked_seen += 1 - flag
    assert masked_seen > 100 and unmasked_seen > 100


def test_fast_divisor_is_integer_division(layout_dump):
    """block_layout.h's FastDivisor (multiply-high, add, shift) against Python's // for divisors of every size up
    to 2^31 - 1 (powers of two, their neighbours, random) and dividends from 0 to 2^31 - 1, the range it takes."""
    rng = random.Random(31)
    divisors = [1, 2, 3, 7, 48, 64, 100, 127, 128, 129, 2**31 - 1, 2**30, 2**30 + 1]
    divisors += [2**e + d for e in range(1, 31) for d in (-1, 1)] + [rng.randrange(1, 2**31) for _ in range(40)]
    requests, expected = [], []
    for d in divisors:
        ns = [0, 1, d - 1, d, d + 1, 2**31 - 1, 2**31 - 2, (2**31 - 1) // d * d, (2**31 - 1) // d * d - 1]
        ns = [n for n in ns if 0 <= n < 2**31] + [rng.randrange(0, 2**31) for _ in range(60)]
        ns += [rng.randrange(0, 5000) for _ in range(20)]
        requests.append(f"D {d} " + " ".join(map(str, ns)))
        expected.append([n // d for n in ns])
    for want, row in zip(expected, answer_lines(layout_dump, requests), strict=True):
        assert [int(x) for x in row.split()] == want
