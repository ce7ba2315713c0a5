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


def _quantize(rules, scale, qmax, ps):
    """(fast, near, exact) per p from the host build of paro_rules.h's P quantizers, 400 values a request."""
    out = []
    for i in range(0, len(ps), 400):
        (row,) = answer_lines(rules, [f"Q {scale.hex()} {qmax.hex()} " + " ".join(p.hex() for p in ps[i:i + 400])])
        f = row.split()
        out += [(float.fromhex(f[j]), f[j + 1] == "1", float.fromhex(f[j + 2])) for j in range(0, len(f), 3)]
    return out


def test_p_quantization_by_reciprocal_is_the_references_rounding(rules):
    """The core quantizes P with one reciprocal per tile (quantize_p_fast) and divides only where the product can
    round differently from the reference's correctly rounded quotient (near): the result is the reference's
    clamp(round(p / scale), max=qmax) for every p, including quotients a few ulps from every half-integer, where
    the product alone would be wrong (such cases exist below: the near check is not idle)."""
    gen = torch.Generator().manual_seed(29)
    product_wrong = near_count = total = 0
    for bits in (8, 4):
        qmax = sim.qmax(bits)
        for tile_max in [1.0, 0.999, 0.7310586, 0.123, 3.1e-3, 2.0**-30, 2.0**-31 * 1.7]:
            scale = float(torch.tensor(max(tile_max, PARO_P_TILE_MAX_FLOOR), dtype=torch.float32)
                          / torch.tensor(qmax, dtype=torch.float32))
            s32 = torch.tensor(scale, dtype=torch.float32)
            random_p = (torch.rand(2000, generator=gen) * min(tile_max * 1.5, 1.0)).tolist()
            # quotients at every half-integer up to qmax + 2, and 6 float32 neighbours on each side
            halves = torch.tensor([(m + 0.5) * scale for m in range(int(qmax) + 2)], dtype=torch.float32)
            edge = [halves]
            up, down = halves.clone(), halves.clone()
            for _ in range(6):
                up, down = torch.nextafter(up, torch.tensor(2.0)), torch.nextafter(down, torch.tensor(-1.0))
                edge += [up, down]
            edge_p = torch.cat(edge).clamp(min=0).tolist()
            ps = [float(torch.tensor(p, dtype=torch.float32)) for p in random_p] + edge_p + [0.0, 2.0**-149, 1.0]
            got = _quantize(rules, scale, qmax, ps)
            p32 = torch.tensor(ps, dtype=torch.float32)
            reference = torch.clamp(torch.round(p32 / s32), max=qmax)
            product = torch.clamp(torch.round(p32 * (1 / s32)), max=qmax)
            for i, (fast, near, exact) in enumerate(got):
                assert exact == float(reference[i]), (scale, ps[i])
                assert near or fast == float(reference[i]), (scale, ps[i], fast, float(reference[i]))
                product_wrong += float(product[i]) != float(reference[i])
            near_count += sum(near for _, near, _ in got[:len(random_p)])
            total += len(random_p)
    assert product_wrong > 0  # the boundary cases do reach the division
    assert near_count < 0.01 * total  # the division stays rare on ordinary probabilities
