"""The FlexAttention mask the GPU benchmark compares against must be the op's neighbourhood: checked
here on the CPU against the reference window indices, so the GPU comparison is like for like."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from attn_export.models.neighborhood import NAParams, neighborhood_index

from bench_scripts import load_bench


@pytest.fixture(scope="module")
def bench():
    return load_bench("bench_na_gpu")


def dense_reference(spatial, params):
    key, _, valid = neighborhood_index(spatial, params)
    n = math.prod(spatial)
    mask = torch.zeros(n, n, dtype=torch.bool)
    rows = torch.arange(n)[:, None].expand_as(key)
    keep = torch.ones_like(key, dtype=torch.bool) if valid is None else valid
    mask[rows[keep], key[keep]] = True
    return mask


@pytest.mark.parametrize("seed", range(25))
def test_flex_mask_mod_equals_the_neighbourhood(bench, seed):
    rng = random.Random(seed)
    rank = rng.randint(1, 3)
    kernel = [rng.randint(2, 6) for _ in range(rank)]
    stride = [rng.randint(1, k) for k in kernel]
    dilation = [rng.choice([1, 2]) for _ in range(rank)]
    causal = [rng.random() < 0.3 for _ in range(rank)]
    spatial = [k * d + rng.randint(0, 6) for k, d in zip(kernel, dilation)]
    params = NAParams.from_args(rank, kernel, stride, dilation, causal)
    n = math.prod(spatial)
    q_idx, kv_idx = torch.arange(n)[:, None], torch.arange(n)[None, :]
    got = bench.na_mask_mod(spatial, kernel, stride, dilation, causal)(0, 0, q_idx, kv_idx)
    assert torch.equal(got, dense_reference(spatial, params)), (spatial, kernel, stride, dilation, causal)


def test_table_formats_missing_values(bench):
    row = dict(case="c", head_dim=64, path="core", ours_ms=1.0, tflops=2.0, speedup_vs_sdpa=3.0,
               speedup_vs_flex=None, flop_bound=4.0, fraction_of_bound=0.75, max_abs_vs_flex=None)
    text = bench.table([row])
    assert "75%" in text and text.splitlines()[1].split()[6] == "-"


def test_rows_are_appended_as_they_finish_and_failures_stay_local(bench, tmp_path):
    """Each record reaches the JSONL file before the next case starts; a failing case becomes an error
    record and the later cases still run; a case past the deadline is recorded as skipped."""
    path = tmp_path / "rows.jsonl"
    recorder = bench.Recorder(str(path))
    now = {"t": 0.0}
    seen_before = []

    def measure(case, dim):
        seen_before.append(len(path.read_text().splitlines()) if path.exists() else 0)
        now["t"] += 10
        if case[0] == "bad":
            raise RuntimeError("CUDA error: an illegal memory access\nwas encountered")
        return {"ours_ms": 1.0}

    jobs = [(("a",), 64), (("bad",), 64), (("c",), 64), (("late",), 64)]
    records = bench.run_rows(jobs, measure, recorder, deadline=25.0, kind="case", clock=lambda: now["t"])
    assert seen_before == [0, 1, 2]  # every earlier record was on disk when the next case began
    on_disk = [json.loads(line) for line in path.read_text().splitlines()]
    assert on_disk == records
    assert records[1]["error"] == "RuntimeError: CUDA error: an illegal memory access was encountered"
    assert records[2]["ours_ms"] == 1.0 and records[3] == {"kind": "case", "case": "late", "head_dim": 64,
                                                           "skipped": "time budget spent"}


def test_flex_needs_time_left_to_start(bench, tmp_path):
    calls = []
    records = bench.run_rows([(("f",), 128)], lambda c, d: calls.append(c) or {}, bench.Recorder(None),
                             deadline=100.0, kind="flex", min_left_s=bench.FLEX_MIN_LEFT_S, clock=lambda: 70.0)
    assert not calls and records[0]["skipped"] == "time budget spent"


def test_flex_runs_only_on_small_cases(bench):
    """FlexAttention compiles per case: two small cases, never a 32768-token one (its mask would be huge)."""
    flex = [c for c in bench.CASES if c[0] in bench.FLEX_CASES]
    assert len(flex) == 2 and all(math.prod(c[1]) <= 4096 for c in flex)


def test_table_from_a_cut_jsonl(bench, tmp_path):
    path = tmp_path / "rows.jsonl"
    row = dict(kind="case", case="c", head_dim=64, path="generic", ours_ms=2.0, speedup_vs_sdpa=3.0, flop_bound=4.0)
    flex = dict(kind="flex", case="c", head_dim=64, flex_ms=4.0, speedup_vs_flex=2.0, max_abs_vs_flex=1e-3)
    path.write_text(json.dumps(row) + "\n" + json.dumps(flex) + "\n" + '{"kind": "ca')  # killed mid-line
    records = bench.read_jsonl(str(path))
    assert len(records) == 2
    text = bench.table(bench.merge_flex([records[0]], [records[1]]))
    assert text.splitlines()[1].split()[6] == "2.00"
