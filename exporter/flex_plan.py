"""FlexAttention calls planned as our ops (the call converter's analysis, on concrete tensors).

A call's mask_mod and score_mod are evaluated on its index grid, at its heads and at two batch indices, in chunks
of query-block rows: no (query, key) grid of the whole call is ever held, so the length a call can be planned at
is bounded by time, not memory. A 1-D neighborhood pattern becomes ``neighborhood_attention``; any other mask
becomes ``block_sparse_attention`` over the blocks it touches. What the op's ``block_bias`` needs is stored
compactly and assembled in the graph:

- the masked elements of partial blocks: one boolean tile per partial block, and per layout slot the tile it
  takes (0: a full block);
- an additive score_mod that depends only on (key - query) per head (ALiBi, relative-position tables): a
  per-head table of Sq + Skv - 1 values, gathered by each element's offset;
- any other additive score_mod: dense per listed block, refused above a size limit with a clear message.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.nn.attention.flex_attention import _vmap_for_bhqkv

from attn_export.errors import AttnExportError
from attn_export.models import block_sparse_attention, neighborhood_attention
from attn_export.models.block_layout import element_bias, from_block_mask
from attn_export.models.neighborhood import NAParams, neighborhood_index


class ConversionRefused(AttnExportError):
    """A NATTEN / FlexAttention call that cannot be converted (one line naming the call and why)."""


# Elements of the (batch, head, query, key) grid evaluated at once while planning; the peak is about 70 bytes
# per element (index grids, two score samples, masks), so a chunk of query-block rows stays under ~600 MB.
_CHUNK_ELEMENTS = 8 << 20
# All the grid one call's plan may evaluate (two batch probes x heads x Sq x Skv): about a minute of CPU time.
_PLAN_ELEMENTS = 1 << 31
# Bytes of a call's constants that stay dense (a score bias that is not a function of key - query; the tiles
# of partial blocks): initializers of the ONNX file, which holds at most 2 GB.
_BIAS_BYTES = 256 << 20
# Up to this many (query, key) pairs the mask of head 0 is also kept whole, to recognise 1-D neighborhoods.
_WINDOW_ELEMENTS = 1 << 26
# An additive score_mod without a BlockMask becomes block-sparse attention over every block of this size
# (flex_attention's own default block), or over the whole sequence where it is shorter.
_DENSE_BLOCK = 128
# The batch indices the mask_mod and score_mod are evaluated at: a dependence on b is then seen and refused.
_PROBE_BATCH = 2


def plan_flex(query, key, value, score_mod, block_mask, scale, where: str) -> dict:
    """How to run one flex_attention call: {"target": ..., "op": "sdpa" | "na" | "block_sparse", ...}.

    The mask and score_mod are evaluated at the call's heads (as flex_attention does, whatever the BlockMask's
    own head dim) and at two batch indices. Anything that cannot convert is refused naming the call."""
    sq, skv, heads = int(query.shape[-2]), int(key.shape[-2]), int(query.shape[1])
    if block_mask is not None and tuple(block_mask.seq_lengths) != (sq, skv):
        raise ConversionRefused(f"flex_attention at {where}: its BlockMask covers {tuple(block_mask.seq_lengths)}, "
                                f"the call attends {sq} x {skv}; build the mask for these lengths")
    if block_mask is not None and int(block_mask.shape[0]) > 1:
        raise ConversionRefused(f"flex_attention at {where}: its BlockMask has a batch dim of {block_mask.shape[0]} "
                                "(a mask per sample), which a layout exported as a constant cannot follow: build it "
                                "with B=None")
    if _PROBE_BATCH * heads * sq * skv > _PLAN_ELEMENTS:
        raise ConversionRefused(f"flex_attention at {where}: planning its conversion evaluates the mask and score_mod "
                                f"over {_PROBE_BATCH} x {heads} heads x {sq} x {skv} (query, key) pairs, more than "
                                f"{_PLAN_ELEMENTS >> 20} M (minutes of CPU time): export at a shorter sequence length")
    if block_mask is None and score_mod is None:
        return {"op": "sdpa", "target": "scaled_dot_product_attention (no mask)"}
    blocks = (tuple(int(x) for x in block_mask.BLOCK_SIZE) if block_mask is not None
              else (min(_DENSE_BLOCK, sq), min(_DENSE_BLOCK, skv)))
    scan = GridScan(heads, sq, skv, *blocks, where)
    scan.run(block_mask.mask_mod if block_mask is not None else None, score_mod)
    if score_mod is None and scan.whole_mask is not None and scan.mask_heads_agree:
        window = neighborhood_window(scan.whole_mask[None, None])
        if window is not None:
            return {"op": "na", "target": "attn_export::neighborhood_attention " + _window_text(window), **window}
    plan = scan.plan()
    if score_mod is not None:
        plan["target"] += f", score_mod {_name(score_mod)} as an additive bias"
    return plan


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _name(function) -> str:
    return getattr(function, "__name__", type(function).__name__)


def _same_for_every_batch(x: torch.Tensor, what: str, where: str) -> torch.Tensor:
    """x [_PROBE_BATCH | 1, H, ...] -> [H, ...]: refused when it depends on the batch index."""
    if not bool((x == x[:1]).all()):
        raise ConversionRefused(f"flex_attention at {where}: its {what} depends on the batch index b, which a layout "
                                "exported as a constant cannot follow (the batch is dynamic): make it independent of b")
    return x[0]


def _vmapped(function, prefix: tuple):
    return _vmap_for_bhqkv(function, prefix=prefix)


def _on_grid(evaluate, heads: int):
    """evaluate(b, h) at the probe batches, or at b = 0 alone where a per-sample table has one row."""
    # Deferred: importing torch._dynamo costs about a second, and only a flex_attention conversion needs it.
    from torch._dynamo._trace_wrapped_higher_order_op import TransformGetItemToIndex

    with TransformGetItemToIndex():  # table[q] inside a mod, as flex_attention itself evaluates it
        try:
            return evaluate(torch.arange(_PROBE_BATCH), torch.arange(heads))
        except (IndexError, RuntimeError):
            return evaluate(torch.arange(1), torch.arange(heads))


def evaluate_mask(mask_mod, heads: int, q_idx: torch.Tensor, kv_idx: torch.Tensor, where: str) -> torch.Tensor:
    """The mask ``[H, len(q_idx), len(kv_idx)]`` (one for every batch index, else refused)."""
    vmapped = _vmapped(mask_mod, ())
    mask = _on_grid(lambda b, h: vmapped(b, h, q_idx, kv_idx), heads)
    return _same_for_every_batch(mask, f"mask_mod {_name(mask_mod)}", where)


def evaluate_bias(score_mod, heads: int, q_idx: torch.Tensor, kv_idx: torch.Tensor, where: str) -> torch.Tensor:
    """The additive bias ``[H, len(q_idx), len(kv_idx)]`` of a score_mod (score_mod(s) - s the same for any s),
    evaluated as flex_attention evaluates it; refused when it is not additive or depends on the batch index."""
    name, vmapped = _name(score_mod), _vmapped(score_mod, (0,))

    def evaluate(b, h):
        bias = vmapped(torch.zeros(len(b), len(h), len(q_idx), len(kv_idx)), b, h, q_idx, kv_idx)  # exact for s + c
        # additivity at batch 0 (the batch probe above sees a dependence on b): two score ranges, shifted alike
        samples = torch.randn(2, 1, len(h), len(q_idx), len(kv_idx), generator=torch.Generator().manual_seed(0))
        samples[1] *= 8.0
        return bias, samples, [vmapped(s, b[:1], h, q_idx, kv_idx) - s for s in samples]

    try:
        bias, samples, deltas = _on_grid(evaluate, heads)
    except Exception as exc:  # noqa: BLE001 - any failure of user code: refused with its type and message
        raise ConversionRefused(f"flex_attention at {where}: its score_mod {name} could not be evaluated on the index "
                                f"grid ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                                "remove it for export") from None
    if not _additive(bias[:1], samples, deltas):
        raise ConversionRefused(f"flex_attention at {where}: its score_mod {name} is not additive (how it changes a "
                                "score depends on the score, e.g. soft-capping), which the exported ops cannot "
                                "express: remove it for export, or write it as a bias added to the score")
    return _same_for_every_batch(bias, f"score_mod {name}", where)


def _additive(bias, samples, deltas) -> bool:
    """Each sample's change equals the bias, element by element (infinities exactly). Elementwise selects, never
    boolean indexing: this runs over every (query, key) pair of the call."""
    if bool(bias.isnan().any()):
        return False
    finite = bias.isfinite()
    for delta, sample in zip(deltas, samples):
        limit = bias.abs().mul_(1e-5).add_(1e-5 + 1e-6).add_(sample.abs().mul_(1e-6))
        if not _matches(delta, bias, finite, limit):
            return False
    return True


def _matches(actual: torch.Tensor, expected: torch.Tensor, finite: torch.Tensor, limit: torch.Tensor) -> bool:
    """|actual - expected| <= limit where ``expected`` is finite; the very same infinities elsewhere."""
    if not torch.equal(actual.isfinite(), finite):
        return False
    if not bool(finite.all()) and not torch.equal(torch.where(finite, 0.0, actual), torch.where(finite, 0.0, expected)):
        return False
    error = torch.where(finite, (actual - expected).abs_(), 0.0)
    return bool((error <= limit).all())


def score_bias(score_mod, lead: tuple[int, int], sq: int, skv: int, where: str) -> torch.Tensor:
    """The whole additive bias ``[1, H|1, Sq, Skv]`` of a score_mod at ``lead[1]`` heads (narrowed to one head
    where every head agrees). For short sequences and tests: planning itself never holds it whole."""
    bias = evaluate_bias(score_mod, lead[1], torch.arange(sq), torch.arange(skv), where)
    return (bias[:1] if bool((bias == bias[:1]).all()) else bias)[None].contiguous()


def _relative_table(score_mod, heads: int, sq: int, skv: int, where: str) -> torch.Tensor:
    """The per-head table ``[H, Sq + Skv - 1]`` of the bias at each offset d = key - query (index d + Sq - 1),
    read from query 0's row (d >= 0) and key 0's column (d < 0); the scan then checks every element against it."""
    row = evaluate_bias(score_mod, heads, torch.arange(1), torch.arange(skv), where)[:, 0]  # d = 0 .. skv-1
    column = evaluate_bias(score_mod, heads, torch.arange(sq), torch.arange(1), where)[:, :, 0]  # d = 0 .. -(sq-1)
    return torch.cat([column.flip(-1)[:, :-1], row], dim=-1)


def _relative_offsets(q_idx: torch.Tensor, kv_idx: torch.Tensor, sq: int) -> torch.Tensor:
    return kv_idx[None, :] - q_idx[:, None] + (sq - 1)


def _close(actual: torch.Tensor, expected: torch.Tensor) -> bool:
    """Equal up to float rounding (the table is read at other indices than the element it stands for)."""
    return _matches(actual, expected, expected.isfinite(), expected.abs().mul_(1e-6).add_(1e-6))


@dataclass
class GridScan:
    """One pass over a call's (query, key) grid in chunks of query-block rows: which blocks the mask touches
    and fills, the tiles of its partial blocks, and the score bias as a (key - query) table where it is one."""

    heads: int
    sq: int
    skv: int
    block_q: int
    block_kv: int
    where: str
    mask_heads_agree: bool = True
    bias_heads_agree: bool = True
    whole_mask: torch.Tensor | None = None  # head 0's mask [Sq, Skv], kept where small (neighborhood check)
    table: torch.Tensor | None = None  # [H, Sq + Skv - 1] while every element so far matched it
    dense_bias: torch.Tensor | None = None  # [H, Sq, Skv] kept while it fits _BIAS_BYTES
    has_bias: bool = False
    bias_name: str = ""
    tiles: list = field(default_factory=list)  # (head, row, column, tile [block_q, block_kv] bool) of partial blocks

    def __post_init__(self):
        self.n_qb, self.n_kvb = -(-self.sq // self.block_q), -(-self.skv // self.block_kv)
        self.touched = torch.zeros(self.heads, self.n_qb, self.n_kvb, dtype=torch.bool)
        self.full = torch.zeros_like(self.touched)
        if self.sq * self.skv <= _WINDOW_ELEMENTS:
            self.whole_mask = torch.zeros(self.sq, self.skv, dtype=torch.bool)

    def run(self, mask_mod, score_mod) -> None:
        if score_mod is not None:
            self.has_bias, self.bias_name = True, _name(score_mod)
            self.table = _relative_table(score_mod, self.heads, self.sq, self.skv, self.where)
            if self.heads * self.sq * self.skv * 4 <= _BIAS_BYTES:
                self.dense_bias = torch.zeros(self.heads, self.sq, self.skv)
        rows = max(1, _CHUNK_ELEMENTS // (_PROBE_BATCH * self.heads * self.block_q * self.skv))
        kv_idx = torch.arange(self.skv)
        for r0 in range(0, self.n_qb, rows):
            r1 = min(r0 + rows, self.n_qb)
            q_idx = torch.arange(r0 * self.block_q, min(r1 * self.block_q, self.sq))
            mask = None if mask_mod is None else evaluate_mask(mask_mod, self.heads, q_idx, kv_idx, self.where)
            self._blocks(mask, r0, r1, q_idx)
            if score_mod is not None:
                self._bias(evaluate_bias(score_mod, self.heads, q_idx, kv_idx, self.where), q_idx)

    def _blocks(self, mask: torch.Tensor | None, r0: int, r1: int, q_idx: torch.Tensor) -> None:
        """Touched and full blocks of rows r0..r1, and the tiles of their partial blocks."""
        nq = len(q_idx)
        if mask is None:
            mask = torch.ones(1, nq, self.skv, dtype=torch.bool)
        else:
            self.mask_heads_agree &= bool((mask == mask[:1]).all())
        if self.whole_mask is not None:
            self.whole_mask[q_idx] = mask[0]
        shape = (mask.shape[0], (r1 - r0) * self.block_q, self.n_kvb * self.block_kv)
        padded, real = torch.zeros(shape, dtype=torch.bool), torch.zeros(shape[1:], dtype=torch.bool)
        padded[:, :nq, :self.skv], real[:nq, :self.skv] = mask, True
        tiles = padded.unflatten(-1, (self.n_kvb, self.block_kv)).unflatten(1, (r1 - r0, self.block_q))
        real = real.unflatten(-1, (self.n_kvb, self.block_kv)).unflatten(0, (r1 - r0, self.block_q))
        touched = tiles.any(dim=(2, 4))
        full = (tiles | ~real).all(dim=(2, 4))
        self.touched[:, r0:r1], self.full[:, r0:r1] = touched, full
        for h, r, c in (touched & ~full).nonzero().tolist():
            self.tiles.append((h, r0 + r, c, tiles[h, r, :, c, :].clone()))
        if len(self.tiles) * self.block_q * self.block_kv > _BIAS_BYTES:
            raise ConversionRefused(f"flex_attention at {self.where}: its mask has more than {len(self.tiles)} partial "
                                    f"blocks, whose exact form exceeds {_BIAS_BYTES >> 20} MB: align the mask to "
                                    f"BLOCK_SIZE {self.block_q}x{self.block_kv} or export at a shorter sequence length")

    def _bias(self, bias: torch.Tensor, q_idx: torch.Tensor) -> None:
        self.bias_heads_agree &= bool((bias == bias[:1]).all())
        if self.dense_bias is not None:
            self.dense_bias[:, q_idx] = bias
        if self.table is not None and not _close(bias, self.table[:, _relative_offsets(q_idx, torch.arange(self.skv),
                                                                                      self.sq)]):
            self.table = None  # not a function of key - query: dense, where it fits
        if self.table is None and self.dense_bias is None:
            nbytes = self.heads * self.sq * self.skv * 4
            raise ConversionRefused(f"flex_attention at {self.where}: its score_mod {self.bias_name} is not a function "
                                    f"of key - query alone, so its bias would be stored dense ({nbytes / 2**20:.0f} MB "
                                    f"at {self.heads} heads x {self.sq} x {self.skv}, limit {_BIAS_BYTES >> 20} MB): "
                                    "export at a shorter sequence length, or make the bias depend on kv - q and h only")

    def plan(self) -> dict:
        """The block-sparse plan: the layout, and the compact parts block_bias is assembled from."""
        mask_heads = 1 if self.mask_heads_agree else self.heads
        touched = self.touched[:mask_heads][None]
        count, index = from_block_mask(touched)
        plan = {"op": "block_sparse", "kv_count": count, "kv_index": index, "block_q": self.block_q,
                "block_kv": self.block_kv, "seq_q": self.sq, "block_bias": None, "bias_table": None,
                "tiles": None, "tile_of_slot": None,
                "target": f"attn_export::block_sparse_attention (blocks {self.block_q}x{self.block_kv}, "
                          f"{int(touched.sum())} of {touched.numel()} listed"}
        partial = [t for t in self.tiles if t[0] < mask_heads]
        if partial:
            plan["tiles"], plan["tile_of_slot"] = _tile_layout(partial, mask_heads, self.n_qb, self.n_kvb, index,
                                                               self.block_q, self.block_kv)
        if self.has_bias:
            bias_heads = 1 if self.bias_heads_agree else self.heads
            if self.table is not None:
                plan["bias_table"] = self.table[:bias_heads][None].contiguous()
            else:
                dense = self.dense_bias[:bias_heads][None]
                nbytes = max(mask_heads, bias_heads) * index.shape[2:].numel() * self.block_q * self.block_kv * 4
                if nbytes > _BIAS_BYTES:
                    raise ConversionRefused(f"flex_attention at {self.where}: its score_mod {self.bias_name} needs a "
                                            f"dense block_bias of {nbytes / 2**20:.0f} MB (limit {_BIAS_BYTES >> 20} "
                                            "MB): export at a shorter sequence length, or make the bias depend on "
                                            "kv - q and h only")
                plan["block_bias"] = element_bias(dense, count, index, self.block_q, self.block_kv)
        plan["target"] += _bias_text(len(partial), plan)
        return plan


def _bias_text(partial: int, plan: dict) -> str:
    text = f", {_count(partial, 'partial block')} exact through block_bias" if partial else ""
    if plan["bias_table"] is not None:
        text += (", block_bias" if not partial else "") + (
            f" with a per-head table of {plan['bias_table'].shape[-1]} (key - query) values")
    elif plan["block_bias"] is not None:
        text += ", block_bias" if not partial else ""
    return text + ")"


def _tile_layout(partial: list, heads: int, n_qb: int, n_kvb: int, index: torch.Tensor, block_q: int,
                 block_kv: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The partial blocks' tiles ``[1 + P, block_q, block_kv]`` bool (tile 0: a full block) and, per layout slot
    ``[1, H|1, nQB, max_blocks]`` int32, the tile it takes."""
    number = torch.zeros(heads, n_qb, n_kvb, dtype=torch.int32)
    for k, (h, r, c, _) in enumerate(partial):
        number[h, r, c] = k + 1
    slots = index[0].long()
    tile_of_slot = torch.where(slots >= 0, number.gather(-1, slots.clamp(min=0)), 0).to(torch.int32)[None]
    tiles = torch.stack([torch.ones(block_q, block_kv, dtype=torch.bool), *(t for *_, t in partial)])
    return tiles, tile_of_slot.contiguous()


def block_bias(plan: dict, dtype: torch.dtype) -> torch.Tensor | None:
    """The block_bias input ``[1, H|1, nQB, max_blocks, block_q, block_kv]`` assembled from a plan's compact
    parts with standard ops (in the exported graph: Gather, Where, Add; no dense N x N constant)."""
    parts = []
    if plan.get("block_bias") is not None:
        parts.append(plan["block_bias"])
    if plan.get("bias_table") is not None:
        parts.append(relative_bias(plan["bias_table"], plan["kv_index"], plan["block_q"], plan["block_kv"],
                                   plan["seq_q"]))
    if plan.get("tiles") is not None:
        attend = plan["tiles"][plan["tile_of_slot"].long()]
        parts.append(torch.zeros(attend.shape).masked_fill(~attend, float("-inf")))
    if not parts:
        return None
    bias = parts[0]
    for part in parts[1:]:
        bias = bias + part
    return bias if bias.dtype == dtype else bias.to(dtype)


def relative_bias(table: torch.Tensor, kv_index: torch.Tensor, block_q: int, block_kv: int, sq: int) -> torch.Tensor:
    """``table [1, H|1, Sq + Skv - 1]`` read at each listed element's offset key - query + Sq - 1:
    ``[1, H|1, nQB, max_blocks, block_q, block_kv]``. Offsets past the sequence (padding, unlisted slots) are
    clamped: the op masks those elements itself."""
    n_qb = kv_index.shape[2]
    query = torch.arange(n_qb)[:, None] * block_q + torch.arange(block_q)  # [nQB, block_q]
    key = kv_index.clamp(min=0).long()[..., None] * block_kv + torch.arange(block_kv)  # [1, Hi, nQB, maxb, bkv]
    offset = (key[..., None, :] - query[:, None, :, None] + (sq - 1)).clamp(0, table.shape[-1] - 1)
    if offset.shape[1] == 1:  # one layout for every head: one offset grid, gathered per head
        return table[0][:, offset[0, 0]][None]
    heads = offset.shape[1]
    values = table[0].expand(heads, -1)
    return values.gather(1, offset[0].flatten(1)).view(offset[0].shape)[None]


def neighborhood_window(mask: torch.Tensor) -> dict | None:
    """The 1-D neighborhood-attention parameters (kernel, stride, dilation, causal) whose window rule gives
    exactly ``mask [B|1, H|1, S, S]`` (the same for every batch and head), or None."""
    if mask.shape[-1] != mask.shape[-2] or not bool((mask == mask[:1, :1]).all()):
        return None
    dense = mask[0, 0]
    n = dense.shape[0]
    causal = not bool(dense.triu(1).any())
    row = dense[n - 1] if causal else dense[0]
    keys = row.nonzero().flatten()
    if keys.numel() < 2:
        return None
    kernel, dilation = keys.numel(), int(keys[1] - keys[0])
    for stride in range(1, kernel + 1):
        params = NAParams((kernel,), (stride,), (dilation,), (causal,))
        if kernel * dilation > n:
            return None
        index, _, valid = neighborhood_index((n,), params)
        rebuilt = torch.zeros(n, n, dtype=torch.bool)
        rebuilt.scatter_(1, index, valid if valid is not None else torch.ones_like(index, dtype=torch.bool))
        if torch.equal(rebuilt, dense):
            return {"kernel": kernel, "stride": stride, "dilation": dilation, "causal": causal}
    return None


def _window_text(w: dict) -> str:
    return (f"(kernel {w['kernel']}, stride {w['stride']}, dilation {w['dilation']}"
            f"{', causal' if w['causal'] else ''})")


def run_plan(plan: dict, query, key, value, scale):
    """Run one planned FlexAttention call with our ops ([B, H, S, D] in and out, as flex_attention)."""
    if plan["op"] == "sdpa":
        return torch.nn.functional.scaled_dot_product_attention(query, key, value, scale=scale)
    if plan["op"] == "na":
        out = neighborhood_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                                     plan["kernel"], plan["stride"], plan["dilation"], plan["causal"], scale)
        return out.transpose(1, 2)
    return block_sparse_attention(query, key, value, plan["kv_count"], plan["kv_index"], plan["block_q"],
                                  plan["block_kv"], scale, block_bias(plan, query.dtype))


__all__ = ["ConversionRefused", "GridScan", "block_bias", "evaluate_bias", "evaluate_mask", "neighborhood_window",
           "plan_flex", "relative_bias", "run_plan", "score_bias"]
