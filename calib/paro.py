"""The PARO planner: per attention head, choose the token order and the block mask (docs/ops/paro_attention.md,
"The planner").

For each head: average the post-softmax map over the calibration samples, accumulated per block x block tile
of each of the six orders while streaming query chunks (memory O(chunk * N), never N x N); score each order by
C_sparse (the fraction of blocks holding 95% of the attention mass; lower is better) and C_quant (the
mass-weighted mean incoherence max|p| / mean|p| of the blocks kept at the target density); pick the order
minimising alpha * C_sparse / sum(C_sparse) + (1 - alpha) * C_quant / sum(C_quant) (ties within 1e-6 go to
the lowest index); keep blocks in descending mass until the density is reached, always keeping the diagonal
blocks and the prefix block rows and columns.

``plan_head`` plans one head from its q / k; ``plan_model`` (and the --paro export) plans every
scaled_dot_product_attention call of a model from calibration inputs; a ParoPlan saves to
OUTDIR/paro_plan.json + paro_plan.npz and loads again (--paro-plan).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from attn_export import defaults
from attn_export.errors import AttnExportError
from attn_export.models.block_layout import from_block_mask
from attn_export.models.paro import ORDER_NAMES, grid_permutation, paro_attention
from attn_export.models.sdpa_capture import SdpaRecorder

RECALL_TARGET = 0.95  # C_sparse: the share of the attention mass its blocks must hold
TIE = 1e-6  # relative score difference below which orders tie (the lower index wins)
DEFAULT_DENSITY = defaults.PARO_DENSITY
DEFAULT_BLOCK = defaults.PARO_BLOCK
DEFAULT_ALPHA = 0.5
PLAN_FORMAT = "attn-export paro plan 1"


@dataclass
class HeadPlan:
    """One head's plan: its order, gather index and layout(s) over the permuted sequence, and its metrics."""

    order: int
    perm_idx: torch.Tensor  # [N] int64: original token at each permuted position
    kv_count: torch.Tensor  # [T, nb] int32 (T buckets; 1 without buckets)
    kv_index: torch.Tensor  # [T, nb, max_blocks] int32, -1 padded
    density: float  # achieved: kept blocks / nb^2 (mean over buckets)
    recall: float  # attention mass kept / total (mean over buckets)
    costs: dict[str, tuple[float, float]]  # order name -> (C_sparse, C_quant)
    masks: torch.Tensor = field(repr=False)  # [6, T, nb, nb] bool: every order's mask (for comparisons)
    grid: tuple[int, int, int] = (1, 1, 1)
    prefix: int = 0

    @property
    def order_name(self) -> str:
        return ORDER_NAMES[self.order]

    def permutation(self, order: int | None = None) -> torch.Tensor:
        """The gather index of ``order`` (default: the chosen one) on this plan's grid."""
        return self.perm_idx if order in (None, self.order) else grid_permutation(order, self.grid, self.prefix)


def _num_blocks(n: int, block: int) -> int:
    return -(-n // block)


def tile_statistics(q: torch.Tensor, k: torch.Tensor, grid: Sequence[int], prefix: int, block: int,
                    scale: float | None = None, buckets: Sequence[int] | None = None, n_buckets: int = 1,
                    chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per order and bucket, the sample-averaged attention mass and peak of every block x block tile:
    ``mass, peak [6, T, nb, nb]`` (float64). q, k ``[S, N, D]``; ``buckets[s]`` is sample s's bucket.
    Streams query chunks: memory O(chunk * N)."""
    samples, n, dim = q.shape
    scale = dim ** -0.5 if scale is None else scale
    buckets = [0] * samples if buckets is None else list(buckets)
    per_bucket = [max(1, buckets.count(t)) for t in range(n_buckets)]
    nb = _num_blocks(n, block)
    full = (n // block) * block  # tokens in whole blocks; a partial tail block is reduced on its own
    chunk = chunk or 4 * block
    perms = torch.stack([grid_permutation(o, grid, prefix) for o in range(len(ORDER_NAMES))])  # [6, N]
    positions = torch.empty_like(perms).scatter_(1, perms, torch.arange(n).expand_as(perms))  # inverse
    row_blocks = positions // block  # [6, N]: each token's block under each order
    mass = torch.zeros(len(ORDER_NAMES), n_buckets, nb, nb, dtype=torch.float64)
    peak = torch.zeros_like(mass)
    for lo in range(0, n, chunk):
        hi = min(lo + chunk, n)
        averaged = torch.zeros(n_buckets, hi - lo, n)
        for s in range(samples):
            logits = (q[s, lo:hi].float() @ k[s].float().T) * scale
            averaged[buckets[s]] += torch.softmax(logits, dim=-1) / per_bucket[buckets[s]]
        for o in range(len(ORDER_NAMES)):
            permuted = averaged.index_select(2, perms[o])  # columns in the order's sequence
            whole = permuted[..., :full].reshape(n_buckets, hi - lo, full // block, block)
            sums, peaks = whole.sum(-1), whole.amax(-1)
            if full < n:
                tail = permuted[..., full:]
                sums = torch.cat([sums, tail.sum(-1, keepdim=True)], dim=-1)
                peaks = torch.cat([peaks, tail.amax(-1, keepdim=True)], dim=-1)
            rows = row_blocks[o, lo:hi]
            mass[o].index_add_(1, rows, sums.double())
            peak[o].scatter_reduce_(1, rows.view(1, -1, 1).expand(n_buckets, -1, nb), peaks.double(), "amax")
    return mass, peak


def block_mask(mass: torch.Tensor, density: float, prefix: int, block: int) -> torch.Tensor:
    """Blocks kept for one order and bucket (``mass [nb, nb]``): the diagonal and the prefix block rows and
    columns always, then blocks in descending mass until ``density`` of the nb x nb grid is kept."""
    nb = mass.shape[-1]
    keep = torch.eye(nb, dtype=torch.bool)
    prefix_blocks = _num_blocks(prefix, block)
    keep[:prefix_blocks] = True
    keep[:, :prefix_blocks] = True
    target = math.ceil(density * nb * nb)
    extra = max(0, target - int(keep.sum()))
    if extra:
        ranked = torch.where(keep, torch.full_like(mass, -1.0), mass).flatten()
        keep.view(-1)[ranked.topk(extra).indices] = True
    return keep


def _costs(mass: torch.Tensor, peak: torch.Tensor, keep: torch.Tensor, counts: torch.Tensor) -> tuple[float, float]:
    """(C_sparse, C_quant) of one order from its bucket-summed mass and peak ``[nb, nb]`` and kept mask."""
    total = float(mass.sum())
    ranked = mass.flatten().sort(descending=True).values.cumsum(0)
    needed = int((ranked < RECALL_TARGET * total).sum()) + 1
    c_sparse = min(needed, ranked.numel()) / ranked.numel()
    mean = mass / counts
    incoherence = torch.where(mass > 0, peak / mean.clamp_min(1e-300), torch.ones_like(mass))
    kept_mass = mass[keep]
    c_quant = float((kept_mass * incoherence[keep]).sum() / kept_mass.sum()) if float(kept_mass.sum()) > 0 else 1.0
    return c_sparse, c_quant


def choose_order(costs: Sequence[tuple[float, float]], alpha: float = DEFAULT_ALPHA) -> int:
    """argmin of alpha * C_sparse / sum(C_sparse) + (1 - alpha) * C_quant / sum(C_quant); ties to the lowest."""
    sparse_sum = sum(c for c, _ in costs) or 1.0
    quant_sum = sum(c for _, c in costs) or 1.0
    scores = [alpha * cs / sparse_sum + (1 - alpha) * cq / quant_sum for cs, cq in costs]
    best = 0
    for i, score in enumerate(scores):
        if score < scores[best] and (scores[best] - score) > TIE * abs(scores[best]):
            best = i
    return best


def plan_head(q: torch.Tensor, k: torch.Tensor, grid: Sequence[int], prefix: int = 0,
              density: float = DEFAULT_DENSITY, block: int = DEFAULT_BLOCK, alpha: float = DEFAULT_ALPHA,
              scale: float | None = None, buckets: Sequence[int] | None = None, n_buckets: int = 1,
              order: int | None = None) -> HeadPlan:
    """Plan one head from its calibration q, k ``[S, N, D]`` (positional encoding applied). ``order`` forces an
    order (e.g. 0 for the identity, to compare); ``buckets[s]`` puts sample s in one of ``n_buckets`` masks."""
    check_plan_arguments(q.shape[1], grid, prefix, density, block)
    if q.dim() != 3 or k.shape != q.shape:
        raise AttnExportError(f"plan_head: q and k must be [samples, N, D] of one shape; got {tuple(q.shape)} and "
                              f"{tuple(k.shape)}")
    mass, peak = tile_statistics(q, k, grid, prefix, block, scale, buckets, n_buckets)
    nb = mass.shape[-1]
    sizes = torch.full((nb,), float(block), dtype=torch.float64)
    sizes[-1] = q.shape[1] - block * (nb - 1)
    counts = sizes[:, None] * sizes[None, :]
    masks = torch.stack([torch.stack([block_mask(mass[o, t], density, prefix, block) for t in range(n_buckets)])
                         for o in range(len(ORDER_NAMES))])  # [6, T, nb, nb]
    costs = [_costs(mass[o].sum(0), peak[o].amax(0), masks[o].any(0), counts) for o in range(len(ORDER_NAMES))]
    chosen = choose_order(costs, alpha) if order is None else order
    kept = masks[chosen]
    recall = float(((mass[chosen] * kept).sum((-1, -2)) / mass[chosen].sum((-1, -2)).clamp_min(1e-300)).mean())
    kv_count, kv_index = from_block_mask(kept[:, None])  # [T, 1, nb], [T, 1, nb, M]
    return HeadPlan(chosen, grid_permutation(chosen, grid, prefix), kv_count[:, 0], kv_index[:, 0],
                    float(kept.float().mean()), recall, dict(zip(ORDER_NAMES, costs)), masks,
                    tuple(int(d) for d in grid), prefix)


def check_plan_arguments(n: int, grid: Sequence[int], prefix: int, density: float, block: int) -> None:
    """One-line errors for a grid that does not cover the tokens, a density outside (0, 1], a bad block."""
    grid = tuple(int(d) for d in grid)
    if len(grid) != 3 or min(grid) < 1:
        raise AttnExportError(f"--paro-grid {'x'.join(map(str, grid))} must be three positive sizes FxHxW")
    if prefix < 0 or prefix + math.prod(grid) != n:
        raise AttnExportError(f"--paro-grid {'x'.join(map(str, grid))} with --paro-prefix {prefix} covers "
                              f"{prefix + math.prod(grid)} tokens but the attention has N={n}; make prefix + F*H*W = N")
    if not 0 < density <= 1:
        raise AttnExportError(f"--paro-density {density} must lie in (0, 1]")
    if not isinstance(block, int) or block < 1:
        raise AttnExportError(f"PARO block {block!r} must be a positive int")


# ---------------------------------------------------------------------------------------------
# Quality on held-out inputs


def head_quality(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: HeadPlan, order: int | None = None,
                 block: int = DEFAULT_BLOCK, qk_bits: int = 16, pv_bits: int = 16, scale: float | None = None,
                 bucket: int = 0) -> dict[str, float]:
    """Relative L2 and cosine of PARO attention (the plan's order, or ``order`` with that order's mask at the
    same density) against dense fp32 attention, on held-out q, k, v ``[S, N, D]`` of one head."""
    order = plan.order if order is None else order
    count, index = from_block_mask(plan.masks[order, bucket][None, None])
    qb, kb, vb = (x[:, None].float() for x in (q, k, v))
    perm = plan.permutation(order)[None].to(torch.int32)
    got = paro_attention(qb, kb, vb, perm, count, index, block, qk_bits, pv_bits, scale=scale)
    want = torch.nn.functional.scaled_dot_product_attention(qb, kb, vb, scale=scale)
    return quality(got, want)


def quality(got: torch.Tensor, want: torch.Tensor) -> dict[str, float]:
    """Relative L2 error and cosine similarity of ``got`` against ``want``."""
    got, want = got.double().flatten(), want.double().flatten()
    rel = float((got - want).norm() / want.norm().clamp_min(1e-300))
    return {"rel_l2": rel, "cosine": float(torch.nn.functional.cosine_similarity(got, want, dim=0))}


# ---------------------------------------------------------------------------------------------
# Whole models: every eligible scaled_dot_product_attention call, planned head by head


@dataclass
class CallPlan:
    """The plan of one SDPA call: per-head gather indices and layouts (arrays), and per-head metadata."""

    index: int
    heads: int
    n: int
    head_dim: int
    scale: float | None
    perm_idx: np.ndarray  # int32 [heads, N]
    kv_count: np.ndarray  # int32 [T, 1, heads, nb]
    kv_index: np.ndarray  # int32 [T, 1, heads, nb, max_blocks], -1 padded
    head_info: list[dict]  # per head: order, costs, density, recall (and quality, when measured)
    # The identity order's (FHW) layout planned on the same calibration data at the same density, per head (bucket
    # 0): the baseline the chosen order is compared with. None in plans saved before it was kept.
    fhw_kv_count: np.ndarray | None = None  # int32 [heads, nb]
    fhw_kv_index: np.ndarray | None = None  # int32 [heads, nb, max_blocks], -1 padded


@dataclass
class ParoPlan:
    """Every call's plan plus the settings it was made with: data to save, inspect, reuse and diff."""

    grid: tuple[int, int, int]
    prefix: int
    block: int
    density: float
    alpha: float
    buckets: int
    calls: list[CallPlan]
    skipped: dict[int, str] = field(default_factory=dict)  # call index -> why PARO left it dense
    samples: int = 0
    source: str = ""
    quality_inputs: str = ""  # what the held-out quality of each head was measured on (empty: not measured)

    @property
    def tokens(self) -> int:
        return self.prefix + math.prod(self.grid)

    def call(self, index: int) -> CallPlan | None:
        return next((c for c in self.calls if c.index == index), None)

    def summary(self) -> dict:
        """JSON-ready: settings, skipped calls and per call and head the order, costs, density, recall."""
        return {
            "format": PLAN_FORMAT, "grid": list(self.grid), "prefix": self.prefix, "tokens": self.tokens,
            "block": self.block, "density": self.density, "alpha": self.alpha, "buckets": self.buckets,
            "calibration_samples": self.samples, "calibration_data": self.source,
            "quality_inputs": self.quality_inputs,
            "skipped_calls": {str(i): why for i, why in self.skipped.items()},
            "calls": [{"call": c.index, "heads": c.heads, "tokens": c.n, "head_dim": c.head_dim, "scale": c.scale,
                       "max_blocks": int(c.kv_index.shape[-1]), "per_head": c.head_info} for c in self.calls],
        }

    def save(self, json_path: str | Path) -> None:
        """Write ``json_path`` (settings and metrics) and the arrays beside it (same name, .npz)."""
        json_path = Path(json_path)
        arrays = {}
        for c in self.calls:
            arrays.update({f"call{c.index}.perm_idx": c.perm_idx, f"call{c.index}.kv_count": c.kv_count,
                           f"call{c.index}.kv_index": c.kv_index})
            if c.fhw_kv_count is not None:
                arrays.update({f"call{c.index}.fhw_kv_count": c.fhw_kv_count,
                               f"call{c.index}.fhw_kv_index": c.fhw_kv_index})
        np.savez(json_path.with_suffix(".npz"), **arrays)
        json_path.write_text(json.dumps(self.summary(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ParoPlan:
        """Read a plan written by ``save`` (give the .json or the .npz; both must exist)."""
        path = Path(path)
        json_path, npz_path = path.with_suffix(".json"), path.with_suffix(".npz")
        try:
            meta = json.loads(json_path.read_text())
            arrays = np.load(npz_path, allow_pickle=False)
        except FileNotFoundError as exc:
            raise AttnExportError(f"--paro-plan {path}: {Path(exc.filename).name} is missing; a plan is a .json "
                                  "and a .npz of the same name, as an export writes them") from None
        except (OSError, ValueError) as exc:
            raise AttnExportError(f"--paro-plan {path} is not a readable PARO plan ({type(exc).__name__})") from None
        if not isinstance(meta, dict) or meta.get("format") != PLAN_FORMAT:
            raise AttnExportError(f"--paro-plan {path} is not an attn-export PARO plan (paro_plan.json)")
        try:
            calls = [CallPlan(c["call"], c["heads"], c["tokens"], c["head_dim"], c["scale"],
                              arrays[f"call{c['call']}.perm_idx"], arrays[f"call{c['call']}.kv_count"],
                              arrays[f"call{c['call']}.kv_index"], c["per_head"],
                              *_optional(arrays, f"call{c['call']}.fhw_kv_count", f"call{c['call']}.fhw_kv_index"))
                     for c in meta["calls"]]
            return cls(tuple(meta["grid"]), meta["prefix"], meta["block"], meta["density"], meta["alpha"],
                       meta["buckets"], calls, {int(i): why for i, why in meta["skipped_calls"].items()},
                       meta["calibration_samples"], meta["calibration_data"])
        except (KeyError, TypeError) as exc:
            raise AttnExportError(f"--paro-plan {path} is incomplete (no {exc}); write plans with "
                                  "attn-export") from None

    def check_fits(self, calls: dict[int, object], where: str) -> None:
        """One line naming the difference when this plan was made for other attention calls than ``calls``
        (index -> SdpaCall of the model being exported)."""
        wanted = {i: (c.heads, c.n, c.head_dim) for i, c in calls.items() if c.eligible}
        have = {c.index: (c.heads, c.n, c.head_dim) for c in self.calls}
        if wanted != have:
            def text(shapes):
                return ", ".join(f"call {i}: {h} heads x {n} tokens x {d}" for i, (h, n, d) in sorted(shapes.items()))

            raise AttnExportError(f"{where} was made for another model: it plans [{text(have) or 'no call'}], this "
                                  f"model has [{text(wanted) or 'no eligible call'}]; plan it anew (drop --paro-plan)")


def plan_model(model: torch.nn.Module, calib_inputs: Iterable[Sequence[torch.Tensor]], grid: Sequence[int],
               prefix: int = 0, density: float = DEFAULT_DENSITY, block: int = DEFAULT_BLOCK,
               alpha: float = DEFAULT_ALPHA, buckets: int = 1,
               bucket_of: Callable[[Sequence[torch.Tensor]], Sequence[int]] | None = None, source: str = "",
               progress: Callable[[Iterable], Iterable] | None = None) -> ParoPlan:
    """Plan every eligible ``F.scaled_dot_product_attention`` call of ``model`` from calibration inputs (each
    a tuple of model inputs). With ``buckets`` > 1, ``bucket_of(inputs)`` gives each sample's bucket."""
    grid = tuple(int(d) for d in grid)
    tokens = prefix + math.prod(grid)
    recorder = SdpaRecorder(tokens, keep=True)
    sample_buckets: list[int] = []
    samples = 0
    for inputs in calib_inputs:
        recorder.run(model, *inputs)
        batch = int(inputs[0].shape[0]) if inputs and inputs[0].dim() else 1
        sample_buckets += list(bucket_of(inputs)) if bucket_of else [0] * batch
        samples += batch
    eligible = {i: c for i, c in recorder.calls.items() if c.eligible}
    if not samples:
        raise AttnExportError("--paro: no calibration samples to plan on; give more --calib-data (some of it is "
                              "held out for the check) or raise --calib-samples")
    if not recorder.calls:
        raise AttnExportError("--paro: the model makes no torch.nn.functional.scaled_dot_product_attention call; "
                              "PARO replaces SDPA calls (write the attention with F.scaled_dot_product_attention)")
    if not eligible:
        first = next(iter(recorder.calls.values()))
        raise AttnExportError(f"--paro: no SDPA call can be replaced: call {first.index} is refused because "
                              f"{first.refusal}")
    check_plan_arguments(tokens, grid, prefix, density, block)
    if any(not 0 <= b < buckets for b in sample_buckets):
        raise AttnExportError(f"PARO buckets: a calibration sample falls in bucket {max(sample_buckets)}, outside "
                              f"0..{buckets - 1}")
    calls = []
    work = [(i, h) for i in sorted(eligible) for h in range(eligible[i].heads)]
    heads: dict[int, list[HeadPlan]] = {}
    for index, head in (progress(work) if progress else work):
        q = torch.cat([t[0] for t in recorder.tensors[index]])[:, head]
        k = torch.cat([t[1] for t in recorder.tensors[index]])[:, head]
        scale = eligible[index].scale
        heads.setdefault(index, []).append(plan_head(q, k, grid, prefix, density, block, alpha, scale,
                                                     sample_buckets, buckets))
    for index in sorted(eligible):
        calls.append(_call_plan(eligible[index], heads[index]))
    skipped = {i: c.refusal for i, c in recorder.calls.items() if not c.eligible}
    return ParoPlan(grid, prefix, block, density, alpha, buckets, calls, skipped, samples, source)


def _optional(arrays, *names: str) -> list:
    return [arrays[n] if n in arrays.files else None for n in names]


def _call_plan(call, head_plans: list[HeadPlan]) -> CallPlan:
    widest = max(int(p.kv_index.shape[-1]) for p in head_plans)
    index = np.full((head_plans[0].kv_index.shape[0], 1, len(head_plans), head_plans[0].kv_index.shape[1], widest),
                    -1, np.int32)
    for h, p in enumerate(head_plans):
        index[:, 0, h, :, :p.kv_index.shape[-1]] = p.kv_index.numpy()
    count = np.stack([p.kv_count.numpy() for p in head_plans], axis=1)[:, None]  # [T, 1, H, nb]
    perm = np.stack([p.perm_idx.numpy() for p in head_plans]).astype(np.int32)
    info = [{"head": h, "order": p.order_name, "density": round(p.density, 4), "recall": round(p.recall, 4),
             "costs": {name: {"c_sparse": round(cs, 4), "c_quant": round(cq, 4)} for name, (cs, cq) in p.costs.items()}}
            for h, p in enumerate(head_plans)]
    fhw = [from_block_mask(p.masks[0, 0][None, None]) for p in head_plans]  # order 0 = FHW, bucket 0
    fhw_width = max(int(i.shape[-1]) for _, i in fhw)
    fhw_index = np.full((len(head_plans), fhw[0][1].shape[2], fhw_width), -1, np.int32)
    for h, (_, i) in enumerate(fhw):
        fhw_index[h, :, :i.shape[-1]] = i[0, 0].numpy()
    fhw_count = np.stack([c[0, 0].numpy() for c, _ in fhw]).astype(np.int32)
    return CallPlan(call.index, call.heads, call.n, call.head_dim, call.scale, perm, count.astype(np.int32), index,
                    info, fhw_count, fhw_index)
