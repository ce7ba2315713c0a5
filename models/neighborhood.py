"""Generalized neighborhood attention (DESIGN.md section 5): parameters, window math, CPU op.

Layout is NATTEN's: q, k, v and out are ``[B, *spatial, heads, head_dim]`` with 1 to 3 spatial axes.
The CPU implementation gathers each query's ``prod(kernel_size)`` keys, so memory is
O(N * prod(k)) and time is linear in the token count N: no N x N score matrix is ever built.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from attn_export.errors import AttnExportError
from attn_export.models.custom_op import register_attention_op
from attn_export.registry import NEIGHBORHOOD

_OP = "neighborhood_attention"
# Upper bound on the gathered K/V working set of one query chunk (bytes); keeps memory flat in N.
_CHUNK_BYTES = 64 << 20


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


def axis_window(n: int, k: int, s: int, d: int, causal: bool, device=None):
    """Key indices ``[n, k]``, relative-bias indices ``[n, k]`` and validity ``[n, k]`` for one axis.

    Slot t of query i holds key ``(start + t) * d + g``; causal windows can be shorter than k, and
    their unused slots are marked invalid (their index is clamped so that a gather stays in range).
    """
    i = torch.arange(n, device=device)
    g, ip = i % d, i // d
    n_g = (n - g + d - 1) // d
    t = torch.arange(k, device=device)
    if causal:
        leader = torch.minimum((ip // s) * s + s - 1, n_g - 1)
        start = (leader - k + 1).clamp_min(0)
        end = torch.minimum(ip + 1, n_g)
    else:
        left, right = k // 2, k // 2 + k % 2 - 1
        leader = torch.minimum((ip // s) * s + s // 2, n_g - 1)
        start = torch.minimum(leader, n_g - 1 - right).clamp_min(left) - left
        end = start + k
    jp = start[:, None] + t
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
# CPU implementation (differentiable torch ops, chunked over queries).


def _forward(q, k, v, params: NAParams, scale: float, rpb: torch.Tensor | None) -> torch.Tensor:
    batch, *spatial, heads, dim = q.shape
    n_tokens = math.prod(spatial)
    key, rel, valid = neighborhood_index(spatial, params, q.device)
    compute = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype

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
    """Neighborhood attention over ``[B, *spatial, heads, head_dim]`` tensors (DESIGN.md section 5).

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
