"""PARO's host + device rules (plugins/kernels/paro_rules.h) built with the host compiler: the P tile-max floor
is the registry's and the kernels' P scale is the simulator's, bit for bit; perm_idx entries are clamped into
[0, N) like kv_index entries, and every kernel reads perm_idx through that clamp (an invalid permutation
scattered the output out of bounds)."""

from __future__ import annotations

import re

import pytest
import torch

from attn_export.models import paro_kernel_sim as sim
from attn_export.registry import PARO_P_TILE_MAX_FLOOR

from native_tools import PLUGINS, answer_lines, build_dump

pytestmark = pytest.mark.native


@pytest.fixture(scope="module")
def rules(tmp_path_factory):
    return build_dump(tmp_path_factory, "paro_rules_dump")


def test_p_tile_scale_is_the_registry_floor_and_the_simulators_float32(rules):
    assert float.fromhex(answer_lines(rules, ["F"])[0]) == PARO_P_TILE_MAX_FLOOR
    maxima = [0.0, 2.0**-110, 2.0**-31, 2.0**-30, 3e-9, 0.37, 1.0]
    for bits in (8, 4):
        got = answer_lines(rules, [f"S {m.hex()} {sim.qmax(bits).hex()}" for m in maxima])
        want = [float(torch.tensor(max(m, PARO_P_TILE_MAX_FLOOR), dtype=torch.float32)
                      / torch.tensor(sim.qmax(bits), dtype=torch.float32)) for m in maxima]
        assert [float.fromhex(x) for x in got] == want


def test_perm_entries_are_clamped_into_the_sequence(rules):
    (row,) = answer_lines(rules, ["P 5 4 -1 2 7 5 0 -2147483648 2147483647"])
    assert [int(x) for x in row.split()] == [4, 0, 2, 4, 4, 0, 0, 4]


# Every read of perm / perm_idx in the kernels: an index expression on a name containing "perm".
PERM_READ = re.compile(r"\bperm\w*\s*\[")


@pytest.mark.parametrize("source", sorted(p.name for p in (PLUGINS / "kernels").glob("*.cu*")))
def test_kernels_read_perm_idx_only_through_the_clamp(source):
    text = (PLUGINS / "kernels" / source).read_text()
    reads = [line.strip() for line in text.splitlines() if PERM_READ.search(line) and not line.strip().startswith("//")]
    assert not reads, f"{source} indexes perm_idx directly (use attnx::paro::permuted): {reads}"
