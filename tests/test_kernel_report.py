"""bench/kernel_report.py: the SASS reading (loops, paths, classes, spills), the occupancy rule and the CI check
on synthetic input (unit tier), and, in the native tier, the CI mode on the kernels `attn-export plugins build`
compiled, against the committed baseline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench_scripts import BENCH_DIR, load_bench

kr = load_bench("kernel_report")
REPO = Path(__file__).resolve().parents[1]
BASELINE = BENCH_DIR / "kernel_report_baseline.json"

# A loop with a masked branch (3 instructions, skipped by the steady path), two MMAs, an async copy that the
# steady path must keep, and an inner loop (its back edge dropped: counted once).
SASS = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
.L_x_1:
        /*0010*/                   HMMA.16816.F32 R4, R8, R12, R4 ;
        /*0020*/              @P0 BRA `(.L_x_2) ;
        /*0030*/                   FSETP.GT.AND P1, PT, R4, R5, PT ;
        /*0040*/                   FSEL R4, R4, -INF , P1 ;
        /*0050*/                   IMAD R6, R6, 0x2, RZ ;
.L_x_2:
        /*0060*/                   LDSM.16.M88.4 R8, [R20] ;
.L_x_3:
        /*0070*/                   SHFL.BFLY PT, R9, R9, 0x1, 0x1f ;
        /*0080*/              @P2 BRA `(.L_x_3) ;
        /*0090*/              @P3 BRA `(.L_x_4) ;
        /*00a0*/                   LDGSTS.E.BYPASS.128 [R2], desc[UR4][R6.64] ;
.L_x_4:
        /*00b0*/                   HMMA.16816.F32 R4, R8, R12, R4 ;
        /*00c0*/                   STL [R1], R8 (*"SpillRefill"*) ;
        /*00d0*/              @P4 BRA `(.L_x_1) ;
        /*00e0*/                   EXIT ;
"""


def parsed():
    return kr.parse_sass(SASS)


def test_opcode_classes_and_shared_bytes():
    assert kr.opcode_class("HMMA.16816.F32") == "mma" and kr.opcode_class("IMMA.16832.S8.S8") == "mma"
    assert kr.opcode_class("LDSM.16.MT88.4") == "shared_load" and kr.opcode_class("LDGSTS.E.128") == "async_copy"
    assert kr.opcode_class("IMAD.WIDE") == "integer" and kr.opcode_class("MUFU.EX2") == "float"
    assert kr.opcode_class("ULDC.64") == "uniform" and kr.opcode_class("BAR.SYNC.DEFER_BLOCKING") == "sync"
    assert kr.shared_bytes("LDSM.16.M88.4") == 512 and kr.shared_bytes("LDSM.16.M88.2") == 256
    assert kr.shared_bytes("LDS.128") == 512 and kr.shared_bytes("LDS") == 128 and kr.shared_bytes("STS.64") == 256


def test_main_loop_is_the_outer_loop_with_the_mmas():
    instructions, labels = parsed()
    assert len(instructions) == 15 and labels[".L_x_1"] == 0x10
    loop = kr.main_loop(instructions, labels)
    assert (instructions[loop[0]].address, instructions[loop[1]].address) == (0x10, 0xD0)


def test_steady_path_skips_the_mask_but_keeps_the_load_and_worst_takes_everything():
    instructions, labels = parsed()
    steady, worst = kr.path_counts(instructions, labels, kr.main_loop(instructions, labels))
    # steady: HMMA, BRA, LDSM, SHFL, BRA, BRA, LDGSTS, HMMA, STL, BRA (the masked FSETP/FSEL/IMAD skipped)
    assert steady.instructions == 10 and steady.by_class["float"] == 0 and steady.by_class["async_copy"] == 1
    assert worst.instructions == 13 and worst.by_class["float"] == 2 and worst.by_class["integer"] == 1
    assert steady.by_class["mma"] == worst.by_class["mma"] == 2
    assert steady.shared_bytes == 512 + 512  # the ldmatrix x4 and the cp.async's 16 bytes per lane


def test_occupancy_follows_registers_and_shared_memory():
    # The neighborhood core at head_dim 128: 236 registers x 128 threads allow 2 blocks; 2176 + 81952 bytes of
    # shared memory fit once in sm_80's 164 KiB, twice in sm_90's 228 KiB.
    smem = 2176 + kr.core_smem_bytes(128)
    assert kr.occupancy(236, smem, 128, "sm_80") == 1 and kr.occupancy(236, smem, 128, "sm_90") == 2
    assert kr.occupancy(228, 1024 + kr.core_smem_bytes(128), 128, "sm_80") == 2
    assert kr.occupancy(32, 0, 256, "sm_90") == 8  # the warp limit: 64 warps / 8


def _row(steady=100, worst=200, spills=0):
    return dict(arch="sm_90", source="bsa_forward", kernel="void k<1>(int)", spill_instructions=spills,
                tile_steady=dict(instructions=steady), tile_worst=dict(instructions=worst))


def test_ci_fails_on_growth_over_ten_percent_and_on_new_spills():
    baseline = kr.baseline_of([_row()])
    assert kr.ci_problems([_row(110, 220)], baseline) == []
    grown = kr.ci_problems([_row(111, 200)], baseline)
    assert len(grown) == 1 and "steady tile 111" in grown[0]
    assert "spill" in kr.ci_problems([_row(spills=2)], baseline)[0]
    assert kr.ci_problems([_row(spills=2)], kr.baseline_of([_row(spills=2)])) == []  # a recorded spill
    new_kernel = dict(_row(spills=1), kernel="void other(int)")
    assert "spill" in kr.ci_problems([new_kernel], baseline)[0]


def test_bad_usage_is_one_line_and_exit_2(capsys):
    assert kr.main([]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_missing_build_is_exit_3(tmp_path, capsys):
    assert kr.main(["--build-dir", str(tmp_path)]) == 3
    assert "plugins build" in capsys.readouterr().err


def _build_dir() -> Path:
    given = os.environ.get("ATTN_EXPORT_BUILD_DIR")
    if not given or not (Path(given) / kr.OBJECT_DIR / "bsa_forward.cu.o").is_file():
        pytest.skip("native tier: set ATTN_EXPORT_BUILD_DIR to an `attn-export plugins build` folder")
    try:
        kr.find_tool("cuobjdump"), kr.find_nvdisasm()
    except Exception as exc:  # noqa: BLE001 -- the tool's own one-line message
        pytest.skip(f"native tier: {exc}")
    return Path(given)


@pytest.mark.native
def test_ci_mode_passes_on_the_built_kernels_and_fails_on_a_tightened_baseline(tmp_path):
    build = _build_dir()
    script = BENCH_DIR / "kernel_report.py"
    report = tmp_path / "report.json"
    # sm_90 from the build, sm_80 compiled beside it (release builds target it: spills there count too)
    result = subprocess.run([sys.executable, str(script), "--build-dir", str(build), "--arch", "80", "--ci",
                             str(BASELINE), "--json", str(report)], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(report.read_text())
    sm80 = [r for r in data["kernels"] if r["unit"] == "core" and r["arch"] == "sm_80"]
    # sm_80 launches 64-query tiles on a 2-stage ring only: none spills; the 128-query and 3-stage instances are
    # traps there (a few instructions)
    assert len(sm80) == 70 and all(r["spill_instructions"] == 0 for r in sm80)
    sm_90_only = [r for r in sm80 if r["row_tiles"] == 2 or r["stages"] == 3]
    assert len(sm_90_only) == 6 + 28 and all(r["total_instructions"] < 32 for r in sm_90_only)
    assert all(r["total_instructions"] > 1000 for r in sm80 if r not in sm_90_only)
    cores = [r for r in data["kernels"] if r["unit"] == "core" and r["arch"] == "sm_90"]
    assert {r["op"] for r in cores} == {"neighborhood", "block-sparse", "paro"}
    # per warp, row tile and kv tile: S = 8 n-blocks x head_dim/16 k-steps (the s8 MMA of PARO's int8 QK:
    # head_dim/32), O = head_dim/8 n-blocks x 4 k-steps (in one or two key steps: the same MMAs)
    assert all(r["tile_steady"]["by_class"]["mma"] ==
               r["row_tiles"] * (r["head_dim"] * 3 // 4 if r["int8_qk"] else r["head_dim"]) for r in cores)
    # block-sparse's 128-query tiles (core_plan.h's bsa_row_tiles), fp16 and bf16, every head_dim
    assert sorted((r["head_dim"], r["dtype"]) for r in cores if r["row_tiles"] == 2 and r["stages"] == 2) == \
        [(d, t) for d in (32, 64, 128) for t in ("bf16", "fp16")]
    # the 3-stage ring (core_plan.h's core_stages): every core kernel at head_dim 32 and 64, none at 128
    three = [r for r in cores if r["stages"] == 3]
    assert len(three) == 28 and {r["head_dim"] for r in three} == {32, 64}
    assert all(r["dynamic_smem"] == kr.core_smem_bytes(r["head_dim"], r["row_tiles"], 3) for r in three)
    # PARO on the s8 MMA: 2 dtypes x 3 head dims x P quantized or not, and the 3-stage twins at head_dim 32/64
    assert sum(bool(r["int8_qk"]) for r in cores) == 12 + 8
    # the pre-pass's channel finish loads kFinishBatch (8) partials of each tensor before adding them (the
    # batches prepass_ms counts); the loop before it loaded 4 of each
    finish = [r for r in data["kernels"] if "channel_finish_kernel" in r["kernel"] and r["arch"] == "sm_90"]
    assert len(finish) == 3 and all(r["tile_worst"]["by_class"]["global_load"] == 2 * 8 for r in finish)
    # no spills, except block-sparse's 128-query tiles at head_dim 128 (recorded in the baseline; benchmarks.md (k))
    assert all(r["spill_instructions"] == 0 for r in cores if (r["row_tiles"], r["head_dim"]) != (2, 128))
    # The same kernels against a baseline 20% smaller: every core kernel's growth is reported, exit 1.
    tight = {k: dict(v, steady=int(v["steady"] / 1.2)) for k, v in json.loads(BASELINE.read_text()).items()}
    (tmp_path / "tight.json").write_text(json.dumps(tight))
    failed = subprocess.run([sys.executable, str(script), "--build-dir", str(build), "--ci",
                             str(tmp_path / "tight.json")], capture_output=True, text=True, cwd=REPO)
    assert failed.returncode == 1 and failed.stdout.count("FAIL") >= len(cores)


def test_baseline_is_committed_and_covers_every_core_kernel():
    baseline = json.loads(BASELINE.read_text())
    assert {k.split()[0] for k in baseline} == {"sm_80", "sm_90"}
    cores = [k for k in baseline if "attention_core_kernel" in k and k.startswith("sm_90")]
    assert len([k for k in baseline if "attention_core_kernel" in k]) == 2 * len(cores)
    # neighborhood and block-sparse (64- and 128-query tiles): 2 dtypes x 3 head dims; PARO four times that (P
    # quantized or not, QK on the s8 MMA or not); and each of those at head_dim 32 and 64 with the 3-stage ring.
    assert len(cores) == (6 + 12 + 24) * 5 // 3


def test_describe_reads_the_paro_policy_flags():
    base = "void attnx::core::attention_core_kernel<cutlass::half_t, 64, attnx::core::ParoPolicy<cutlass::half_t, {}> >"
    for flags, quant_p, int8_qk in [("true, true", True, True), ("false, true", False, True),
                                    ("true, false", True, False), ("false, false", False, False),
                                    ("true", True, False)]:  # "true": a build before the s8 QK path
        row = kr.describe(base.format(flags))
        assert (row["op"], row["head_dim"], row["quant_p"], row["int8_qk"]) == ("paro", 64, quant_p, int8_qk)
    assert kr.describe(base.replace("ParoPolicy<cutlass::half_t, {}>", "BsaPolicy<cutlass::half_t>"))["int8_qk"] is None


def test_describe_reads_the_query_tile_of_block_sparse():
    base = "void attnx::core::attention_core_kernel<cutlass::half_t, 64, attnx::core::BsaPolicy<cutlass::half_t{}> >"
    for args, row_tiles in [(", 2", 2), (", 1", 1), ("", 1)]:  # "": a build before the 128-query tiles
        row = kr.describe(base.format(args))
        assert (row["op"], row["row_tiles"]) == ("block-sparse", row_tiles)
        assert row["dynamic_smem"] == kr.core_smem_bytes(64, row_tiles)
    assert kr.core_smem_bytes(64, 2) == 49184  # core_plan.h's (its config test checks the same number)


def test_describe_reads_the_ring_stages():
    # as c++filt prints them, with the argument list (which names the policy again)
    base = ("void attnx::core::attention_core_kernel<cutlass::half_t, 64, attnx::core::BsaPolicy<cutlass::half_t, 2>{}>"
            "(attnx::core::BsaPolicy<cutlass::half_t, 2>::Params, cutlass::half_t const*, cutlass::half_t const*, "
            "cutlass::half_t const*, cutlass::half_t*)")
    for args, stages in [(", 3", 3), (", 2", 2), (" ", 2)]:  # " ": a build before the stages parameter
        row = kr.describe(base.format(args))
        assert (row["row_tiles"], row["stages"]) == (2, stages)
        assert row["dynamic_smem"] == kr.core_smem_bytes(64, 2, stages)
    paro = kr.describe(base.format(", 3").replace("BsaPolicy<cutlass::half_t, 2>",
                                                  "ParoPolicy<cutlass::half_t, true, true>"))
    assert (paro["op"], paro["quant_p"], paro["stages"]) == ("paro", True, 3)
    assert kr.core_smem_bytes(64, 1, 3) == 57376  # core_plan.h's (its config test checks the same number)


def _core(head_dim: int, row_tiles: int, instructions: int, mmas: int, shared: int, stages: int = 2,
          blocks: int = 2) -> dict:
    counts = dict(instructions=instructions, shared_bytes=shared, by_class=dict(mma=mmas))
    return dict(unit="core", op="block-sparse", dtype="fp16", head_dim=head_dim, arch="sm_90", row_tiles=row_tiles,
                stages=stages, occupancy=dict(sm_80=blocks, sm_90=blocks), tile_steady=counts, tile_worst=counts,
                total_instructions=instructions + 100, loop_instructions=instructions, source="bsa_forward",
                spill_instructions=0,
                kernel=f"k<{row_tiles}, {stages}>(int)", quant_p=None, int8_qk=None)


def test_the_ring_hides_latency_in_proportion_to_its_tiles_in_flight():
    # 2 blocks per SM: 2 stages keep 2 tiles in flight per SM, 3 stages 4
    two, three = _core(32, 1, 800, 64, 1000), _core(32, 1, 800, 64, 1000, stages=3)
    cycles = kr.H100["load_latency_s"] * kr.H100["clock_hz"]
    assert kr.tile_cycles(two, "tile_steady")["latency"] == pytest.approx(cycles / 2)
    assert kr.tile_cycles(three, "tile_steady")["latency"] == pytest.approx(cycles / 4)
    assert kr.bound_of(kr.tile_cycles(two, "tile_steady")) == (800, "issue")  # a tile of one block: 800 cycles
    assert kr.latency_hidden_ns(two) == pytest.approx(2 * 800 / kr.H100["clock_hz"] * 1e9)
    assert kr.latency_hidden_ns(three) == pytest.approx(2 * kr.latency_hidden_ns(two))
    # a short tile (1 block per SM, under 600 ns of work) on 2 stages waits for its loads: the latency is the
    # limit; 3 stages halve that wait, and the tile's L2 traffic limits it instead
    short = _core(64, 1, 200, 16, 1000, blocks=1)
    assert kr.bound_of(kr.tile_cycles(short, "tile_steady")) == (pytest.approx(cycles), "latency")
    assert kr.bound_of(kr.tile_cycles(dict(short, stages=3), "tile_steady"))[1] == "l2"


def test_ci_fails_on_a_third_stage_that_costs_blocks_per_sm():
    two, three = _core(64, 1, 400, 64, 1000, blocks=3), _core(64, 1, 400, 64, 1000, stages=3, blocks=3)
    assert kr.ring_problems([two, three]) == []
    fewer = dict(three, occupancy=dict(sm_80=2, sm_90=2))
    problems = kr.ci_problems([two, fewer], kr.baseline_of([two, fewer]))
    assert len(problems) == 1 and "3 stages give 2 blocks per SM, 2 stages 3" in problems[0]
    assert kr.ring_problems([dict(fewer, arch="sm_80"), dict(two, arch="sm_80")]) == []  # sm_90's rule only


def test_estimates_take_the_ring_sm_90_launches():
    rows = [_core(64, 1, 800, 64, 1000), _core(64, 1, 800, 64, 1000, stages=3),
            _core(128, 1, 900, 128, 1000)]
    est = [e for e in kr.bsa_estimates(rows) if e["case"] == "bsa-16k-d50"]
    assert {(e["head_dim"], e["stages"]) for e in est} == {(64, 3), (128, 2)}


def test_block_sparse_estimates_count_the_ctas_and_tiles_of_each_query_tile():
    # A 128-query kernel issuing 1.5x the 64-query kernel's instructions for 2x the MMAs: half the CTAs, each
    # visiting the same kv tiles, so 0.75x the issue time (both issue bound here).
    rows = [_core(64, 1, 800, 64, 1000), _core(64, 2, 1200, 128, 1000)]
    est = {(e["case"], e["query_tile"]): e for e in kr.bsa_estimates(rows) if e["head_dim"] == 64}
    narrow, wide = est[("bsa-16k-d50", 64)], est[("bsa-16k-d50", 128)]
    assert narrow["limit"] == wide["limit"] == "issue"
    def ms(query_tile, instructions):  # CTAs x (listed 128-key blocks x 2 kv tiles x the tile + the rest)
        ctas = kr.HEADS * (16384 // query_tile)
        return ctas * (64 * 2 * instructions + 100) / (kr.H100["sms"] * kr.H100["clock_hz"]) * 1e3

    assert narrow["est_ms"] == pytest.approx(ms(64, 800)) and wide["est_ms"] == pytest.approx(ms(128, 1200))
    assert wide["est_ms"] < 0.76 * narrow["est_ms"]
    assert wide["bound_ms"] == narrow["bound_ms"]  # the same useful work
    assert not [e for e in kr.bsa_estimates(rows) if e["head_dim"] == 128]  # no kernel, no estimate


def test_prepass_writes_int8_q_and_k_for_the_s8_mma():
    # q, k, v read once (3 tensors of the input type); written: q and k as int8 (half each) and v -> 5 tensor
    # volumes instead of 6 when the core's QK runs on the s8 MMA
    wide, narrow = kr.prepass_ms(17776, 64, int8_qk=False), kr.prepass_ms(17776, 64, int8_qk=True)
    assert narrow["quantize_ms"] == pytest.approx(wide["quantize_ms"] * 5 / 6)
    assert narrow["channel_stats_ms"] == wide["channel_stats_ms"]
    tensor_bytes = kr.HEADS * 17776 * 64 * 2
    assert wide["quantize_ms"] == pytest.approx(6 * tensor_bytes / kr.H100["dram_bytes_per_s"] * 1e3)


def _fake_nvdisasm(tmp_path, release: str) -> str:
    tool = tmp_path / "nvdisasm"
    tool.write_text(f"#!/bin/sh\necho 'Cuda compilation tools, release {release}, V{release}.0'\n")
    tool.chmod(0o755)
    return str(tool)


def test_an_nvdisasm_that_cannot_mark_spills_is_refused(tmp_path, monkeypatch, capsys):
    # 13.1-13.4 print no SpillRefill marks: the spill column and --ci would read 0 whatever the kernels do.
    old = _fake_nvdisasm(tmp_path, "13.4")
    monkeypatch.setattr(kr, "find_tool", lambda name: old)
    monkeypatch.setattr(kr, "_nvidia_paths", lambda: [])
    with pytest.raises(kr.AttnExportError, match=r"release 13\.4\) does not mark register spills") as err:
        kr.find_nvdisasm()
    assert err.value.exit_code == 3


def test_a_spill_marking_nvdisasm_is_taken(tmp_path, monkeypatch):
    new = _fake_nvdisasm(tmp_path, "13.5")
    monkeypatch.setattr(kr, "find_tool", lambda name: new)
    assert kr.find_nvdisasm() == new
