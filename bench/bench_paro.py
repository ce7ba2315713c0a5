"""PARO on the CPU: planner time and memory vs N, op time vs density (against dense SDPA in the same run), and
quality (recall, relative L2, cosine vs dense attention; chosen order vs FHW) on the positional workload and
on paro-dit-tiny.

    python bench/bench_paro.py [--part planner op quality] [--reps 5]
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import median_ms

PLANNER_GRIDS = [((4, 16, 16), 0), ((8, 16, 16), 0), ((8, 32, 32), 0), ((13, 30, 45), 226)]
PLANNER_SCRIPT = """
import json, resource, sys, time, torch
from attn_export.calib.paro import plan_head
grid, prefix = tuple(json.loads(sys.argv[1])), int(sys.argv[2])
n = prefix + grid[0] * grid[1] * grid[2]
gen = torch.Generator().manual_seed(0)
q, k = torch.randn(1, n, 16, generator=gen), torch.randn(1, n, 16, generator=gen)
plan_head(q[:, :64], k[:, :64], (1, 8, 8), 0, 0.3, 16)  # warm-up
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
plan_head(q, k, grid, prefix, density=0.3, block=64)
print(json.dumps({"seconds": time.perf_counter() - start,
                  "peak_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024}))
"""


def planner_rows() -> list[dict]:
    rows = []
    for grid, prefix in PLANNER_GRIDS:
        out = subprocess.run([sys.executable, "-c", PLANNER_SCRIPT, json.dumps(grid), str(prefix)],
                             capture_output=True, text=True, check=True)
        n = prefix + math.prod(grid)
        rows.append({"grid": "x".join(map(str, grid)) + (f" + {prefix}" if prefix else ""), "n": n,
                     "nxn_fp32_mb": n * n * 4 / 2**20, **json.loads(out.stdout)})
    return rows


def op_rows(reps: int) -> tuple[float, list[dict]]:
    """paro_attention at several densities vs dense SDPA on N = 4096 (16 x 16 x 16), 4 heads, head_dim 64."""
    from attn_export.models.block_layout import from_block_mask
    from attn_export.models.paro import grid_permutation, paro_attention

    grid, heads, dim, block = (16, 16, 16), 4, 64, 64
    n = math.prod(grid)
    nb = n // block
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, heads, n, dim, generator=gen) for _ in range(3))
    perm = torch.stack([grid_permutation(h % 6, grid) for h in range(heads)]).to(torch.int32)
    with torch.inference_mode():
        dense = median_ms(functools.partial(torch.nn.functional.scaled_dot_product_attention, q, k, v), reps)
        rows = []
        for density in (0.1, 0.2, 0.3, 0.5, 1.0):
            mask = torch.rand(1, heads, nb, nb, generator=gen).argsort(-1) < max(1, round(density * nb))
            mask |= torch.eye(nb, dtype=torch.bool)
            count, index = from_block_mask(mask)
            for qk_bits, pv_bits in ((16, 16), (8, 8), (4, 4)):
                call = functools.partial(paro_attention, q, k, v, perm, count, index, block, qk_bits, pv_bits)
                ms = median_ms(call, reps)
                rows.append({"density": density, "bits": f"{qk_bits}/{pv_bits}", "ms": ms, "vs_dense": ms / dense})
    return dense, rows


def quality_rows() -> list[dict]:
    """Recall, rel L2 and cosine vs dense attention, chosen order vs FHW, per density and precision."""
    from attn_export.calib.paro import head_quality, plan_head
    from attn_export.models.paro_workload import workload

    grid = (8, 16, 16)
    calib, held = workload(grid, 0, samples=4, seed=0), workload(grid, 0, samples=2, seed=100)
    rows = []
    for head in ("temporal", "vertical", "horizontal", "local"):
        for density in (0.1, 0.2, 0.3, 0.5):
            plan = plan_head(*calib[head][:2], grid, density=density, block=64, scale=1.0)
            for bits, name in ((16, "fp16"), (8, "int8"), (4, "int4")):
                chosen = head_quality(*held[head], plan, None, 64, bits, bits, scale=1.0)
                identity = head_quality(*held[head], plan, 0, 64, bits, bits, scale=1.0)
                rows.append({"workload": f"positional {head}", "density": density, "precision": name,
                             "order": plan.order_name, "recall": plan.recall, "rel_l2": chosen["rel_l2"],
                             "cosine": chosen["cosine"], "fhw_rel_l2": identity["rel_l2"],
                             "fhw_cosine": identity["cosine"]})
    rows += dit_quality_rows()
    return rows


def dit_quality_rows() -> list[dict]:
    """paro-dit-tiny: per density, mean over its 8 heads of the held-out metrics, and the model output's error."""
    from attn_export import paro_export
    from attn_export.loader import load_model
    from attn_export.models import zoo

    loaded = load_model("zoo:paro-dit-tiny")
    entry = zoo.entry("paro-dit-tiny")
    calib = [{s.name: t.numpy() for s, t in zip(entry.inputs, entry.example_inputs(1000 + i))} for i in range(32)]
    rows = []
    for density in (0.1, 0.2, 0.3, 0.5):
        for bits, name in ((16, "fp16"), (8, "int8"), (4, "int4")):
            settings = paro_export.ParoSettings((4, 8, 8), 8, 16, density, bits, bits)
            job = paro_export.prepare(loaded, settings, iter(calib), "seeded random")
            paro_export.held_out_quality(loaded, job.plan, settings, 0)
            heads = [h for c in job.plan.calls for h in c.head_info]

            def mean(key, heads=heads, name=name):
                return sum(h["held_out"][f"{key}_{name}"]["rel_l2"] for h in heads) / len(heads)

            with torch.inference_mode():
                errors = []
                for x in (entry.example_inputs(9000 + i) for i in range(3)):
                    want, got = loaded.module(*x), job.loaded.module(*x)
                    errors.append(float((got - want).abs().mean() / want.abs().mean()))
            rows.append({"workload": "paro-dit-tiny (mean of 8 heads)", "density": density, "precision": name,
                         "order": "per head", "recall": sum(h["recall"] for h in heads) / len(heads),
                         "rel_l2": mean("chosen"), "cosine": float("nan"), "fhw_rel_l2": mean("FHW"),
                         "fhw_cosine": float("nan"), "model_output_error": sum(errors) / len(errors)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", nargs="+", default=["planner", "op", "quality"])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--json")
    args = parser.parse_args()
    result = {"threads": torch.get_num_threads(), "torch": torch.__version__}
    if "planner" in args.part:
        result["planner"] = rows = planner_rows()
        print("| grid | N | plan one head (s) | peak MB | one N x N fp32 (MB) |\n|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['grid']} | {r['n']} | {r['seconds']:.2f} | {r['peak_mb']:.0f} | {r['nxn_fp32_mb']:.0f} |")
    if "op" in args.part:
        dense, rows = op_rows(args.reps)
        result["op"] = {"dense_ms": dense, "rows": rows}
        print(f"\nN = 4096 (16x16x16), 4 heads, head_dim 64, block 64; dense SDPA {dense:.1f} ms")
        print("| density | QK/PV bits | op ms | op / dense SDPA |\n|---|---|---|---|")
        for r in rows:
            print(f"| {r['density']:.1f} | {r['bits']} | {r['ms']:.1f} | {r['vs_dense']:.2f} |")
    if "quality" in args.part:
        result["quality"] = rows = quality_rows()
        print("\n| workload | density | precision | order | recall | rel L2 | cosine | FHW rel L2 | FHW cosine |"
              " model output error |\n|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['workload']} | {r['density']:.1f} | {r['precision']} | {r['order']} | {r['recall']:.4f} | "
                  f"{r['rel_l2']:.4f} | {r['cosine']:.4f} | {r['fhw_rel_l2']:.4f} | {r['fhw_cosine']:.4f} | "
                  f"{r.get('model_output_error', float('nan')):.4f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
