"""Per-op builders of the `attention` lowering: each custom attention node as standard ops around ONE ONNX
``Attention`` node (opset 23) with an exact mask, so stock TensorRT (>= 10.14, IAttention) and ONNX Runtime
run the call on their own fused attention, without our plugin library.

Each registry entry names its builder (``OpSpec.attention_lowering``); attn_export.lowering walks the graph and
calls it as ``build(node, call) -> LoweredCall``. The node's attributes are static here, so window parameters,
block sizes and the scale become Python ints and floats; sizes (spatial axes, sequence lengths) are constants
where the file states them (runtimes then fold the mask once) and come from Shape(q) at run time where it does
not, so the masks follow dynamic batch and spatial sizes and no N x N tensor is ever an initializer. The index
math is the local functions' (attn_export.onnx_functions): the same window rule, the same padded-ELL reading
(indices clamped, slots past kv_count unlisted).
"""

from __future__ import annotations

from dataclasses import dataclass

from onnx import TensorProto, helper

from attn_export.errors import AttnExportError
from attn_export.onnx_functions import _Body, _window

_INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class Call:
    """What a builder knows about one node: its input shapes at the export size (ints; None where the
    graph does not say), its name for messages and a unique prefix for the value names it creates."""

    node_name: str
    prefix: str
    shapes: dict  # input name (the op's formal name) -> its dims at the export size (None: unknown), or None
    stated: dict  # input name -> its dims as the file states them (None where symbolic: they vary at run time)

    def stated_dim(self, name: str, axis: int) -> int | None:
        dims = self.stated.get(name)
        return dims[axis] if dims and -len(dims) <= axis < len(dims) else None


@dataclass
class LoweredCall:
    nodes: list  # onnx.NodeProto, in order; the last writes the node's output
    mask_shape: tuple[int, ...] | None  # the mask's shape at the export size (the size guard); None: unknown
    mask_kind: str  # "bool" or "float" (additive)


def _attention(b: _Body, q: str, k: str, v: str, mask: str, scale: float, heads: int | None = None) -> str:
    """One ONNX Attention node; ``heads`` set: the 3-D form [B, S, heads * D] (no transpose needed)."""
    attrs = {"scale": float(scale)}
    if heads is not None:
        attrs.update(q_num_heads=int(heads), kv_num_heads=int(heads))
    return b.op("Attention", q, k, v, mask, **attrs)


def _float_const(b: _Body, value: float, like: str) -> str:
    return b.CastLike(b.op("Constant", value_float=value), like)


def _rename_output(b: _Body, output: str) -> None:
    """Make the last node write the custom node's output name."""
    b.nodes[-1].output[0] = output


def _attrs(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


# ---------------------------------------------------------------------------------------------
# Neighborhood attention


def _na_axis(b: _Body, n: str, k: int, s: int, d: int, causal: int, with_rel: bool):
    """The window rule of one axis of length n (a scalar int64 value) as [n, n] tensors: ``inside`` (bool) and,
    for rpb, ``rel`` (int64, j' - i' + k - 1 clipped to [0, 2k - 2]). Queries are rows, keys are columns."""
    zero, one = b.scalar(0), b.scalar(1)
    kk, ss, dd = b.scalar(k), b.scalar(s), b.scalar(d)
    tokens = b.Range(zero, n, one)  # [n]
    g = b.Mod(tokens, dd)
    ip = b.Div(tokens, dd)
    n_g = b.Div(b.Sub(b.Add(b.Sub(n, g), dd), one), dd)  # ceil((n - g) / d), per query
    start, end = _window(b, ip, n_g, kk, ss, b.scalar(causal))
    col = b.ints(-1)
    jp = b.Div(tokens, dd)  # as keys: [n]
    same_group = b.Equal(b.Unsqueeze(g, col), g)  # [n, n]: key j in query i's dilation group
    inside = b.And(same_group, b.And(b.GreaterOrEqual(jp, b.Unsqueeze(start, col)), b.Less(jp, b.Unsqueeze(end, col))))
    rel = None
    if with_rel:
        rel = b.Clip(b.Add(b.Sub(jp, b.Unsqueeze(ip, col)), b.scalar(k - 1)), zero, b.scalar(2 * k - 2))
    return inside, rel


def _na_combine(b: _Body, per_axis: list, rank: int, combine: str, weights=None) -> str:
    """[n_a, n_a] per axis -> [N, N] over the row-major grid: axis a's rows go to dim a, its columns to dim
    rank + a; ``combine`` is "And" (masks) or "Add" (rel indices, each times its weight first)."""
    out = None
    for axis, value in enumerate(per_axis):
        if weights is not None and weights[axis] != 1:
            value = b.Mul(value, b.scalar(weights[axis]))
        missing = [a for a in range(2 * rank) if a not in (axis, rank + axis)]
        value = b.Unsqueeze(value, b.ints(*missing)) if missing else value
        out = value if out is None else b.op(combine, out, value)
    return out


def neighborhood_lowering(node, call: Call) -> LoweredCall:
    """NeighborhoodAttention -> a [N, N] window mask (bool; with rpb an additive float mask [1, H, N, N]) from
    the window rule of every axis, and Attention in its 3-D form where heads and head_dim are static
    ([B, *spatial, H, D] is [B, N, H * D] by a reshape alone), else in its 4-D form (one transpose each way)."""
    attrs = _attrs(node)
    kernel, stride, dilation = (list(attrs[a]) for a in ("kernel_size", "stride", "dilation"))
    causal = list(attrs["is_causal"])
    rank = len(kernel)
    with_rpb = len(node.input) > 3 and node.input[3] != ""
    known = call.shapes.get("q")
    heads, dim = call.stated_dim("q", -2), call.stated_dim("q", -1)
    b = _Body(call.prefix)
    q, k, v = node.input[:3]
    q_shape = b.Shape(q)
    sizes = [_size(b, call, "q", q_shape, 1 + a) for a in range(rank)]
    axes = [_na_axis(b, sizes[a], kernel[a], stride[a], dilation[a], causal[a], with_rpb) for a in range(rank)]
    tokens = sizes[0]
    for size in sizes[1:]:
        tokens = b.Mul(tokens, size)
    square = b.Concat(b.Unsqueeze(tokens, b.ints(0)), b.Unsqueeze(tokens, b.ints(0)), axis=0)
    inside = b.Reshape(_na_combine(b, [a[0] for a in axes], rank, "And"), square)  # [N, N]
    mask, kind = inside, "bool"
    n_tokens = _prod(known[1:1 + rank]) if known else None
    mask_shape = (n_tokens, n_tokens) if n_tokens else None
    if with_rpb:
        spans = [2 * kk - 1 for kk in kernel]
        weights = [_prod(spans[a + 1:]) for a in range(rank)]
        rel = b.Reshape(_na_combine(b, [a[1] for a in axes], rank, "Add", weights), square)  # [N, N]
        bias = b.Gather(b.Reshape(b.CastLike(node.input[3], q), b.ints(0, -1)), rel, axis=1)  # [H, N, N]
        mask = b.Unsqueeze(b.Where(inside, bias, _float_const(b, float("-inf"), q)), b.ints(0))  # [1, H, N, N]
        kind, mask_shape = "float", (1, known[-2], n_tokens, n_tokens) if n_tokens and known[-2] else None
    if heads is not None and dim is not None:
        flat = b.ints(0, -1, heads * dim)  # [B, *spatial, H, D] -> [B, N, H * D]
        out = _attention(b, *(b.Reshape(x, flat) for x in (q, k, v)), mask, attrs["scale"], heads)
        out = b.Reshape(out, q_shape)
    else:  # [B, *spatial, H, D] -> [B, H, N, D] and back
        tokens_first = b.Concat(b.Slice(q_shape, b.ints(0), b.ints(1)), b.ints(-1), b.Slice(q_shape, b.ints(-2),
                                                                                        b.ints(_INT64_MAX)), axis=0)
        qkv = [b.Transpose(b.Reshape(x, tokens_first), perm=[0, 2, 1, 3]) for x in (q, k, v)]
        out = _attention(b, *qkv, mask, attrs["scale"])
        out = b.Reshape(b.Transpose(out, perm=[0, 2, 1, 3]), q_shape)
    # As the local function: an axis shorter than kernel * dilation (invalid) gives an all-NaN output.
    lengths = b.Concat(*(b.Unsqueeze(n, b.ints(0)) for n in sizes), axis=0)
    reach = b.op("Constant", value_ints=[kk * dd for kk, dd in zip(kernel, dilation)])
    too_short = b.Cast(b.ReduceMax(b.Cast(b.Less(lengths, reach), to=TensorProto.INT64), keepdims=0),
                       to=TensorProto.BOOL)
    b.Where(too_short, _float_const(b, float("nan"), out), out)
    _rename_output(b, node.output[0])
    return LoweredCall(b.nodes, mask_shape, kind)


def _size(b: _Body, call: Call, name: str, shape: str, axis: int) -> str:
    """Dim ``axis`` of input ``name`` as a scalar: a constant where the file states it (the mask then depends on
    constants only and runtimes fold it once: ONNX Runtime per session, TensorRT at build time), else from
    Shape at run time."""
    stated = call.stated_dim(name, axis)
    if stated:
        return b.scalar(stated)
    return b.Squeeze(b.Slice(shape, b.ints(axis), b.ints(axis + 1)), b.ints(0))


def _prod(values) -> int | None:
    """The product of dims; None if one is unknown."""
    out = 1
    for v in values:
        if v is None:
            return None
        out *= int(v)
    return out


# ---------------------------------------------------------------------------------------------
# Block-sparse and PARO: the padded-ELL layout as a token mask


def _layout_mask(b: _Body, count: str, index: str, sq: str, skv: str, block_q: int, block_kv: int):
    """The padded-ELL layout (kv_count [B|1, H|1, nQB], kv_index [B|1, H|1, nQB, M]) as a bool token mask
    [B|1, H|1, Sq, Skv], read as the local function reads it: indices clamped to the kv blocks, slots at or
    past kv_count unlisted. Also returns the listed-slot hits [.., nQB, M, nKVB] (for block_bias)."""
    zero, one = b.scalar(0), b.scalar(1)
    bkv = b.scalar(block_kv)
    n_kvb = b.Div(b.Sub(b.Add(skv, bkv), one), bkv)
    last = b.ints(-1)
    index = b.Cast(index, to=TensorProto.INT64)
    index = b.Min(b.Max(index, zero), b.Sub(n_kvb, one))  # [.., nQB, M]
    slots = b.Squeeze(b.Slice(b.Shape(index), b.ints(3), b.ints(4)), b.ints(0))
    listed = b.Less(b.Range(zero, slots, one), b.Unsqueeze(b.Cast(count, to=TensorProto.INT64), last))  # [.., nQB, M]
    hits = b.And(b.Equal(b.Unsqueeze(index, last), b.Range(zero, n_kvb, one)), b.Unsqueeze(listed, last))
    # Any listed slot holds the kv block. A sum, not a max: over max_blocks 0 a max is the type's minimum.
    allowed = b.Greater(b.ReduceSum(b.Cast(hits, to=TensorProto.INT64), b.ints(3), keepdims=0), zero)
    # Blocks to tokens by broadcasting (a copy, cheaper than two Gathers), then cut to [Sq, Skv].
    lead = b.Slice(b.Shape(allowed), b.ints(0), b.ints(2))
    n_qb = b.Slice(b.Shape(allowed), b.ints(2), b.ints(3))
    tiles = b.Concat(lead, n_qb, b.ints(block_q), b.Unsqueeze(n_kvb, b.ints(0)), b.ints(block_kv), axis=0)
    tokens = b.Expand(b.Unsqueeze(allowed, b.ints(3, 5)), tiles)  # [.., nQB, bq, nKVB, bkv]
    mask = b.Reshape(tokens, b.Concat(lead, b.ints(-1), b.Unsqueeze(b.Mul(n_kvb, bkv), b.ints(0)), axis=0))
    ends = b.Concat(b.Unsqueeze(sq, b.ints(0)), b.Unsqueeze(skv, b.ints(0)), axis=0)
    return b.Slice(mask, b.ints(0, 0), ends, b.ints(2, 3)), hits  # [.., Sq, Skv]


def _bias_mask(b: _Body, bias: str, hits: str, mask: str, sq: str, skv: str, like: str) -> str:
    """block_bias [B|1, H|1, nQB, M, bq, bkv] onto the token grid: each (query block, kv block) tile takes the
    bias of the slot that lists it; keys outside the layout get -inf. Returns the float mask [.., Sq, Skv]."""
    # One spare slot (never listed, bias 0) on both: a layout with max_blocks 0 still has a slot to point at.
    spare_hit = b.Pad(b.Cast(hits, to=TensorProto.INT32), b.ints(0, 0, 0, 0, 0, 0, 0, 0, 1, 0))
    bias = b.Pad(b.CastLike(bias, like), b.ints(0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0))
    slot = b.ArgMax(spare_hit, axis=3, keepdims=0)  # [.., nQB, nKVB]: the slot listing each kv block
    lead = b.Max(b.Slice(b.Shape(bias), b.ints(0), b.ints(2)), b.Slice(b.Shape(slot), b.ints(0), b.ints(2)))
    tile = b.Slice(b.Shape(bias), b.ints(4), b.ints(6))
    bias = b.Expand(bias, b.Concat(lead, b.ints(1, 1, 1, 1), axis=0))
    picks = b.Expand(b.Unsqueeze(slot, b.ints(4, 5)), b.Concat(lead, b.ints(1, 1), tile, axis=0))
    tiles = b.Transpose(b.GatherElements(bias, picks, axis=3), perm=[0, 1, 2, 4, 3, 5])  # [B, H, nQB, bq, nKVB, bkv]
    width = b.Mul(b.Slice(b.Shape(tiles), b.ints(4), b.ints(5)), b.Slice(tile, b.ints(1), b.ints(2)))  # nKVB * bkv
    full = b.Reshape(tiles, b.Concat(lead, b.ints(-1), width, axis=0))  # [B, H, nQB * bq, nKVB * bkv]
    full = b.Slice(full, b.ints(0, 0), b.Concat(b.Unsqueeze(sq, b.ints(0)), b.Unsqueeze(skv, b.ints(0)), axis=0),
                   b.ints(2, 3))
    return b.Where(mask, full, _float_const(b, float("-inf"), like))


def _layout_lead(shapes: dict, names: tuple[str, ...], batch: int | None, heads: int | None) -> tuple:
    """Batch and head dims of the broadcast layout at the export size: 1 where every layout input has 1 there,
    else the model's (None: unknown)."""
    lead = [1, 1]
    for name in (n for n in names if n in shapes):  # the layout inputs the node has
        shape = shapes[name]
        for axis, full in ((0, batch), (1, heads)):
            if shape is None or shape[axis] != 1:
                lead[axis] = full
    return tuple(lead)


def block_sparse_lowering(node, call: Call) -> LoweredCall:
    """BlockSparseAttention -> the layout as a bool token mask [B|1, H|1, Sq, Skv] (with block_bias: an
    additive float mask with the bias of each listed tile), Attention in its 4-D form (q, k, v are already
    [B, H, S, D]), and zeros for queries without any key, as the local function gives."""
    attrs = _attrs(node)
    b = _Body(call.prefix)
    q, k, v, count, index = node.input[:5]
    bias = node.input[5] if len(node.input) > 5 and node.input[5] else None
    sq, skv = _size(b, call, "q", b.Shape(q), 2), _size(b, call, "k", b.Shape(k), 2)
    mask, hits = _layout_mask(b, count, index, sq, skv, attrs["block_q"], attrs["block_kv"])
    kind = "bool"
    if bias:
        mask, kind = _bias_mask(b, bias, hits, mask, sq, skv, q), "float"
        empty = b.Equal(b.ReduceMax(mask, b.ints(-1), keepdims=1), _float_const(b, float("-inf"), q))
    else:
        empty = b.Not(b.Cast(b.ReduceMax(b.Cast(mask, to=TensorProto.INT32), b.ints(-1), keepdims=1),
                             to=TensorProto.BOOL))
    out = _attention(b, q, k, v, mask, attrs["scale"])
    b.Where(empty, _float_const(b, 0.0, q), out)  # a query without keys: zeros (Attention's softmax gives NaN)
    _rename_output(b, node.output[0])
    return LoweredCall(b.nodes, _token_mask_shape(call, ("kv_count", "kv_index", "block_bias")), kind)


def _token_mask_shape(call: Call, layout_inputs: tuple[str, ...]) -> tuple[int, ...] | None:
    q, k = call.shapes.get("q"), call.shapes.get("k")
    if not q or not k:
        return None
    shape = (*_layout_lead(call.shapes, layout_inputs, q[0], q[1]), q[2], k[2])
    return shape if all(isinstance(d, int) for d in shape) else None


def paro_lowering(node, call: Call) -> LoweredCall:
    """ParoAttention with float QK and PV (qk_bits = pv_bits = 16) -> gather q, k, v by perm_idx, Attention
    with the plan's block layout as a bool mask over the permuted sequence, scatter back. Its quantization
    emulation has no standard form: nodes with bits below 16 are refused."""
    attrs = _attrs(node)
    if attrs["qk_bits"] < 16 or attrs["pv_bits"] < 16:
        raise AttnExportError(
            f"attention lowering: ParoAttention node '{call.node_name}' quantizes QK/PV (qk_bits {attrs['qk_bits']}, "
            f"pv_bits {attrs['pv_bits']}), which ONNX's Attention cannot express: export float PARO (--paro-qk fp16 "
            "--paro-pv fp16) or use --lowering plugin")
    b = _Body(call.prefix)
    q, k, v, perm, count, index = node.input[:6]
    shape = b.Shape(q)
    gather = b.Expand(b.Unsqueeze(b.Cast(perm, to=TensorProto.INT64), b.ints(0, 3)), shape)  # [B, H, N, D]
    qp, kp, vp = (b.GatherElements(x, gather, axis=2) for x in (q, k, v))
    n = _size(b, call, "q", shape, 2)
    mask, _ = _layout_mask(b, count, index, n, n, attrs["block"], attrs["block"])
    out = _attention(b, qp, kp, vp, mask, attrs["scale"])
    b.ScatterElements(out, gather, out, axis=2)  # back to the original token order
    _rename_output(b, node.output[0])
    return LoweredCall(b.nodes, _token_mask_shape(call, ("kv_count", "kv_index")), "bool")
