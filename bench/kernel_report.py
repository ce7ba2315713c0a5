"""Static kernel report: what the compiled machine code of every kernel says before any GPU runs it.

For every kernel of the native library (op x dtype x head_dim x policy, and the generic and pre-pass
kernels), from the cubins: registers, spills (local-memory instructions), static + dynamic shared memory,
occupancy on sm_80 and sm_90, and the instructions of one main-loop iteration (one 64-key tile per warp for
the fused core) by class, along the shortest and the longest path through the loop body. Then a model
(docs/benchmarks.md, "Static kernel report", states it) turns the core's per-tile counts into an
issue-and-bandwidth bound of time and % of the FLOP bound for the GPU bench cases of docs/gpu-results.md.

    python bench/kernel_report.py --build-dir build/native [--json out.json] [--markdown out.md]
    python bench/kernel_report.py --compile [--arch 90 --arch 80] ...     # nvcc -cubin per kernel unit
    python bench/kernel_report.py --build-dir build/native --ci bench/kernel_report_baseline.json
    python bench/kernel_report.py --build-dir build/native --write-baseline bench/kernel_report_baseline.json

--ci exits 1 when any kernel spills or a kernel's main loop grew more than 10% in instructions against the
baseline, 0 otherwise; 2 for bad input, 3 when the CUDA tools (cuobjdump, nvdisasm; the toolkit's or the
PyPI wheels nvidia-cuda-cuobjdump / nvidia-cuda-nvdisasm) or the build are missing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from attn_export.errors import EXIT_BAD_INPUT, EXIT_MISSING_DEPENDENCY, AttnExportError

REPO = Path(__file__).resolve().parents[1]
KERNELS = REPO / "plugins" / "kernels"
UNITS = ["na_core.cu", "bsa_forward.cu", "paro_forward.cu", "na_forward.cu"]
OBJECT_DIR = Path("CMakeFiles") / "attnx_kernels_obj.dir" / "kernels"
GROWTH_LIMIT = 0.10  # --ci: a main loop may grow by at most 10% against the baseline

# ---- SASS: instruction classes -------------------------------------------------------------------------

CLASSES = ("mma", "shared_load", "shared_store", "global_load", "global_store", "async_copy", "local",
           "integer", "float", "convert", "uniform", "branch", "sync", "other")
_PREFIX_CLASSES = [
    (("HMMA", "IMMA", "HGMMA", "IGMMA", "DMMA", "QMMA", "OMMA"), "mma"),
    (("LDSM", "LDS"), "shared_load"),
    (("STS",), "shared_store"),
    (("LDGSTS", "LDGDEPBAR", "UBLKCP", "UTMALDG"), "async_copy"),
    (("LDG", "LD."), "global_load"),
    (("STG", "ST.", "RED", "ATOMG", "ATOM"), "global_store"),
    (("LDL", "STL"), "local"),
    # before the integer prefixes: SHFL is not SHF
    (("BAR", "DEPBAR", "MEMBAR", "SHFL", "VOTE", "MATCH", "REDUX", "ERRBAR", "CCTL", "FENCE", "ARRIVES", "SYNCS"),
     "sync"),
    (("I2F", "F2I", "F2F", "F2FP", "I2I", "I2FP", "F2IP"), "convert"),
    (("IMAD", "IADD", "ISETP", "LOP", "SHF", "LEA", "IMNMX", "VIMNMX", "IABS", "POPC", "FLO", "BREV", "PRMT",
      "SEL", "ISCADD", "VIADD", "BMSK", "SGXT", "IMUL", "SHL", "SHR", "PLOP3", "P2R", "R2P"), "integer"),
    (("FFMA", "FMUL", "FADD", "FMNMX", "FSETP", "FSEL", "MUFU", "FCHK", "FRND", "FSET", "HADD2", "HMUL2", "HFMA2",
      "HMNMX2", "HSETP2", "FSWZADD"), "float"),
    (("BRA", "BRX", "JMP", "EXIT", "RET", "CALL", "BSSY", "BSYNC", "BREAK", "BPT", "WARPSYNC", "YIELD"), "branch"),
]
_INSTRUCTION = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P[T0-9]\s+)?([A-Z][A-Z0-9_.]*)\s*(.*?)\s*;")
_LABEL = re.compile(r"^(\.L_x_\d+):")
_TARGET = re.compile(r"`\((\.L_x_\d+)\)")


def opcode_class(opcode: str) -> str:
    if opcode.startswith("U") and not opcode.startswith(("UBLKCP", "UTMALDG")):
        return "uniform"  # the uniform datapath issues beside the vector one
    for prefixes, name in _PREFIX_CLASSES:
        if opcode.startswith(prefixes):
            return name
    return "other"


def shared_bytes(opcode: str) -> int:
    """Bytes one warp moves through shared memory with this instruction (32 lanes x width; ldmatrix x1/x2/x4
    moves 128/256/512 bytes; cp.async writes its width into shared memory)."""
    if opcode.startswith("LDSM"):
        return 128 * (4 if ".4" in opcode else 2 if ".2" in opcode else 1)
    if opcode.startswith(("LDS", "STS", "LDGSTS")):
        width = re.search(r"\.(128|64|U8|S8|U16|S16)\b", opcode)
        return 32 * {"128": 16, "64": 8, "U8": 1, "S8": 1, "U16": 2, "S16": 2}.get(width.group(1), 4) if width else 128
    return 0


@dataclass
class Instruction:
    address: int
    opcode: str
    predicated: bool
    target: str | None  # branch target label


def parse_sass(text: str) -> tuple[list[Instruction], dict[str, int]]:
    """Instructions of one function (nvdisasm -c output) and its labels' addresses."""
    instructions, labels, pending = [], {}, []
    for line in text.splitlines():
        label = _LABEL.match(line.strip())
        if label:
            pending.append(label.group(1))
            continue
        m = _INSTRUCTION.search(line)
        if not m:
            continue
        address = int(m.group(1), 16)
        for name in pending:
            labels[name] = address
        pending = []
        target = _TARGET.search(m.group(4)) if m.group(3).startswith(("BRA", "BSSY")) else None
        instructions.append(Instruction(address, m.group(3), bool(m.group(2)), target.group(1) if target else None))
    return instructions, labels


@dataclass
class LoopCounts:
    instructions: int = 0
    by_class: dict = field(default_factory=dict)
    shared_bytes: int = 0


def _count(instructions: list[Instruction]) -> LoopCounts:
    counts = LoopCounts(len(instructions), {c: 0 for c in CLASSES})
    for ins in instructions:
        counts.by_class[opcode_class(ins.opcode)] += 1
        if ins.opcode.startswith(("LDS", "STS", "LDGSTS")):
            counts.shared_bytes += shared_bytes(ins.opcode)
    return counts


def loops(instructions: list[Instruction], labels: dict[str, int]) -> list[tuple[int, int]]:
    """(first, last) instruction indices of every loop: a backward branch and its target."""
    index = {ins.address: i for i, ins in enumerate(instructions)}
    found = []
    for i, ins in enumerate(instructions):
        if ins.opcode.startswith("BRA") and ins.target in labels and labels[ins.target] <= ins.address:
            found.append((index[labels[ins.target]], i))
    return found


def main_loop(instructions: list[Instruction], labels: dict[str, int]) -> tuple[int, int] | None:
    """The loop with the most tensor-core MMAs (the fused core's kv-tile loop); without MMAs, the longest
    innermost loop that holds a global load (a CUDA-core kernel's streaming loop)."""
    candidates = loops(instructions, labels)
    if not candidates:
        return None

    def mmas(loop):
        return sum(opcode_class(ins.opcode) == "mma" for ins in instructions[loop[0]:loop[1] + 1])

    best = max(candidates, key=lambda lp: (mmas(lp), -(lp[1] - lp[0])))
    if mmas(best) > 0:
        return best
    innermost = [lp for lp in candidates if not any(o != lp and lp[0] <= o[0] and o[1] <= lp[1] for o in candidates)]
    loads = [lp for lp in innermost if any(opcode_class(i.opcode) in ("global_load", "async_copy")
                                          for i in instructions[lp[0]:lp[1] + 1])]
    return max(loads or innermost, key=lambda lp: lp[1] - lp[0])


def path_counts(instructions: list[Instruction], labels: dict[str, int],
                loop: tuple[int, int]) -> tuple[LoopCounts, LoopCounts]:
    """The steady tile's and the worst tile's path from the loop's head to its back edge, each instruction
    counted once (inner loops once: their back edges are dropped; a predicated instruction issues, so it
    counts)."""
    first, last = loop
    index = {ins.address: i for i, ins in enumerate(instructions)}
    body = range(first, last + 1)

    def successors(i):
        ins = instructions[i]
        out = []
        if ins.opcode.startswith("BRA") and ins.target in labels:
            t = index.get(labels[ins.target])
            if t is not None and i < t <= last:  # forward edges only: inner back edges are dropped
                out.append(t)
            if not ins.predicated:
                return out
        if ins.opcode.startswith(("EXIT", "RET")) and not ins.predicated:
            return out
        if i + 1 <= last:
            out.append(i + 1)
        return out

    # Paths through the DAG by dynamic programming from the end backwards (edges go forward only). The steady
    # tile: the most async copies (it issues the next tile's load), then the fewest instructions (no element
    # mask). The worst tile: the most instructions (the element mask and every other branch taken).
    def asyncs(i):
        return int(opcode_class(instructions[i].opcode) == "async_copy")

    steady, worst = {}, {}  # node -> (key, next node)
    for i in reversed(body):
        nxt = [j for j in successors(i) if j in steady]
        if i == last:
            steady[i], worst[i] = ((-asyncs(i), 1), None), (1, None)
        elif nxt:
            j = min(nxt, key=lambda n: steady[n][0])
            steady[i] = ((steady[j][0][0] - asyncs(i), steady[j][0][1] + 1), j)
            j = max(nxt, key=lambda n: worst[n][0])
            worst[i] = (worst[j][0] + 1, j)

    def walk(table):
        if first not in table:
            return list(body)
        path, node = [], first
        while node is not None:
            path.append(node)
            node = table[node][1]
        return path

    return (_count([instructions[i] for i in walk(steady)]), _count([instructions[i] for i in walk(worst)]))


# ---- CUDA tools and cubins -------------------------------------------------------------------------------

def find_tool(name: str) -> str:
    """The toolkit's tool (PATH, $CUDA_HOME/bin) or the PyPI wheel's (nvidia-cuda-<name>)."""
    found = shutil.which(name)
    if found:
        return found
    roots = [os.environ.get("CUDA_HOME", ""), "/usr/local/cuda"]
    subs = ("cu13", "cu12", "cuda_nvdisasm", "cuda_cuobjdump")
    roots += [str(Path(p) / sub) for p in _nvidia_paths() for sub in subs]
    for root in filter(None, roots):
        candidate = Path(root) / "bin" / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise AttnExportError(f"{name} not found: install the CUDA toolkit or `pip install nvidia-cuda-{name}`",
                          EXIT_MISSING_DEPENDENCY)


# The first nvdisasm that marks register spills ("SpillRefill"): 13.1 to 13.4 print none on the same cubin (checked
# on na_forward.cu's fp32 instance, 16 marks with 13.5), so with them the spill column and --ci would read 0.
SPILL_MARKING_NVDISASM = (13, 5)


def tool_release(path: str) -> tuple[int, int] | None:
    """The (major, minor) release a CUDA tool reports with --version, or None."""
    result = subprocess.run([path, "--version"], capture_output=True, text=True)
    m = re.search(r"release (\d+)\.(\d+)", result.stdout)
    return (int(m.group(1)), int(m.group(2))) if m else None


def find_nvdisasm() -> str:
    """find_tool's nvdisasm, refused when it is too old to mark spills (a report that cannot see spills must not
    pass --ci); the PyPI wheel is tried when the toolkit's is older."""
    found = find_tool("nvdisasm")
    candidates = [found] + [str(Path(p) / "cu13" / "bin" / "nvdisasm") for p in _nvidia_paths()]
    for path in candidates:
        release = tool_release(path) if Path(path).is_file() else None
        if release and release >= SPILL_MARKING_NVDISASM:
            return path
    have = tool_release(found)
    want = ".".join(map(str, SPILL_MARKING_NVDISASM))
    raise AttnExportError(f"{found} (release {'.'.join(map(str, have)) if have else 'unknown'}) does not mark register "
                          f"spills: install nvdisasm {want} or newer (`pip install 'nvidia-cuda-nvdisasm>={want}'`)",
                          EXIT_MISSING_DEPENDENCY)


def _nvidia_paths() -> list[str]:
    try:
        import nvidia  # the PyPI CUDA wheels share this namespace package
    except ImportError:
        return []
    return list(nvidia.__path__)


def run_tool(cmd: list[str]) -> str:
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise AttnExportError(f"{Path(cmd[0]).name} failed on {cmd[-1]}: {result.stderr.strip().splitlines()[-1:]}",
                              EXIT_BAD_INPUT)
    return result.stdout


def cubins_from_build(build_dir: Path, work: Path) -> list[Path]:
    """The cubins embedded in a CMake build's kernel objects (attn-export plugins build)."""
    objects = [build_dir / OBJECT_DIR / f"{unit}.o" for unit in UNITS]
    missing = [o.name for o in objects if not o.is_file()]
    if missing:
        raise AttnExportError(f"{build_dir}: no kernel objects {missing}; run `attn-export plugins build "
                              f"--build-dir {build_dir}` first", EXIT_MISSING_DEPENDENCY)
    cuobjdump = find_tool("cuobjdump")
    cubins = []
    for obj in objects:
        out = work / obj.stem
        out.mkdir(parents=True, exist_ok=True)
        result = subprocess.run([cuobjdump, "-xelf", "all", str(obj.resolve())], cwd=out, capture_output=True,
                                text=True)
        if result.returncode != 0:
            raise AttnExportError(f"cuobjdump -xelf {obj}: {result.stderr.strip()[-200:]}", EXIT_BAD_INPUT)
        cubins += sorted(out.glob("*.cubin"))
    return cubins


def cubins_by_compiling(archs: list[str], cutlass: str, work: Path) -> list[Path]:
    """nvcc -cubin of every kernel unit for every architecture (the CMake build's flags)."""
    nvcc = shutil.which("nvcc") or find_tool("nvcc")
    include = Path(cutlass) / "include" if (Path(cutlass) / "include" / "cute").is_dir() else Path(cutlass)
    if not (include / "cute" / "tensor.hpp").is_file():
        raise AttnExportError(f"--cutlass {cutlass}: no cute/tensor.hpp; point it at a CUTLASS checkout",
                              EXIT_MISSING_DEPENDENCY)
    jobs = []
    for arch in archs:
        for unit in UNITS:
            out = work / f"{Path(unit).stem}.sm_{arch}.cubin"
            cmd = [nvcc, "-cubin", "-O3", "-DNDEBUG", "-std=c++17", f"-arch=sm_{arch}", "--expt-relaxed-constexpr",
                   f"-I{KERNELS}", "-isystem", str(include), str(KERNELS / unit), "-o", str(out)]
            jobs.append((subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True), out))
    for proc, out in jobs:
        if proc.wait() != 0:
            raise AttnExportError(f"nvcc -cubin {out.name} failed: {proc.stderr.read().strip()[-300:]}",
                                  EXIT_BAD_INPUT)
    return [out for _, out in jobs]


# ---- one kernel ------------------------------------------------------------------------------------------

ARCH_LIMITS = {  # per SM: registers, warps, blocks, shared bytes (cuobjdump's SHARED holds the 1 KiB per-block reserve)
    "sm_80": dict(regs=65536, warps=64, blocks=32, smem=167936),
    "sm_90": dict(regs=65536, warps=64, blocks=32, smem=233472),
}


def core_smem_bytes(head_dim: int, row_tiles: int = 1, stages: int = 2) -> int:
    """Mirrors core_plan.h's core_smem_bytes (checked by a static_assert against attn_core.cuh)."""
    return 2 * 64 * head_dim * (row_tiles + 2 * stages) + 2 * 4 * 4


def sm90_stages(head_dim: int) -> int:
    """The ring's stages core_plan.h's core_stages picks on sm_90 (where the bench's tiles fit)."""
    return 3 if head_dim <= 64 else 2


def occupancy(regs: int, smem: int, threads: int, arch: str) -> int:
    """Blocks per SM (the CUDA occupancy calculator's rules: 256-register allocation units per warp); smem is
    the block's static (with the system reserve) + dynamic shared memory."""
    lim = ARCH_LIMITS[arch]
    warps = math.ceil(threads / 32)
    regs_per_warp = math.ceil(max(regs, 1) * 32 / 256) * 256
    by_regs = lim["regs"] // (regs_per_warp * warps)
    by_smem = lim["smem"] // smem if smem else lim["blocks"]
    return min(by_regs, by_smem, lim["warps"] // warps, lim["blocks"])


_CORE = re.compile(r"attention_core_kernel<cutlass::(half_t|bfloat16_t), (\d+), attnx::core::(\w+)Policy<")
# ParoPolicy<Elem, QuantP, Int8QK> (Int8QK: S = Q K^T on the s8 MMA); older builds had ParoPolicy<Elem, QuantP>
_PARO = re.compile(r"ParoPolicy<cutlass::\w+, (true|false)(?:, (true|false))?>")
# BsaPolicy<Elem, RowTiles>: 64 x RowTiles queries per tile; older builds had BsaPolicy<Elem> (64)
_BSA = re.compile(r"BsaPolicy<cutlass::\w+(?:, (\d+))?>")
# attention_core_kernel<Elem, HeadDim, Policy, Stages>: the cp.async ring's kv tiles; older builds had no Stages (2)
_STAGES = re.compile(r"Policy<[^<>]*>, (\d+)>")


def describe(demangled: str) -> dict:
    """op / dtype / head_dim / policy of a kernel from its demangled name."""
    m = _CORE.search(demangled)
    if m:
        op = {"Na": "neighborhood", "Bsa": "block-sparse", "Paro": "paro"}.get(m.group(3), m.group(3))
        paro = _PARO.search(demangled) if op == "paro" else None
        quant_p = paro.group(1) == "true" if paro else None
        int8_qk = paro.group(2) == "true" if paro else None
        bsa = _BSA.search(demangled) if op == "block-sparse" else None
        row_tiles = int(bsa.group(1)) if bsa and bsa.group(1) else 1
        stages = _STAGES.search(demangled)
        stages = int(stages.group(1)) if stages else 2
        dim = int(m.group(2))
        return dict(unit="core", op=op, dtype="fp16" if m.group(1) == "half_t" else "bf16", head_dim=dim,
                    quant_p=quant_p, int8_qk=int8_qk, row_tiles=row_tiles, stages=stages, threads=128,
                    dynamic_smem=core_smem_bytes(dim, row_tiles, stages))
    name = demangled.split("(")[0].split("<")[0].rsplit("::", 1)[-1]
    types = (("__half", "fp16"), ("__nv_bfloat16", "bf16"), ("float", "fp32"))
    dtype = next((d for t, d in types if t in demangled), "")
    unit = "prepass" if "paro::" in demangled else "generic"
    return dict(unit=unit, op=name, dtype=dtype, head_dim=None, quant_p=None, int8_qk=None, row_tiles=None,
                stages=None, threads=256 if unit == "prepass" else 128, dynamic_smem=None)


def resource_usage(cuobjdump: str, cubin: Path) -> dict[str, dict]:
    usage, current = {}, None
    for line in run_tool([cuobjdump, "-res-usage", str(cubin)]).splitlines():
        fn = re.match(r"\s*Function (\S+):", line)
        if fn:
            current = fn.group(1)
            continue
        if current and "REG:" in line:
            usage[current] = {k.lower(): int(v) for k, v in re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", line)}
            current = None
    return usage


def function_sass(text: str) -> dict[str, str]:
    """nvdisasm -c output of a whole cubin, split per function."""
    parts = re.split(r"^\s*\.section\s+\.text\.(\S+?),", text, flags=re.M)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def demangle(names: list[str]) -> dict[str, str]:
    cxxfilt = shutil.which("c++filt")
    if not cxxfilt:
        return {n: n for n in names}
    out = subprocess.run([cxxfilt], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return dict(zip(names, out))


def arch_of(cubin: Path) -> str:
    """The SM architecture in a cubin's file name (the build's and cubins_by_compiling's both carry it)."""
    m = re.search(r"sm_\d+a?", cubin.name)
    return m.group(0) if m else "sm_?"


def analyse_cubin(cubin: Path, cuobjdump: str, nvdisasm: str) -> list[dict]:
    arch = arch_of(cubin)
    usage = resource_usage(cuobjdump, cubin)
    text = run_tool([nvdisasm, "-c", str(cubin)])
    sass = function_sass(text)
    # nvdisasm marks register spills and refills ("SpillRefill"): local arrays are not spills.
    spill_counts = {name: body.count('"SpillRefill"') for name, body in sass.items()}
    names = demangle(list(usage))
    rows = []
    for mangled, res in usage.items():
        if "arch_probe" in names[mangled]:  # launch_util.h's empty kernel (which code runs), never dispatched
            continue
        info = describe(names[mangled])
        instructions, labels = parse_sass(sass.get(mangled, ""))
        loop = main_loop(instructions, labels)
        steady, worst = path_counts(instructions, labels, loop) if loop else (LoopCounts(), LoopCounts())
        local_memory = sum(opcode_class(i.opcode) == "local" for i in instructions)
        smem = res.get("shared", 0) + (info["dynamic_smem"] or 0)
        rows.append(dict(
            kernel=names[mangled], arch=arch, **info, registers=res.get("reg", 0), stack=res.get("stack", 0),
            local_bytes=res.get("local", 0), local_instructions=local_memory,
            spill_instructions=spill_counts.get(mangled, 0), source=cubin.name.split(".")[0],
            static_smem=res.get("shared", 0),
            occupancy={a: occupancy(res.get("reg", 0), smem, info["threads"], a) for a in ARCH_LIMITS},
            total_instructions=len(instructions), loop_instructions=(loop[1] - loop[0] + 1) if loop else 0,
            tile_steady=asdict(steady), tile_worst=asdict(worst)))
    return rows


def collect(cubins: list[Path]) -> list[dict]:
    tools = find_tool("cuobjdump"), find_nvdisasm()  # once: find_nvdisasm runs --version on each candidate
    rows = [row for cubin in cubins for row in analyse_cubin(cubin, *tools)]
    return sorted(rows, key=lambda r: (r["arch"], r["unit"], r["op"], r["dtype"], r["head_dim"] or 0, r["kernel"]))


# ---- the time model (docs/benchmarks.md, "Static kernel report": the model and its assumptions) -----------

H100 = dict(sms=132, clock_hz=1.83e9, fp16_flops=989.4e12, int8_ops=1978.9e12, smem_bytes_per_clk=128,
            l2_bytes_per_s=5.5e12, dram_bytes_per_s=3.35e12, load_latency_s=600e-9)
HEADS = 8
NA_CASES = [  # bench/bench_na_gpu.py's CASES: (name, spatial, kernel, stride, batch)
    ("2d-64x64-k7", (64, 64), (7, 7), (1, 1), 16),
    ("2d-64x64-k13", (64, 64), (13, 13), (1, 1), 16),
    ("2d-128x128-k13", (128, 128), (13, 13), (1, 1), 4),
    ("2d-128x128-k16-s16", (128, 128), (16, 16), (16, 16), 4),
    ("3d-16x32x32-k3x7x7", (16, 32, 32), (3, 7, 7), (1, 1, 1), 4),
    ("1d-32768-k2048-s1", (32768,), (2048,), (1,), 1),
    ("1d-32768-k2048-s256", (32768,), (2048,), (256,), 1),
]
BSA_CASES = [(s, d, dens) for s in (16384, 32768) for d in (64, 128) for dens in (0.1, 0.25, 0.5, 1.0)]
PARO_SEQ, PARO_DIM = 226 + 13 * 30 * 45, 64
PARO_CASES = [(dens, bits) for dens in (0.3, 0.5) for bits in (8, 4)]


def tile_cycles(row: dict, path: str) -> dict:
    """SM cycles one CTA (4 warps) spends on one kv tile, per limit (each warp issues its tile's path)."""
    counts = row[path]
    elem = 2
    return dict(
        issue=counts["instructions"] * 4 / 4,                     # 4 warps, 4 schedulers, 1 instruction/clk each
        tensor=counts["by_class"]["mma"] * 4 * 4 / 4,             # m16n8k16 (or m16n8k32 int8): 4 clk/sub-partition
        shared=counts["shared_bytes"] * 4 / H100["smem_bytes_per_clk"],
        l2=2 * 64 * row["head_dim"] * elem / (H100["l2_bytes_per_s"] / H100["sms"] / H100["clock_hz"]),
        # the cp.async ring: each of the SM's resident blocks has (stages - 1) kv tiles in flight, so at most
        # blocks x (stages - 1) tiles complete per load latency
        latency=H100["load_latency_s"] * H100["clock_hz"] / ring_tiles_in_flight(row),
    )


def stages_of(row: dict) -> int:
    """The ring's stages of a core kernel's row (reports from before the Stages parameter have none: 2)."""
    return row.get("stages") or 2


def ring_tiles_in_flight(row: dict) -> int:
    """kv tiles in flight per SM on sm_90: resident blocks x (stages - 1)."""
    return max(1, row["occupancy"]["sm_90"]) * (stages_of(row) - 1)


def latency_hidden_ns(row: dict) -> float:
    """The load latency the ring hides in the steady state: a tile's load is issued (stages - 1) tiles of its
    block ahead, and a tile of one block takes the SM blocks x its steady cycles (the other limits)."""
    cycles = {k: v for k, v in tile_cycles(row, "tile_steady").items() if k != "latency"}
    return ring_tiles_in_flight(row) * max(cycles.values()) / H100["clock_hz"] * 1e9


def bound_of(cycles: dict) -> tuple[float, str]:
    limit = max(cycles, key=cycles.get)
    return cycles[limit], limit


def estimate(row: dict, tiles_steady: float, tiles_worst: float, ctas: float, useful: float, peak: float) -> dict:
    steady, limit = bound_of(tile_cycles(row, "tile_steady"))
    worst, _ = bound_of(tile_cycles(row, "tile_worst"))
    overhead = (row["total_instructions"] - row["loop_instructions"])  # prologue/epilogue issue cycles per CTA
    cycles = tiles_steady * steady + tiles_worst * worst + ctas * overhead
    seconds = cycles / (H100["sms"] * H100["clock_hz"])
    return dict(est_ms=seconds * 1e3, bound_ms=useful / peak * 1e3, pct_of_bound=100 * useful / peak / seconds,
                limit=limit, stages=stages_of(row), latency_hidden_ns=latency_hidden_ns(row))


def core_row(rows: list[dict], op: str, dim: int, quant_p: bool | None = None,
             int8_qk: bool | None = None, row_tiles: int = 1, stages: int | None = None) -> dict | None:
    """The sm_90 fp16 instance; stages: the ring's (default: the one sm_90 launches, else a build's only one)."""
    found = [r for r in rows if r["unit"] == "core" and r["op"] == op and r["dtype"] == "fp16" and
             r["head_dim"] == dim and r["arch"] == "sm_90" and (quant_p is None or r.get("quant_p") == quant_p) and
             (int8_qk is None or r.get("int8_qk") == int8_qk) and (r.get("row_tiles") or 1) == row_tiles]
    wanted = stages or sm90_stages(dim)
    return next((r for r in found if stages_of(r) == wanted), None if stages else next(iter(found), None))


def na_estimates(rows: list[dict]) -> list[dict]:
    from attn_export.models.na_kernel_sim import tile_schedule

    out = []
    for name, spatial, kernel, stride, batch in NA_CASES:
        sched = tile_schedule(spatial, kernel, stride)
        for dim in (64, 128):
            row = core_row(rows, "neighborhood", dim)
            if row is None:
                continue
            bh = batch * HEADS
            useful = 4.0 * bh * math.prod(spatial) * math.prod(kernel) * dim
            # The core skips the element mask per warp (its vote): a kv tile costs a quarter per warp.
            steady = sched.interior_warp_tiles / 4 if sched.warp_tiles else sched.interior_tiles
            masked = sched.kv_tiles - steady
            est = estimate(row, bh * steady, bh * masked, bh * sched.query_tiles, useful, H100["fp16_flops"])
            out.append(dict(case=name, head_dim=dim, kv_tiles=sched.kv_tiles, interior=sched.interior_tiles,
                            warp_tiles=sched.warp_tiles, interior_warp_tiles=sched.interior_warp_tiles, **est))
    return out


def bsa_estimates(rows: list[dict]) -> list[dict]:
    """The bench's 128 x 128 blocks with the 64-query tiles (block_q % 64) and the 128-query tiles the
    dispatcher picks for them (block_q % 128), where the build has each."""
    out = []
    for seq, dim, density in BSA_CASES:
        for row_tiles in (1, 2):
            row = core_row(rows, "block-sparse", dim, row_tiles=row_tiles)
            if row is None:
                continue
            query_tile = 64 * row_tiles
            blocks = max(1, round(density * seq / 128))
            ctas = HEADS * (seq // query_tile)
            useful = 4.0 * HEADS * seq * blocks * 128 * dim
            est = estimate(row, ctas * blocks * 2, 0, ctas, useful, H100["fp16_flops"])
            out.append(dict(case=f"bsa-{seq // 1024}k-d{int(density * 100)}", head_dim=dim, query_tile=query_tile,
                            **est))
    return out


def prepass_ms(seq: int, dim: int, int8_qk: bool = True) -> dict:
    """The pre-pass as launched (paro_forward.cu): channel statistics in chunks of 256 tokens, one 256-thread CTA
    per chunk and (batch, head), each thread walking 256 / lanes tokens with 4 loads in flight, then one thread
    per (batch, head, channel) adding the chunks in order, their loads in batches of 8 (kFinishBatch); then the
    group and channel quantizers (memory bound). Time of a kernel: max(bytes / (HBM bandwidth x min(1, CTAs /
    SMs)), serial loads x latency)."""
    bh, elem, chunk, finish_batch = HEADS, 2, 256, 8
    tensor = bh * seq * dim * elem
    lanes = 256 // min(dim, 256)
    chunks = math.ceil(seq / chunk)
    partials = max(2 * tensor / (H100["dram_bytes_per_s"] * min(1.0, bh * chunks / H100["sms"])),
                   math.ceil(chunk / lanes / 4) * math.ceil(dim / 256) * H100["load_latency_s"])
    finish = math.ceil(chunks / finish_batch) * H100["load_latency_s"]
    stats = partials + finish
    # q, k, v: each read once and written in permuted order; for the fused core's s8 MMA (int8_qk) q and k are
    # written as int8, half the input's bytes; v stays in the input type
    written = (2 * 0.5 if int8_qk else 2) + 1
    quantize = (3 + written) * tensor / H100["dram_bytes_per_s"]
    return dict(channel_stats_ms=stats * 1e3, quantize_ms=quantize * 1e3, prepass_ms=(stats + quantize) * 1e3)


def paro_estimates(rows: list[dict]) -> list[dict]:
    out = []
    nb = math.ceil(PARO_SEQ / 64)
    for density, bits in PARO_CASES:
        # the INT8/INT4 cases: quantized QK (the s8 MMA where the build has it) and quantized P
        row = core_row(rows, "paro", PARO_DIM, quant_p=True, int8_qk=True) or \
            core_row(rows, "paro", PARO_DIM, quant_p=True)
        if row is None:
            continue
        blocks = max(1, round(density * nb))
        tiles = HEADS * nb * blocks
        useful = 4.0 * HEADS * PARO_SEQ * blocks * 64 * PARO_DIM
        est = estimate(row, tiles, 0, HEADS * nb, useful, H100["int8_ops"])
        pre = prepass_ms(PARO_SEQ, PARO_DIM, int8_qk=bool(row.get("int8_qk")))
        out.append(dict(case=f"paro-cogvideox-d{int(density * 10)}-int{bits}", head_dim=PARO_DIM, **est, **pre,
                        prepass_share=pre["prepass_ms"] / est["est_ms"]))
    return out


# ---- output: JSON, markdown, the CI check ---------------------------------------------------------------

def kernel_key(row: dict) -> str:
    return f"{row['arch']} {row['source']} {row['kernel'].split('(')[0]}"


def report(rows: list[dict]) -> dict:
    return dict(kernels=rows, model=dict(H100, heads=HEADS), neighborhood=na_estimates(rows),
                block_sparse=bsa_estimates(rows), paro=paro_estimates(rows))


def _variant(r: dict) -> str:
    ring = ", 3 stages" if stages_of(r) == 3 else ""
    if r["op"] == "paro":
        qk = "QK s8 MMA, " if r.get("int8_qk") else "QK fp16, " if r.get("int8_qk") is False else ""
        return f"paro ({qk}P quantized{ring})" if r["quant_p"] else f"paro ({qk}P fp16{ring})"
    if r.get("row_tiles", 1) > 1:
        return f"{r['op']} ({64 * r['row_tiles']}-query tiles{ring})"
    return f"{r['op']} (3 stages)" if ring else r["op"]


def _ring(e: dict) -> str:
    return f"{e['stages']} stages hide {e['latency_hidden_ns']:.0f} ns"


def markdown(data: dict) -> str:
    lines = ["| arch | kernel | dtype | head_dim | regs | spills | smem static+dyn | blocks/SM sm_80 / sm_90 | "
             "tile steady: instr / MMA / shared B | tile worst: instr | steady by class (int / float / shared ld / "
             "branch+sync / other) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in data["kernels"]:
        st, c = r["tile_steady"], r["tile_steady"]["by_class"]
        name = _variant(r) if r["unit"] == "core" else f"{r['unit']}: {r['op']} ({r['source']})"
        smem = f"{r['static_smem']}+{r['dynamic_smem'] if r['dynamic_smem'] is not None else 'per launch'}"
        other = sum(c.values()) - c["integer"] - c["float"] - c["shared_load"] - c["branch"] - c["sync"] - c["mma"]
        lines.append(
            f"| {r['arch']} | {name} | {r['dtype']} | {r['head_dim'] or '-'} | {r['registers']} | "
            f"{r['spill_instructions']} | {smem} | {r['occupancy']['sm_80']} / {r['occupancy']['sm_90']} | "
            f"{st['instructions']} / {c['mma']} / {st['shared_bytes']} | {r['tile_worst']['instructions']} | "
            f"{c['integer']} / {c['float']} / {c['shared_load']} / {c['branch'] + c['sync']} / {other} |")
    lines += ["", "| case | head_dim | estimate ms | FLOP-bound ms | % of bound | limit | notes |",
              "|---|---|---|---|---|---|---|"]
    for e in data["neighborhood"]:
        lines.append(f"| na {e['case']} | {e['head_dim']} | {e['est_ms']:.3f} | {e['bound_ms']:.3f} | "
                     f"{e['pct_of_bound']:.0f}% | {e['limit']} | {e['interior_warp_tiles']} of {e['warp_tiles']} "
                     f"warp tiles unmasked; {_ring(e)} |")
    for e in data["block_sparse"]:
        lines.append(f"| {e['case']} | {e['head_dim']} | {e['est_ms']:.3f} | {e['bound_ms']:.3f} | "
                     f"{e['pct_of_bound']:.0f}% | {e['limit']} | {e.get('query_tile', 64)}-query tiles; {_ring(e)} |")
    for e in data["paro"]:
        lines.append(f"| {e['case']} | {e['head_dim']} | {e['est_ms']:.3f} | {e['bound_ms']:.3f} (int8) | "
                     f"{e['pct_of_bound']:.0f}% | {e['limit']} | pre-pass {e['prepass_ms']:.3f} ms "
                     f"({100 * e['prepass_share']:.1f}% of the attention); {_ring(e)} |")
    return "\n".join(lines) + "\n"


def baseline_of(rows: list[dict]) -> dict:
    return {kernel_key(r): dict(steady=r["tile_steady"]["instructions"], worst=r["tile_worst"]["instructions"],
                                spills=r["spill_instructions"]) for r in rows}


def _same_config(r: dict) -> tuple:
    return r["arch"], r["op"], r["dtype"], r["head_dim"], r.get("quant_p"), r.get("int8_qk"), r.get("row_tiles")


def ring_problems(rows: list[dict]) -> list[str]:
    """core_plan.h's core_stages takes 3 stages on sm_90 because the third costs no block per SM there: a 3-stage
    instance with fewer sm_90 blocks than its 2-stage twin breaks that premise."""
    cores = [r for r in rows if r.get("unit") == "core"]
    two = {_same_config(r): r for r in cores if stages_of(r) == 2}
    problems = []
    for r in cores:
        twin = two.get(_same_config(r)) if stages_of(r) == 3 else None
        if twin and r["arch"] == "sm_90" and r["occupancy"]["sm_90"] < twin["occupancy"]["sm_90"]:
            problems.append(f"{kernel_key(r)}: 3 stages give {r['occupancy']['sm_90']} blocks per SM, 2 stages "
                            f"{twin['occupancy']['sm_90']} (core_plan.h's core_stages must not pick 3 here)")
    return problems


def ci_problems(rows: list[dict], baseline: dict) -> list[str]:
    """A kernel that spills more than its baseline allows (a new kernel: none), or whose main loop (steady or
    worst tile) grew more than GROWTH_LIMIT in instructions; a 3-stage ring that costs sm_90 blocks per SM."""
    problems = ring_problems(rows)
    for r in rows:
        key, base = kernel_key(r), baseline.get(kernel_key(r))
        allowed = base["spills"] if base else 0
        if r["spill_instructions"] > allowed:
            problems.append(f"{key}: {r['spill_instructions']} spill instructions (baseline allows {allowed})")
        if not base:
            continue
        for path in ("steady", "worst"):
            now, before = r[f"tile_{path}"]["instructions"], base[path]
            if before and now > before * (1 + GROWTH_LIMIT):
                problems.append(f"{key}: {path} tile {now} instructions, {100 * (now / before - 1):.0f}% over the "
                                f"baseline's {before}")
    return problems


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--build-dir", type=Path, help="a CMake build of plugins/ (attn-export plugins build)")
    src.add_argument("--compile", action="store_true", help="nvcc -cubin every kernel unit instead")
    ap.add_argument("--arch", action="append",
                    help="SM architectures: with --compile, those to compile (default 90 and 80); with --build-dir, "
                         "those to compile besides the build's own (release builds target 80/86/89 too)")
    ap.add_argument("--cutlass", default=os.environ.get("CUTLASS_DIR", ""),
                    help="CUTLASS checkout for compiling (default with --build-dir: the one the build fetched)")
    ap.add_argument("--json", type=Path, help="write the report as JSON here")
    ap.add_argument("--markdown", type=Path, help="write the markdown tables here (default: stdout)")
    ap.add_argument("--ci", type=Path, metavar="BASELINE", help="exit 1 on spills or > 10%% main-loop growth")
    ap.add_argument("--write-baseline", type=Path, metavar="BASELINE", help="record the loops as the baseline")
    return ap.parse_args(argv)


def gather_cubins(args, work: Path) -> list[Path]:
    """The build's cubins plus --arch architectures it lacks (compiled), or --compile's."""
    if not args.build_dir:
        return cubins_by_compiling(args.arch or ["90", "80"], args.cutlass, work)
    cubins = cubins_from_build(args.build_dir, work)
    built = {arch_of(c) for c in cubins}
    extra = [a for a in args.arch or [] if f"sm_{a}" not in built]
    if extra:
        compiled = work / "compiled"
        compiled.mkdir()
        cubins += cubins_by_compiling(extra, args.cutlass or str(args.build_dir / "_deps" / "cutlass"), compiled)
    return cubins


def run(args) -> int:
    if not args.build_dir and not args.compile:
        raise AttnExportError("give --build-dir BUILD (a plugins build) or --compile", EXIT_BAD_INPUT)
    with tempfile.TemporaryDirectory() as work:
        rows = collect(gather_cubins(args, Path(work)))
    if not rows:
        raise AttnExportError("no kernels found in the cubins", EXIT_BAD_INPUT)
    data = report(rows)
    if args.json:
        args.json.write_text(json.dumps(data, indent=1) + "\n")
    table = markdown(data)
    if args.markdown:
        args.markdown.write_text(table)
    elif not args.ci:
        print(table)
    if args.write_baseline:
        args.write_baseline.write_text(json.dumps(baseline_of(rows), indent=1, sort_keys=True) + "\n")
    if args.ci:
        if not args.ci.is_file():
            raise AttnExportError(f"--ci {args.ci}: no such baseline; record one with --write-baseline", EXIT_BAD_INPUT)
        problems = ci_problems(rows, json.loads(args.ci.read_text()))
        for p in problems:
            print(f"FAIL {p}")
        print(f"kernel report: {len(rows)} kernels, {len(problems)} problems")
        return 1 if problems else 0
    return 0


def main(argv=None) -> int:
    try:
        return run(parse_args(argv))
    except AttnExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
