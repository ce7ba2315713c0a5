"""Generalized neighborhood attention (docs/ops/neighborhood_attention.md, Semantics): parameters, window math, CPU op.

Layout is NATTEN's: q, k, v and out are ``[B, *spatial, heads, head_dim]`` with 1 to 3 spatial axes.
The CPU implementation cuts the queries into tiles (per dilation group), gathers each tile's key box
once and runs the tile as one masked attention of GEMMs (SDPA over [tile, box]); where a cost model
says so (boxes far larger than the windows) it gathers each query's ``prod(kernel_size)`` keys
instead. Memory is O(N * box) and time linear in the token count N: no N x N score matrix exists.
"""

from __future__ import annotations

import functools
import itertools
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from attn_export.errors import AttnExportError
from attn_export.models.custom_op import register_attention_op
from attn_export.registry import NEIGHBORHOOD

_OP = "neighborhood_attention"
# Upper bound on one buffer of gathered rows (bytes) in a chunk of queries or tiles: keeps memory flat in N.
# Chunks are few on purpose: each costs several parallel regions, and a region waits for its slowest thread;
# on the project's VM shared with other jobs, a region cost about 8 ms (a parked thread's time slice).
_CHUNK_BYTES = 32 << 20
# Per-thread scratch buffers for the rows a chunk copies (query tiles, key boxes, listed blocks): a fresh large
# tensor page-faults on every call (about 2.4 us per 4 KB page on the project's VM, as much as the work
# itself), so calls that record no gradient reuse one buffer per role, at most _CHUNK_BYTES each.
_scratch = threading.local()


@dataclass(frozen=True)
class NAParams:
    """Per-axis window parameters, one entry per spatial axis."""

    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    is_causal: tuple[bool, ...]

    @property
    def rank(self) -> int:
        return len(self.kernel_size)

    @property
    def window_size(self) -> int:
        return math.prod(self.kernel_size)

    @property
    def any_causal(self) -> bool:
        return any(self.is_causal)

    @property
    def rpb_shape_tail(self) -> tuple[int, ...]:
        return tuple(2 * k - 1 for k in self.kernel_size)

    @classmethod
    def from_args(cls, rank, kernel_size, stride=1, dilation=1, is_causal=False) -> NAParams:
        if not 1 <= rank <= 3:
            raise AttnExportError(
                f"{_OP}: inputs have {rank} spatial axes; expected [B, *spatial, heads, head_dim] with 1, 2 or 3 "
                "spatial axes"
            )
        return cls(
            kernel_size=_per_axis("kernel_size", kernel_size, rank, int),
            stride=_per_axis("stride", stride, rank, int),
            dilation=_per_axis("dilation", dilation, rank, int),
            is_causal=_per_axis("is_causal", is_causal, rank, bool),
        )

    def validate(self, spatial_shape: Sequence[int]) -> None:
        """Raise AttnExportError naming the parameter, the axis and the limit for any invalid value."""
        for axis, (n, k, s, d) in enumerate(zip(spatial_shape, self.kernel_size, self.stride, self.dilation)):
            if k < 2:
                raise AttnExportError(f"{_OP}: kernel_size={k} on axis {axis} is below the minimum 2")
            if not 1 <= s <= k:
                raise AttnExportError(
                    f"{_OP}: stride={s} on axis {axis} must lie in [1, kernel_size={k}]"
                )
            if d < 1:
                raise AttnExportError(f"{_OP}: dilation={d} on axis {axis} is below the minimum 1")
            if k * d > n:
                raise AttnExportError(
                    f"{_OP}: kernel_size*dilation={k}*{d}={k * d} on axis {axis} exceeds the axis length {n}; "
                    "use a smaller kernel or dilation, or a larger input"
                )


def _per_axis(name: str, value, rank: int, kind: type) -> tuple:
    if isinstance(value, (bool, int)) and not (kind is int and isinstance(value, bool)):
        return (kind(value),) * rank
    try:
        values = tuple(value)
    except TypeError:
        raise AttnExportError(f"{_OP}: {name}={value!r} must be an {kind.__name__} or a sequence of one per "
                              "spatial axis") from None
    if len(values) != rank:
        raise AttnExportError(
            f"{_OP}: {name} has {len(values)} values but the input has {rank} spatial axes; give one value or one "
            "per axis"
        )
    for axis, item in enumerate(values):
        if isinstance(item, bool) != (kind is bool) or not isinstance(item, (int, bool)):
            raise AttnExportError(f"{_OP}: {name}={item!r} on axis {axis} must be an {kind.__name__}")
    return tuple(kind(v) for v in values)


# ---------------------------------------------------------------------------------------------
# Window math. One axis at a time, vectorised over queries; the ONNX function mirrors it op by op.


def _window(ip, n_g, k: int, s: int, causal: bool):
    """Half-open key range ``[start, end)`` (group coordinates) of queries ``ip`` in groups of length ``n_g``."""
    if causal:
        leader = torch.minimum((ip // s) * s + s - 1, n_g - 1)
        return (leader - k + 1).clamp_min(0), torch.minimum(ip + 1, n_g)
    left, right = k // 2, k // 2 + k % 2 - 1
    leader = torch.minimum((ip // s) * s + s // 2, n_g - 1)
    start = torch.minimum(leader, n_g - 1 - right).clamp_min(left) - left
    return start, start + k


def axis_window(n: int, k: int, s: int, d: int, causal: bool, device=None):
    """Key indices ``[n, k]``, relative-bias indices ``[n, k]`` and validity ``[n, k]`` for one axis.

    Slot t of query i holds key ``(start + t) * d + g``; causal windows can be shorter than k, and
    their unused slots are marked invalid (their index is clamped so that a gather stays in range).
    """
    i = torch.arange(n, device=device)
    g, ip = i % d, i // d
    n_g = (n - g + d - 1) // d
    start, end = _window(ip, n_g, k, s, causal)
    jp = start[:, None] + torch.arange(k, device=device)
    valid = jp < end[:, None]
    key = torch.minimum(jp, n_g[:, None] - 1) * d + g[:, None]
    rel = jp - ip[:, None] + (k - 1)
    return key, rel, valid


def neighborhood_index(spatial_shape: Sequence[int], params: NAParams, device=None):
    """Flat key indices ``[N, K]``, flat RPB indices ``[N, K]`` and validity ``[N, K]`` (None if all valid).

    ``N = prod(spatial_shape)`` and ``K = prod(kernel_size)``; flat indices are row-major. Cached:
    every layer of a model with the same shape and window reuses one set (treat them as read-only).
    """
    return _neighborhood_index(tuple(int(n) for n in spatial_shape), params, str(torch.device(device or "cpu")))


@functools.lru_cache(maxsize=16)  # a hierarchical model needs one entry per stage resolution and window
@torch.inference_mode(False)  # cached indices must also serve calls that record gradients
def _neighborhood_index(spatial_shape: tuple[int, ...], params: NAParams, device: str):
    rank = params.rank
    key = rel = valid = None
    for axis in range(rank):
        n, k = spatial_shape[axis], params.kernel_size[axis]
        ax_key, ax_rel, ax_valid = axis_window(
            n, k, params.stride[axis], params.dilation[axis], params.is_causal[axis], device
        )
        # Place n on position `axis` and k on position `rank + axis` of a 2*rank broadcast grid.
        shape = [1] * (2 * rank)
        shape[axis], shape[rank + axis] = n, k
        ax_key, ax_rel, ax_valid = (x.reshape(shape) for x in (ax_key, ax_rel, ax_valid))
        span = 2 * k - 1
        key = ax_key if key is None else key * n + ax_key
        rel = ax_rel if rel is None else rel * span + ax_rel
        valid = ax_valid if valid is None else valid & ax_valid
    n_tokens, window = math.prod(spatial_shape), params.window_size
    full = [*spatial_shape, *params.kernel_size]
    key = key.expand(full).reshape(n_tokens, window)
    rel = rel.expand(full).reshape(n_tokens, window)
    valid = valid.expand(full).reshape(n_tokens, window)
    return key, rel, (None if bool(valid.all()) else valid)


# ---------------------------------------------------------------------------------------------
# Query tiles. Per axis and dilation group, `tile` consecutive queries form a tile; the union of
# their windows is one contiguous key range (the box). In N-D a tile is the product of one tile per
# axis and its box the product of the boxes, so a tile's scores are one GEMM [tile, box] and the
# window rule becomes a mask on the box. Windows never change: the mask is the rule itself.


@dataclass(frozen=True)
class AxisTiles:
    """One axis cut into ``units = d * ceil(ceil(n / d) / tile)`` tiles of ``tile`` queries (per dilation group)."""

    query: torch.Tensor  # [U, T] token of each query slot; slots past a group's end repeat its last query
    key: torch.Tensor  # [U, W] token of each box slot, clamped into the group
    inside: torch.Tensor  # [U, T, W] the box slot lies in the query slot's window
    rel: torch.Tensor  # [U, T, W] rpb index j' - i' + k - 1 (meaningful where inside)
    unit: torch.Tensor  # [n] tile of each token
    slot: torch.Tensor  # [n] query slot of each token in its tile


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _axis_tile_windows(n: int, k: int, s: int, d: int, causal: bool, tile: int, device=None):
    """Group index g [U, 1], group length n_g [U, 1], query slots ip [U, T] and their windows [U, T]."""
    per_group = _ceil_div(_ceil_div(n, d), tile)
    unit = torch.arange(d * per_group, device=device)[:, None]
    g = unit // per_group
    n_g = (n - g + d - 1) // d
    # Slots past the end of a shorter group repeat its last query: every row keeps a non-empty window
    # (no NaN, not even in gradients) and its result is never read.
    ip = torch.minimum((unit % per_group) * tile + torch.arange(tile, device=device), n_g - 1)
    start, end = _window(ip, n_g, k, s, causal)
    return g, n_g, ip, start, end


def axis_box(n: int, k: int, s: int, d: int, causal: bool, tile: int) -> tuple[int, int]:
    """(number of tiles, box width) of one axis cut into tiles of ``tile`` queries."""
    _, _, ip, start, end = _axis_tile_windows(n, k, s, d, causal, tile)
    return ip.shape[0], int((end.amax(1) - start.amin(1)).max())


def axis_tiles(n: int, k: int, s: int, d: int, causal: bool, tile: int, device=None) -> AxisTiles:
    """Tiles of one axis: their query and box tokens, the window rule on each box, each token's tile and slot."""
    g, n_g, ip, start, end = _axis_tile_windows(n, k, s, d, causal, tile, device)
    low = start.amin(1, keepdim=True)
    jp = low + torch.arange(int((end.amax(1, keepdim=True) - low).max()), device=device)  # [U, W]
    box = jp[:, None, :]
    i = torch.arange(n, device=device) // d
    per_group = ip.shape[0] // d
    return AxisTiles(
        query=ip * d + g,
        key=torch.minimum(jp, n_g - 1) * d + g,
        inside=(box >= start[..., None]) & (box < end[..., None]),
        rel=box - ip[..., None] + (k - 1),
        unit=(torch.arange(n, device=device) % d) * per_group + i // tile,
        slot=i % tile,
    )


@dataclass(frozen=True)
class TilePlan:
    """Flat (row-major) indices of every tile of an N-D input, and the window rule as an additive mask."""

    query: torch.Tensor  # [U, T] token of each query slot
    key: torch.Tensor  # [U, W] token of each box slot
    bias: torch.Tensor | None  # [U, 1, T, W] float32: 0 inside the window, -inf outside; None if all inside
    rel: torch.Tensor | None  # [U, T, W] flat rpb index, clamped in range (only built for rpb)
    row: torch.Tensor  # [N] row of each token in the [U * T] layout of the tiles' outputs


def _on_grid(x: torch.Tensor, axis: int, rank: int) -> torch.Tensor:
    """Dim j of per-axis ``x`` moved to dim ``j * rank + axis`` of a broadcast grid of ``x.dim() * rank`` dims."""
    shape = [1] * (x.dim() * rank)
    for j, size in enumerate(x.shape):
        shape[j * rank + axis] = size
    return x.reshape(shape)


def _fold(parts, combine):
    out = parts[0]
    for axis, part in enumerate(parts[1:], start=1):
        out = combine(out, part, axis)
    return out


@functools.lru_cache(maxsize=16)  # one entry per stage resolution and window, as neighborhood_index
@torch.inference_mode(False)
def tile_plan(spatial: tuple[int, ...], params: NAParams, tile: tuple[int, ...], with_rel: bool,
              device: str = "cpu") -> TilePlan:
    rank = params.rank
    axes = [axis_tiles(spatial[a], params.kernel_size[a], params.stride[a], params.dilation[a], params.is_causal[a],
                       tile[a], device) for a in range(rank)]

    def grid(field: str):
        return [_on_grid(getattr(t, field), a, rank) for a, t in enumerate(axes)]

    units, rows = math.prod(t.query.shape[0] for t in axes), math.prod(t.query.shape[1] for t in axes)
    query = _fold(grid("query"), lambda acc, x, a: acc * spatial[a] + x).reshape(units, rows)
    key = _fold(grid("key"), lambda acc, x, a: acc * spatial[a] + x).reshape(units, -1)
    inside = _fold(grid("inside"), lambda acc, x, a: acc & x).reshape(units, 1, rows, -1)
    bias = None if bool(inside.all()) else torch.zeros(inside.shape, device=device).masked_fill_(~inside, float("-inf"))
    rel = None
    if with_rel:
        spans = [2 * k - 1 for k in params.kernel_size]
        clamped = [x.clamp(0, spans[a] - 1) for a, x in enumerate(grid("rel"))]
        rel = _fold(clamped, lambda acc, x, a: acc * spans[a] + x).reshape(units, rows, -1)
    unit = _fold(grid("unit"), lambda acc, x, a: acc * axes[a].query.shape[0] + x)
    slot = _fold(grid("slot"), lambda acc, x, a: acc * axes[a].query.shape[1] + x)
    return TilePlan(query, key, bias, rel, (unit * rows + slot).reshape(-1))


# Cost model of one call, in ns per batch element and head, D = head_dim; fitted (about 25% rms error)
# on the project's 2-core VM, one thread, 1-D inputs of 4096 tokens, D in {8, 32, 64}, k in {3, ..., 129}.
# A tile costs a fixed overhead, its W box rows (copying K and V rows) and its T x W scores (two GEMMs
# and the softmax); the gather path costs each (query, window key) pair (a copy and a matrix-vector product).
_NS_PER_TILE = 900.0
_NS_PER_BOX_ROW_DIM = 0.8
_NS_PER_SCORE, _NS_PER_SCORE_DIM = 1.7, 0.04
_NS_PER_GATHERED_KEY, _NS_PER_GATHERED_KEY_DIM = 19.0, 2.5
_TILE_SIZES = (1, 2, 4, 8, 16, 32, 64, 128)
_MAX_TILE_QUERIES = 256


@functools.lru_cache(maxsize=64)
def choose_tile(spatial: tuple[int, ...], params: NAParams, dim: int) -> tuple[int, ...] | None:
    """The query tile shape (queries per axis and dilation group) of least modelled cost, or None when
    gathering each query's window costs less than every tiling."""
    per_axis = []
    for n, k, s, d, c in zip(spatial, params.kernel_size, params.stride, params.dilation, params.is_causal):
        sizes = sorted({min(t, _ceil_div(n, d)) for t in _TILE_SIZES})
        per_axis.append([(t, *axis_box(n, k, s, d, c, t)) for t in sizes])
    best = None
    best_cost = math.prod(spatial) * params.window_size * (_NS_PER_GATHERED_KEY + _NS_PER_GATHERED_KEY_DIM * dim)
    for combo in itertools.product(*per_axis):
        rows = math.prod(t for t, _, _ in combo)
        if rows > _MAX_TILE_QUERIES:
            continue
        units, width = math.prod(u for _, u, _ in combo), math.prod(w for _, _, w in combo)
        score = _NS_PER_SCORE + _NS_PER_SCORE_DIM * dim
        cost = units * (_NS_PER_TILE + width * (_NS_PER_BOX_ROW_DIM * dim + score * rows))
        if cost < best_cost:
            best, best_cost = tuple(t for t, _, _ in combo), cost
    return best


# ---------------------------------------------------------------------------------------------
# CPU implementation (differentiable torch ops, chunked so that memory stays flat in N).


def _forward(q, k, v, params: NAParams, scale: float, rpb: torch.Tensor | None) -> torch.Tensor:
    tile = choose_tile(tuple(q.shape[1:-2]), params, q.shape[-1])
    if tile is None:
        return _forward_gather(q, k, v, params, scale, rpb)
    return _forward_tiled(q, k, v, params, scale, rpb, tile)


def select_rows(x: torch.Tensor, dim: int, index: torch.Tensor, role: str) -> torch.Tensor:
    """``x.index_select(dim, index)``, written into this thread's scratch buffer for ``role`` when no gradient
    is recorded (the result is valid until the thread's next call with the same role)."""
    if x.requires_grad or x.device.type != "cpu":
        return x.index_select(dim, index)
    shape = (*x.shape[:dim], index.numel(), *x.shape[dim + 1:])
    size = math.prod(shape)
    buffers = _scratch.__dict__.setdefault("buffers", {})
    buffer = buffers.get(role)
    if buffer is None or buffer.numel() < size or buffer.dtype != x.dtype:
        with torch.inference_mode(False):  # a normal tensor serves calls in and out of inference mode
            buffer = buffers[role] = torch.empty(size, dtype=x.dtype)
    return torch.index_select(x, dim, index, out=buffer[:size].view(shape))


def _compute_dtype(q: torch.Tensor) -> torch.dtype:
    return torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype


def _forward_tiled(q, k, v, params: NAParams, scale: float, rpb: torch.Tensor | None, tile) -> torch.Tensor:
    batch, *spatial, heads, dim = q.shape
    n_tokens = math.prod(spatial)
    plan = tile_plan(tuple(spatial), params, tile, rpb is not None, str(q.device))
    units, width = plan.key.shape
    compute = _compute_dtype(q)
    qf, kf, vf = (x.reshape(batch, n_tokens, heads, dim).to(compute) for x in (q, k, v))
    bias = None if rpb is None else rpb.reshape(heads, -1).to(compute)
    chunk = max(1, _CHUNK_BYTES // (batch * width * heads * dim * qf.element_size()))
    outputs = [_attend_tiles(qf, kf, vf, plan, bias, slice(lo, min(lo + chunk, units)), scale)
               for lo in range(0, units, chunk)]
    out = torch.cat(outputs, dim=1) if len(outputs) > 1 else outputs[0]
    return out.index_select(1, plan.row).reshape(q.shape).to(q.dtype)


def _attend_tiles(q, k, v, plan: TilePlan, rpb: torch.Tensor | None, tiles: slice, scale: float) -> torch.Tensor:
    """Outputs [B, tiles * T, H, D] of a run of tiles: SDPA over [T, W] per tile, masked by the window rule."""
    batch, _, heads, dim = q.shape

    def pick(x, index, role):  # [B, N, H, D] -> [B * tiles, H, rows, D]: whole token rows copied
        rows = index[tiles]
        picked = select_rows(x, 1, rows.reshape(-1), role)
        return picked.view(batch * rows.shape[0], -1, heads, dim).transpose(1, 2)

    mask = _tile_mask(plan, rpb, tiles, batch, q.dtype)
    out = torch.nn.functional.scaled_dot_product_attention(
        pick(q, plan.query, "q"), pick(k, plan.key, "k"), pick(v, plan.key, "v"), attn_mask=mask, scale=scale)
    return out.transpose(1, 2).reshape(batch, -1, heads, dim)


def _tile_mask(plan: TilePlan, rpb: torch.Tensor | None, tiles: slice, batch: int, dtype) -> torch.Tensor | None:
    """Additive mask [B * tiles, 1 | H, T, W] of a run of tiles: the window rule plus the gathered rpb."""
    mask = None if plan.bias is None else plan.bias[tiles].to(dtype)
    if rpb is not None:
        gathered = rpb[:, plan.rel[tiles]].transpose(0, 1)  # [tiles, H, T, W]
        mask = gathered if mask is None else gathered + mask
    if mask is not None and batch > 1:
        mask = mask.expand(batch, *mask.shape).flatten(0, 1)
    return mask


def _forward_gather(q, k, v, params: NAParams, scale: float, rpb: torch.Tensor | None) -> torch.Tensor:
    batch, *spatial, heads, dim = q.shape
    n_tokens = math.prod(spatial)
    key, rel, valid = neighborhood_index(spatial, params, q.device)
    compute = _compute_dtype(q)

    def heads_first(x):  # [B, *spatial, H, D] -> [B, H, N, D]
        return x.reshape(batch, n_tokens, heads, dim).transpose(1, 2).to(compute)

    qh, kh, vh = heads_first(q) * scale, heads_first(k), heads_first(v)
    bias = rpb.reshape(heads, -1).to(compute) if rpb is not None else None
    per_query = max(1, batch * heads * params.window_size * dim * 2 * qh.element_size())
    chunk = max(1, _CHUNK_BYTES // per_query)
    outputs = []
    for lo in range(0, n_tokens, chunk):
        hi = min(lo + chunk, n_tokens)
        idx = key[lo:hi]  # [n, K]
        logits = (kh[:, :, idx] @ qh[:, :, lo:hi, :, None]).squeeze(-1)  # [B, H, n, K]
        if bias is not None:
            logits = logits + bias[:, rel[lo:hi]]
        if valid is not None:
            logits = logits.masked_fill(~valid[lo:hi], float("-inf"))
        probs = logits.softmax(dim=-1)
        outputs.append((probs[..., None, :] @ vh[:, :, idx]).squeeze(-2))  # [B, H, n, D]
    out = torch.cat(outputs, dim=2) if len(outputs) > 1 else outputs[0]
    return out.transpose(1, 2).reshape(q.shape).to(q.dtype)


def _neighborhood_attention_cpu(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kernel_size: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
    is_causal: Sequence[bool],
    scale: float,
    rpb: torch.Tensor | None = None,
) -> torch.Tensor:
    params = NAParams(tuple(kernel_size), tuple(stride), tuple(dilation), tuple(is_causal))
    return _forward(q, k, v, params, scale, rpb)


_neighborhood_attention_op = register_attention_op(NEIGHBORHOOD, _neighborhood_attention_cpu)


def neighborhood_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kernel_size,
    stride=1,
    dilation=1,
    is_causal=False,
    scale: float | None = None,
    rpb: torch.Tensor | None = None,
) -> torch.Tensor:
    """Neighborhood attention over ``[B, *spatial, heads, head_dim]`` tensors (docs/ops/neighborhood_attention.md).

    ``kernel_size``, ``stride``, ``dilation`` and ``is_causal`` take one value or one per spatial
    axis; ``rpb`` is an optional ``[heads, 2k_0-1, ...]`` additive relative position bias.
    Exported by torch.export as one ``attn_export::neighborhood_attention`` node.
    """
    _check_tensors(q, k, v)
    params = NAParams.from_args(q.dim() - 3, kernel_size, stride, dilation, is_causal)
    params.validate(q.shape[1:-2])
    if scale is None:
        scale = q.shape[-1] ** -0.5
    if rpb is not None:
        _check_rpb(rpb, params, q.shape[-2])
    return _neighborhood_attention_op(
        q, k, v, list(params.kernel_size), list(params.stride), list(params.dilation),
        list(params.is_causal), float(scale), rpb,
    )


def _check_tensors(q, k, v) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise AttnExportError(f"{_OP}: {name} must be a floating-point tensor")
    if not 4 <= q.dim() <= 6:
        raise AttnExportError(
            f"{_OP}: q has {q.dim()} dims; expected [B, *spatial, heads, head_dim] with 1, 2 or 3 spatial axes"
        )
    if q.shape != k.shape or q.shape != v.shape:
        raise AttnExportError(f"{_OP}: q, k and v must have one shape; got {tuple(q.shape)}, {tuple(k.shape)}, "
                              f"{tuple(v.shape)}")
    if q.dtype != k.dtype or q.dtype != v.dtype:
        raise AttnExportError(f"{_OP}: q, k and v must have one dtype; got {q.dtype}, {k.dtype}, {v.dtype}")


def _check_rpb(rpb: torch.Tensor, params: NAParams, heads: int) -> None:
    if params.any_causal:
        raise AttnExportError(f"{_OP}: rpb is only defined for non-causal attention; drop rpb or is_causal")
    expected = (heads, *params.rpb_shape_tail)
    if tuple(rpb.shape) != expected:
        raise AttnExportError(f"{_OP}: rpb has shape {tuple(rpb.shape)}; expected [heads, 2k-1 per axis] = "
                              f"{list(expected)}")
