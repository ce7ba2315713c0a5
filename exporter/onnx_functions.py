"""Portable decompositions: model-local ONNX functions for the custom attention nodes.

Every custom node in domain ``attn_export`` is paired with a FunctionProto of the same domain and
op_type whose body uses standard ONNX ops only, so any ONNX runtime runs the file without our
library, while TensorRT's parser prefers the plugin named by the node's ``plugin_*`` attributes.
One function serves every node of an op type: window parameters arrive as attribute references
and all index math runs in the graph, so it is generic in kernel, stride, dilation, causality,
spatial size and batch. 1-D and 2-D inputs are padded to 3 axes (kernel 1) inside the body.
"""

from __future__ import annotations

from onnx import AttributeProto, FunctionProto, TensorProto, helper

from attn_export.registry import (
    BLOCK_SPARSE,
    DOMAIN,
    NEIGHBORHOOD,
    PARO,
    PARO_P_TILE_MAX_FLOOR,
    PLUGIN_ATTRIBUTES,
    OpSpec,
)

_INT64_MAX = 2**63 - 1


def function_proto(spec: OpSpec, overload: str, nodes: list, onnx_opset: int) -> FunctionProto:
    """The FunctionProto of ``spec``'s ``overload``: its required inputs plus the optional one the overload
    names, every attribute of the node (plugin attributes included), standard ops of ``onnx_opset``. An overload
    "BASE@SHAPE" is BASE specialised for one static shape (see neighborhood_function): BASE names the inputs."""
    base = overload.partition("@")[0]
    inputs = [i.name for i in spec.inputs if not i.optional or i.name == base]
    function = helper.make_function(
        DOMAIN, spec.onnx_op_type, inputs, [o.name for o in spec.outputs], nodes,
        opset_imports=[helper.make_opsetid("", onnx_opset)],
        attributes=[a.name for a in spec.attributes] + list(PLUGIN_ATTRIBUTES),
    )
    if len(spec.overloads) > 1 or overload:
        function.overload = overload
    return function


class _Body:
    """A tiny function-body builder: ``b.Add(x, y)`` appends a node and returns its output name."""

    def __init__(self, prefix: str):
        self.nodes: list = []
        self._prefix = prefix
        self._count = 0

    def _name(self) -> str:
        self._count += 1
        return f"{self._prefix}{self._count}"

    def op(self, op_type: str, *inputs: str, **attrs) -> str:
        output = self._name()
        self.nodes.append(helper.make_node(op_type, list(inputs), [output], **attrs))
        return output

    def __getattr__(self, op_type: str):
        if not op_type[:1].isupper():
            raise AttributeError(op_type)
        return lambda *inputs, **attrs: self.op(op_type, *inputs, **attrs)

    def ints(self, *values: int) -> str:
        return self.op("Constant", value_ints=list(values))

    def scalar(self, value: int) -> str:
        return self.op("Constant", value_int=value)

    def attr_ref(self, attr: str, kind: int) -> str:
        """A Constant whose value is the calling node's attribute ``attr``."""
        field = {AttributeProto.INTS: "value_ints", AttributeProto.INT: "value_int",
                 AttributeProto.FLOAT: "value_float"}[kind]
        ref = AttributeProto(name=field, ref_attr_name=attr, type=kind)
        out = self._name()
        node = helper.make_node("Constant", [], [out])
        node.attribute.append(ref)
        self.nodes.append(node)
        return out


# Query tiles per rank (1, 2, 3 spatial axes), left-padded to 3 axes with 1: chosen on ONNX Runtime's CPU
# provider (bench/bench_cpu_attention.py); each axis's tile is capped at its longest dilation group.
_NA_TILES = ((1, 1, 16), (1, 4, 8), (2, 2, 4))


def _window(b: _Body, ip: str, n_g: str, k: str, s: str, causal: str):
    """Half-open key range [start, end) (group coordinates) of queries ip in groups of length n_g.

    Mirrors attn_export.models.neighborhood._window; see docs/ops/neighborhood_attention.md, Semantics (window rule).
    """
    zero, one, two = b.scalar(0), b.scalar(1), b.scalar(2)
    last = b.Sub(n_g, one)
    base = b.Mul(b.Div(ip, s), s)
    left = b.Div(k, two)
    right = b.Sub(b.Sub(k, left), one)
    # non-causal: centred on the stride group's leader, shifted inside the group at the borders
    leader = b.Min(b.Add(base, b.Div(s, two)), last)
    start_nc = b.Sub(b.Max(b.Min(leader, b.Sub(last, right)), left), left)
    # causal: ends at the query, starts k - 1 before the stride group's last member
    leader_c = b.Min(b.Sub(b.Add(base, s), one), last)
    start_c = b.Max(b.Add(b.Sub(leader_c, k), one), zero)
    is_causal = b.Cast(causal, to=TensorProto.BOOL)
    return (b.Where(is_causal, start_c, start_nc),
            b.Where(is_causal, b.Min(b.Add(ip, one), n_g), b.Add(start_nc, k)))


def _axis_tiles(b: _Body, n: str, k: str, s: str, d: str, causal: str, tile: str, with_rel: bool) -> dict:
    """One axis cut into U = d * ceil(ceil(n / d) / tile) tiles of `tile` queries of one dilation group
    (scalar int64 inputs). Mirrors attn_export.models.neighborhood.axis_tiles: query [U, T] and key [U, W]
    tokens, inside (and, for rpb, rel) [U, T, W], unit and slot [n] of each token, U and T."""
    zero, one = b.scalar(0), b.scalar(1)
    col, box = b.ints(-1), b.ints(1)

    def ceil_div(x: str, y: str) -> str:
        return b.Div(b.Sub(b.Add(x, y), one), y)

    longest = ceil_div(n, d)
    tile = b.Min(tile, longest)
    per_group = ceil_div(longest, tile)
    unit = b.Unsqueeze(b.Range(zero, b.Mul(d, per_group), one), col)  # [U, 1]
    g = b.Div(unit, per_group)
    n_g = ceil_div(b.Sub(n, g), d)
    # Slots past the end of a shorter group repeat its last query: no row is empty, none is read.
    ip = b.Min(b.Add(b.Mul(b.Mod(unit, per_group), tile), b.Range(zero, tile, one)), b.Sub(n_g, one))  # [U, T]
    start, end = _window(b, ip, n_g, k, s, causal)
    low = b.ReduceMin(start, box, keepdims=1)
    width = b.ReduceMax(b.Sub(b.ReduceMax(end, box, keepdims=1), low), keepdims=0)
    jp = b.Add(low, b.Range(zero, width, one))  # [U, W]
    slots = b.Unsqueeze(jp, box)  # [U, 1, W]
    i = b.Div(b.Range(zero, n, one), d)
    tiles = {
        "query": b.Add(b.Mul(ip, d), g),
        "key": b.Add(b.Mul(b.Min(jp, b.Sub(n_g, one)), d), g),
        "inside": b.And(b.GreaterOrEqual(slots, b.Unsqueeze(start, col)), b.Less(slots, b.Unsqueeze(end, col))),
        "unit": b.Add(b.Mul(b.Mod(b.Range(zero, n, one), d), per_group), b.Div(i, tile)),
        "slot": b.Mod(i, tile),
        "units": b.Mul(d, per_group),
        "rows": tile,
    }
    if with_rel:
        tiles["rel"] = b.Clip(b.Add(b.Sub(slots, b.Unsqueeze(ip, col)), b.Sub(k, one)), zero,
                              b.Sub(b.Add(k, k), b.scalar(2)))
    return tiles


def neighborhood_static_shape(node, shapes: dict) -> str:
    """"HxW" (one size per spatial axis) when the file states q's spatial dims as numbers, else "": the node then
    uses the function overload specialised for that shape (index math folded to constants by the runtime)."""
    dims = shapes.get(node.input[0])
    spatial = dims[1:-2] if dims and len(dims) >= 3 else None
    if not spatial or not all(isinstance(d, int) and d > 0 for d in spatial):
        return ""
    return "x".join(map(str, spatial))


def neighborhood_function(onnx_opset: int, overload: str = "") -> FunctionProto:
    """The model-local function for ``attn_export::NeighborhoodAttention``: tiled attention on GEMMs.

    The body computes the tiles of every axis from Shape(q) and the attributes (as the torch op's tiled
    path does), gathers each tile's queries [B, H, U, T, D] and key box [B, H, U, W, D] once, and runs
    MatMul, an additive mask (the window rule, plus the rpb gathered for the box), Softmax and MatMul; the
    outputs return to token order with one Gather. Memory is O(N * W); nothing of size N x N exists.
    ONNX Runtime cannot inline a function whose optional input is missing, so the 4-input form
    (with rpb) is the function overload ``"rpb"`` and the 3-input form is the default overload.
    ``"@HxW"`` / ``"rpb@HxW"``: the same for one known spatial shape, taken as a constant instead of Shape(q).
    """
    base, _, static = overload.partition("@")
    with_rpb = base == "rpb"
    b = _Body("na_")
    kernel = b.attr_ref("kernel_size", AttributeProto.INTS)
    stride = b.attr_ref("stride", AttributeProto.INTS)
    dilation = b.attr_ref("dilation", AttributeProto.INTS)
    causal = b.attr_ref("is_causal", AttributeProto.INTS)
    scale = b.attr_ref("scale", AttributeProto.FLOAT)

    q_shape = b.Shape("q")
    # "@HxW": the spatial shape the exporter knows, as a constant: every index node below then depends on
    # constants only, and ONNX Runtime folds them once per session instead of running ~230 nodes per call.
    spatial = b.ints(*map(int, static.split("x"))) if static else b.Slice(q_shape, b.ints(1), b.ints(-2))
    ones3, zeros3, last3, end = b.ints(1, 1, 1), b.ints(0, 0, 0), b.ints(-3), b.ints(_INT64_MAX)

    def pad3(values: str, filler: str) -> str:  # left-pad a per-axis list to 3 axes
        return b.Slice(b.Concat(filler, values, axis=0), last3, end)

    rank = b.Sub(b.Size(kernel), b.scalar(1))
    tiles = b.Gather(b.op("Constant", value=helper.make_tensor("tiles", TensorProto.INT64, [3, 3],
                                                                 [t for row in _NA_TILES for t in row])), rank, axis=0)
    per_axis = [pad3(x, ones3) for x in (spatial, kernel, stride, dilation)] + [pad3(causal, zeros3), tiles]
    axes = []
    zero_f = b.CastLike(b.op("Constant", value_float=0.0), "q")
    neg_inf = b.CastLike(b.op("Constant", value_float=float("-inf")), "q")
    for axis in range(3):
        n, k, s, d, c, t = (b.Gather(x, b.scalar(axis), axis=0) for x in per_axis)
        tiled = _axis_tiles(b, n, k, s, d, c, t, with_rpb)
        # The window rule as an additive mask per axis: their sum is 0 where the slot is inside on every axis.
        tiled["mask"] = b.Where(tiled["inside"], zero_f, neg_inf)
        axes.append(dict(tiled, n=n, span=b.Sub(b.Add(k, k), b.scalar(1))))

    def on_grid(field: str, axis: int) -> str:  # dim j of a per-axis tensor -> dim 3 * j + axis
        size = {"query": 2, "key": 2, "mask": 3, "rel": 3, "unit": 1, "slot": 1}[field]
        missing = [3 * j + a for j in range(size) for a in range(3) if a != axis]
        return b.Unsqueeze(axes[axis][field], b.ints(*missing))

    def fold(field: str, weight: str | None) -> str:  # acc * axis[weight] + x (or acc + x) over the 3 axes
        out = on_grid(field, 0)
        for axis in (1, 2):
            out = b.Add(b.Mul(out, axes[axis][weight]) if weight else out, on_grid(field, axis))
        return out

    rows = b.Unsqueeze(b.Mul(b.Mul(axes[0]["rows"], axes[1]["rows"]), axes[2]["rows"]), b.ints(0))
    units = b.Unsqueeze(b.Mul(b.Mul(axes[0]["units"], axes[1]["units"]), axes[2]["units"]), b.ints(0))
    minus1 = b.ints(-1)
    query = b.Reshape(fold("query", "n"), b.Concat(units, rows, axis=0))  # [U, T]
    key = b.Reshape(fold("key", "n"), b.Concat(units, minus1, axis=0))  # [U, W]
    tile_shape = b.Concat(units, rows, minus1, axis=0)
    row = b.Reshape(b.Add(b.Mul(fold("unit", "units"), rows), fold("slot", "rows")), minus1)  # [N]

    def heads_first(x: str) -> str:  # [B, *spatial, H, D] -> [B, H, N, D]
        tokens_shape = b.Concat(b.Slice(q_shape, b.ints(0), b.ints(1)), minus1, b.Slice(q_shape, b.ints(-2), end),
                                axis=0)
        return b.Transpose(b.Reshape(x, tokens_shape), perm=[0, 2, 1, 3])

    q_tiles = b.Gather(b.Mul(heads_first("q"), b.CastLike(scale, "q")), query, axis=2)  # [B, H, U, T, D]
    k_box = b.Gather(heads_first("k"), key, axis=2)  # [B, H, U, W, D]
    v_box = b.Gather(heads_first("v"), key, axis=2)
    logits = b.MatMul(q_tiles, b.Transpose(k_box, perm=[0, 1, 2, 4, 3]))  # [B, H, U, T, W]
    mask = b.Reshape(fold("mask", None), tile_shape)  # [U, T, W]
    if with_rpb:
        rel = b.Reshape(fold("rel", "span"), tile_shape)
        mask = b.Add(b.Gather(b.Reshape("rpb", b.ints(0, -1)), rel, axis=1), mask)  # [H, U, T, W]
    out = b.MatMul(b.Softmax(b.Add(logits, mask), axis=-1), v_box)  # [B, H, U, T, D]
    out = b.Gather(b.Reshape(out, b.Concat(b.Slice(b.Shape(out), b.ints(0), b.ints(2)), minus1,
                                           b.Slice(q_shape, b.ints(-1), end), axis=0)), row, axis=2)  # [B, H, N, D]
    out = b.Reshape(b.Transpose(out, perm=[0, 2, 1, 3]), q_shape)
    # ONNX has no assert: an axis shorter than kernel*dilation (invalid, docs/ops/neighborhood_attention.md) makes the
    # whole output NaN rather than a silently wrong answer from clamped windows.
    n3, k3, d3 = per_axis[0], per_axis[1], per_axis[3]
    too_short = b.Cast(b.ReduceMax(b.Cast(b.Less(n3, b.Mul(k3, d3)), to=TensorProto.INT64), keepdims=0),
                       to=TensorProto.BOOL)
    nan = b.CastLike(b.op("Constant", value_float=float("nan")), out)
    b.nodes.append(helper.make_node("Where", [too_short, nan, out], ["out"]))

    return function_proto(NEIGHBORHOOD, overload, b.nodes, onnx_opset)


# ---------------------------------------------------------------------------------------------
# Block-sparse attention

def block_sparse_function(onnx_opset: int, overload: str = "") -> FunctionProto:
    """The model-local function for ``attn_export::BlockSparseAttention``: batched GEMMs over listed blocks.

    K and V are viewed as [B, H, nKVB, block_kv, D] and each query block's max_blocks listed blocks are
    gathered whole (GatherND over block numbers, no per-token indices) into [B, H, nQB, max_blocks * block_kv,
    D]; then MatMul, an additive mask (unlisted slots, keys past Skv; in the "block_bias" overload plus the
    bias of each slot's tile), Softmax and MatMul per query block.
    Memory grows with the listed blocks, never with Sq x Skv. Rows with no block give zeros.
    """
    b = _Body("bsa_")
    block_q = b.attr_ref("block_q", AttributeProto.INT)
    block_kv = b.attr_ref("block_kv", AttributeProto.INT)
    scale = b.attr_ref("scale", AttributeProto.FLOAT)
    zero, one = b.scalar(0), b.scalar(1)
    unsq0, last = b.ints(0), b.ints(-1)
    q_shape, k_shape = b.Shape("q"), b.Shape("k")
    batch, heads = b.Slice(q_shape, b.ints(0), b.ints(1)), b.Slice(q_shape, b.ints(1), b.ints(2))
    sq = b.Squeeze(b.Slice(q_shape, b.ints(2), b.ints(3)), unsq0)
    skv = b.Squeeze(b.Slice(k_shape, b.ints(2), b.ints(3)), unsq0)
    dim = b.Slice(q_shape, b.ints(3), b.ints(4))

    def blocks(length: str, block: str) -> str:  # ceil(length / block)
        return b.Div(b.Sub(b.Add(length, block), one), block)

    def padded(x: str, length: str, block: str) -> str:  # [B, H, S, D] -> [B, H, nBlocks, block, D], zero-padded
        pads = b.Concat(b.ints(0, 0, 0, 0, 0, 0), b.Unsqueeze(b.Sub(b.Mul(blocks(length, block), block), length),
                                                              unsq0), b.ints(0), axis=0)
        return b.Reshape(b.Pad(x, pads), b.Concat(batch, heads, last, b.Unsqueeze(block, unsq0), dim, axis=0))

    n_qb, n_kvb = blocks(sq, block_q), blocks(skv, block_kv)
    max_blocks = b.Slice(b.Shape("kv_index"), b.ints(3), b.ints(4))
    layout = b.Concat(batch, heads, b.Unsqueeze(n_qb, unsq0), axis=0)
    count = b.Cast(b.Expand("kv_count", layout), to=TensorProto.INT64)  # [B, H, nQB]
    index = b.Cast(b.Expand("kv_index", b.Concat(layout, max_blocks, axis=0)), to=TensorProto.INT64)
    index = b.Min(b.Max(index, zero), b.Sub(n_kvb, one))  # [B, H, nQB, M]: never out of bounds
    listed = b.Less(b.Range(zero, b.Squeeze(max_blocks, unsq0), one), b.Unsqueeze(count, last))  # [B, H, nQB, M]
    tokens = b.Add(b.Unsqueeze(b.Mul(index, block_kv), last), b.Range(zero, block_kv, one))  # [B, H, nQB, M, bkv]
    # The mask per listed slot and key: listed and before Skv.
    valid = b.Reshape(b.And(b.Unsqueeze(listed, last), b.Less(tokens, skv)), b.Concat(layout, b.ints(1, -1), axis=0))
    zero_f = b.CastLike(b.op("Constant", value_float=0.0), "q")
    mask = b.Where(valid, zero_f, b.CastLike(b.op("Constant", value_float=float("-inf")), "q"))  # [B, H, nQB, 1, W]
    picked = b.Unsqueeze(b.Reshape(index, b.Concat(batch, heads, last, axis=0)), last)  # [B, H, nQB * M, 1]

    def gather_blocks(x: str) -> str:  # [B, H, Skv, D] -> [B, H, nQB, M * bkv, D]: whole blocks
        return b.Reshape(b.GatherND(padded(x, skv, block_kv), picked, batch_dims=2),
                         b.Concat(layout, last, dim, axis=0))

    if overload == "block_bias":  # [B|1, H|1, nQB, M, bq, bkv] -> [B|1, H|1, nQB, bq, M * bkv], onto the mask
        bias = b.Transpose(b.CastLike("block_bias", "q"), perm=[0, 1, 2, 4, 3, 5])
        mask = b.Add(mask, b.Reshape(bias, b.Concat(b.Slice(b.Shape(bias), b.ints(0), b.ints(4)), last, axis=0)))
    q_blocks = padded(b.Mul("q", b.CastLike(scale, "q")), sq, block_q)  # [B, H, nQB, bq, D]
    logits = b.Add(b.MatMul(q_blocks, b.Transpose(gather_blocks("k"), perm=[0, 1, 2, 4, 3])), mask)
    out = b.MatMul(b.Softmax(logits, axis=-1), gather_blocks("v"))  # [B, H, nQB, bq, D]
    empty = b.Unsqueeze(b.Equal(count, zero), b.ints(-1, -2))  # a row with no block: Softmax gave NaN, want 0
    if overload == "block_bias":  # a query whose every key the bias masks: zeros, as flex_attention gives
        neg_inf = b.CastLike(b.op("Constant", value_float=float("-inf")), "q")
        empty = b.Or(empty, b.Equal(b.ReduceMax(mask, last, keepdims=1), neg_inf))
    out = b.Reshape(b.Where(empty, zero_f, out), b.Concat(batch, heads, last, dim, axis=0))
    b.nodes.append(helper.make_node("Slice", [out, b.ints(0), b.Unsqueeze(sq, unsq0), b.ints(2)], ["out"]))
    return function_proto(BLOCK_SPARSE, overload, b.nodes, onnx_opset)


# ---------------------------------------------------------------------------------------------
# PARO attention


def paro_function(onnx_opset: int, overload: str = "") -> FunctionProto:
    """The model-local function for ``attn_export::ParoAttention``, step for step the reference op: gather
    q, k, v by perm_idx, fake-quantize QK per token group (K mean-smoothed) and V per channel, attend the
    listed blocks of the permuted sequence (gathered, never N x N) with P fake-quantized per tile, and
    scatter the output back. Computed in float32 whatever T; bits of 16 select the unquantized values."""
    b = _Body("paro_")
    block = b.attr_ref("block", AttributeProto.INT)
    attrs = {name: b.attr_ref(name, AttributeProto.INT) for name in ("qk_bits", "pv_bits", "q_group", "k_group",
                                                                     "smooth_k")}
    scale = b.attr_ref("scale", AttributeProto.FLOAT)
    zero, one = b.scalar(0), b.scalar(1)
    unsq0 = b.ints(0)
    fq, fk, fv = (b.Cast(x, to=TensorProto.FLOAT) for x in ("q", "k", "v"))
    shape = b.Shape(fq)
    batch, heads = b.Slice(shape, b.ints(0), b.ints(1)), b.Slice(shape, b.ints(1), b.ints(2))
    n = b.Squeeze(b.Slice(shape, b.ints(2), b.ints(3)), unsq0)
    dim = b.Slice(shape, b.ints(3), b.ints(4))

    def float_const(value: float) -> str:
        return b.op("Constant", value_float=value)

    def top(bits: str) -> str:  # 2^(bits-1) - 1, as float
        exponent = b.Cast(b.Sub(bits, one), to=TensorProto.FLOAT)
        return b.Sub(b.Pow(float_const(2.0), exponent), float_const(1.0))

    def nonzero(scale_q: str, fallback: str) -> str:  # a scale of 0 (amax 0, or underflow) -> fallback
        return b.Where(b.Equal(scale_q, float_const(0.0)), fallback, scale_q)

    def fake_quant(x: str, amax: str, top_value: str) -> str:  # symmetric, round half to even
        scale_q = nonzero(b.Div(amax, top_value), float_const(1.0))
        return b.Mul(b.Clip(b.Round(b.Div(x, scale_q)), b.Neg(top_value), top_value), scale_q)

    def quantize_groups(x: str, group: str, top_value: str) -> str:  # one scale per `group` tokens
        pad = b.Mod(b.Sub(group, b.Mod(n, group)), group)
        pads = b.Concat(b.ints(0, 0, 0, 0, 0, 0), b.Unsqueeze(pad, unsq0), b.ints(0), axis=0)
        grouped = b.Reshape(b.Pad(x, pads), b.Concat(batch, heads, b.ints(-1), b.Unsqueeze(group, unsq0), dim,
                                                     axis=0))
        amax = b.ReduceMax(b.Abs(grouped), b.ints(3, 4), keepdims=1)
        flat = b.Reshape(fake_quant(grouped, amax, top_value), b.Concat(batch, heads, b.ints(-1), dim, axis=0))
        return b.Slice(flat, b.ints(0), b.Unsqueeze(n, unsq0), b.ints(2))

    # 1. Each head's order: gather along the tokens.
    gather = b.Expand(b.Unsqueeze(b.Cast("perm_idx", to=TensorProto.INT64), b.ints(0, 3)), shape)  # [B, H, N, D]
    qp, kp, vp = (b.GatherElements(x, gather, axis=2) for x in (fq, fk, fv))
    # 2. QK per token group (K mean-smoothed first), V per channel; bits 16 keep the float values.
    qk_on = b.Less(attrs["qk_bits"], b.scalar(16))
    pv_on = b.Less(attrs["pv_bits"], b.scalar(16))
    qk_top, pv_top = top(attrs["qk_bits"]), top(attrs["pv_bits"])
    smooth = b.And(b.Cast(attrs["smooth_k"], to=TensorProto.BOOL), qk_on)
    kp = b.Where(smooth, b.Sub(kp, b.ReduceMean(kp, b.ints(2), keepdims=1)), kp)
    qp = b.Where(qk_on, quantize_groups(qp, attrs["q_group"], qk_top), qp)
    kp = b.Where(qk_on, quantize_groups(kp, attrs["k_group"], qk_top), kp)
    vp = b.Where(pv_on, fake_quant(vp, b.ReduceMax(b.Abs(vp), b.ints(2), keepdims=1), pv_top), vp)

    # 3. The listed blocks of the permuted sequence (as block-sparse attention, block x block).
    n_b = b.Div(b.Sub(b.Add(n, block), one), block)  # ceil(N / block)
    max_blocks = b.Slice(b.Shape("kv_index"), b.ints(3), b.ints(4))
    layout = b.Concat(batch, heads, b.Unsqueeze(n_b, unsq0), axis=0)
    count = b.Cast(b.Expand("kv_count", layout), to=TensorProto.INT64)  # [B, H, nb]
    index = b.Cast(b.Expand("kv_index", b.Concat(layout, max_blocks, axis=0)), to=TensorProto.INT64)
    listed = b.Less(b.Range(zero, b.Squeeze(max_blocks, unsq0), one), b.Unsqueeze(count, b.ints(-1)))
    tokens = b.Add(b.Unsqueeze(b.Mul(b.Max(index, zero), block), b.ints(-1)), b.Range(zero, block, one))
    valid = b.Reshape(b.And(b.Unsqueeze(listed, b.ints(-1)), b.Less(tokens, n)),
                      b.Concat(layout, b.ints(-1), axis=0))  # [B, H, nb, M*block]
    tokens = b.Reshape(b.Min(tokens, b.Sub(n, one)), b.Concat(batch, heads, b.ints(-1, 1), axis=0))

    def gather_blocks(x: str) -> str:  # [B, H, N, D] -> [B, H, nb, M*block, D]
        return b.Reshape(b.GatherND(x, tokens, batch_dims=2), b.Concat(layout, b.ints(-1), dim, axis=0))

    padded = b.Mul(n_b, block)
    pads = b.Concat(b.ints(0, 0, 0, 0, 0, 0), b.Unsqueeze(b.Sub(padded, n), unsq0), b.ints(0), axis=0)
    q_blocks = b.Reshape(b.Pad(qp, pads), b.Concat(layout, b.Unsqueeze(block, unsq0), dim, axis=0))
    logits = b.Mul(b.MatMul(q_blocks, b.Transpose(gather_blocks(kp), perm=[0, 1, 2, 4, 3])), scale)
    logits = b.Where(b.Unsqueeze(valid, b.ints(-2)), logits, float_const(float("-inf")))
    last = b.ints(-1)
    p = b.Exp(b.Sub(logits, b.ReduceMax(logits, last, keepdims=1)))  # unnormalised, 0 where masked
    total = b.ReduceSum(p, last, keepdims=1)  # the denominator: unquantized
    # P per (query block, kv block) tile over its real query rows: scale max(max(p), 2^-30) / qmax (the floor of
    # the registry's PARO_P_TILE_MAX_FLOOR, which keeps the kernels' online rescale finite).
    tiles = b.Reshape(p, b.Concat(layout, b.Unsqueeze(block, unsq0), max_blocks, b.Unsqueeze(block, unsq0),
                                  axis=0))  # [B, H, nb, block, M, block]
    rows_valid = b.Reshape(b.Cast(b.Less(b.Range(zero, padded, one), n), to=TensorProto.FLOAT),
                           b.Concat(b.Unsqueeze(n_b, unsq0), b.Unsqueeze(block, unsq0), b.ints(1, 1), axis=0))
    peak = b.ReduceMax(b.Mul(tiles, rows_valid), b.ints(3, 5), keepdims=1)
    step = b.Div(b.Max(peak, float_const(PARO_P_TILE_MAX_FLOOR)), pv_top)
    p_q = b.Mul(b.Clip(b.Round(b.Div(tiles, step)), float_const(0.0), pv_top), step)
    p = b.Where(pv_on, b.Reshape(p_q, b.Shape(p)), p)
    out = b.Div(b.MatMul(p, gather_blocks(vp)), total)  # [B, H, nb, block, D]
    out = b.Slice(b.Reshape(out, b.Concat(batch, heads, b.ints(-1), dim, axis=0)), b.ints(0), b.Unsqueeze(n, unsq0),
                  b.ints(2))
    # 4. Back to the original token order.
    b.nodes.append(helper.make_node("CastLike", [b.ScatterElements(out, gather, out, axis=2), "q"], ["out"]))
    return function_proto(PARO, overload, b.nodes, onnx_opset)
