"""Call-level conversion: NATTEN's functional API and FlexAttention calls export as our ops, checked against
NATTEN and flex_attention themselves (the model as written is the reference), and what cannot convert is
refused in one line naming the call."""

from __future__ import annotations

import inspect
import json
import random
import warnings

import pytest
import torch

import attn_export
import attn_export.parity
from attn_export.call_convert import CallConverter, ConversionRefused, neighborhood_window, plan_flex, run_plan
from attn_export.flex_plan import block_bias
from attn_export.models.neighborhood import NAParams, neighborhood_index

from helpers import assert_one_line_error, factory_checkpoint, run

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")


class NattenCall(torch.nn.Module):
    """A layer as users write it with NATTEN's functional API (no NATTEN module to convert)."""

    def __init__(self, rank: int, dim: int, heads: int, **window):
        super().__init__()
        self.rank, self.heads, self.window = rank, heads, window
        self.qkv, self.proj = torch.nn.Linear(dim, 3 * dim), torch.nn.Linear(dim, dim)

    def forward(self, x):
        import natten

        q, k, v = self.qkv(x).unflatten(-1, (3, self.heads, -1)).unbind(-3)
        function = {1: natten.na1d, 2: natten.na2d, 3: natten.na3d}[self.rank]
        return self.proj(function(q, k, v, **self.window).flatten(-2))


NATTEN_CALL_LINE = next(number for number, line in enumerate(inspect.getsource(NattenCall).splitlines(),
                                                           inspect.getsourcelines(NattenCall)[1])
                        if "function(q, k, v" in line)


def natten_cases(count: int):
    rng = random.Random(7)
    cases = []
    while len(cases) < count:
        rank = rng.randint(1, 3)
        kernel = [rng.randint(2, 4) for _ in range(rank)]
        dilation = [rng.choice([1, 1, 2]) for _ in range(rank)]
        spatial = [k * d + rng.randint(0, 4) for k, d in zip(kernel, dilation)]
        stride = [rng.randint(1, k) for k in kernel]
        causal = [rng.random() < 0.3 for _ in range(rank)]
        cases.append((spatial, dict(kernel_size=tuple(kernel), stride=tuple(stride), dilation=tuple(dilation),
                                    is_causal=tuple(causal))))
    return cases


@pytest.mark.parametrize("spatial, window", natten_cases(8))
def test_natten_functional_calls_export_and_match_natten(spatial, window, tmp_path):
    pytest.importorskip("natten", reason="NATTEN not installed")
    torch.manual_seed(0)
    model = NattenCall(len(spatial), 16, 2, **window).eval()
    result = attn_export.run(model, tmp_path, example_inputs=(torch.randn(1, *spatial, 16),), engine=False,
                             tolerances=attn_export.parity.Tolerances(atol=1e-5, rtol=0))
    assert result.passed, result.report.table()
    assert result.converted_calls == [f"natten.na{len(spatial)}d at test_call_convert.py:{NATTEN_CALL_LINE} -> "
                                      "attn_export::neighborhood_attention"]
    assert result.report.reference["runner"] == "pytorch-original"  # NATTEN itself
    report = json.loads(result.report_path.read_text())
    assert report["export"]["custom_nodes"] == {"NeighborhoodAttention": 1}


def na_mask(n: int, kernel: int, stride: int, dilation: int, causal: bool) -> torch.Tensor:
    index, _, valid = neighborhood_index((n,), NAParams((kernel,), (stride,), (dilation,), (causal,)))
    mask = torch.zeros(n, n, dtype=torch.bool)
    mask.scatter_(1, index, valid if valid is not None else torch.ones_like(index, dtype=torch.bool))
    return mask[None, None]


def test_one_dimensional_neighborhood_masks_are_recognised_exactly():
    rng = random.Random(3)
    for _ in range(40):
        kernel, dilation = rng.randint(2, 9), rng.choice([1, 1, 2, 3])
        n = kernel * dilation + rng.randint(0, 20)
        stride, causal = rng.randint(1, kernel), rng.random() < 0.5
        found = neighborhood_window(na_mask(n, kernel, stride, dilation, causal))
        assert found is not None
        rebuilt = na_mask(n, found["kernel"], found["stride"], found["dilation"], found["causal"])
        assert torch.equal(rebuilt, na_mask(n, kernel, stride, dilation, causal))
    i = torch.arange(40)
    sliding = ((i[:, None] - i[None, :]).abs() <= 3)[None, None]  # truncated at the borders: not NA
    assert neighborhood_window(sliding) is None
    causal_window = ((i[:, None] >= i[None, :]) & (i[:, None] - i[None, :] < 8))[None, None]
    assert neighborhood_window(causal_window) == {"kernel": 8, "stride": 1, "dilation": 1, "causal": True}


def test_flex_sliding_window_lm_exports_as_neighborhood_attention_and_matches_flex(tmp_path):
    result = run("zoo:flex-swa-tiny", "-o", tmp_path, "--atol", "1e-5", "--rtol", "0")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["export"]["custom_nodes"] == {"NeighborhoodAttention": 2}
    assert report["reference"]["runner"] == "pytorch-original"  # flex_attention itself
    assert all("kernel 16, stride 1, dilation 1, causal" in c for c in report["export"]["converted_calls"])


class Refused(torch.nn.Module):
    def __init__(self, how: str):
        super().__init__()
        self.how = how

    def forward(self, x):
        from torch.nn.attention.flex_attention import flex_attention

        q = x.unflatten(-1, (2, -1)).transpose(1, 2)
        if self.how == "gqa":
            return flex_attention(q, q[:, :1], q[:, :1], enable_gqa=True)
        import natten

        return natten.na1d(x.unflatten(-1, (2, -1)), x.unflatten(-1, (2, -1)), x.unflatten(-1, (2, -1)), 3,
                           additional_keys=x[:, :2].unflatten(-1, (2, -1)),
                           additional_values=x[:, :2].unflatten(-1, (2, -1)))


@pytest.mark.parametrize("how, fragment", [
    ("gqa", "uses enable_gqa / return_lse / return_aux"),
    ("additional_kv", "passes additional_keys/additional_values"),
])
def test_calls_that_cannot_convert_are_refused_naming_the_call(how, fragment):
    if how == "additional_kv":
        pytest.importorskip("natten")
    with pytest.raises(ConversionRefused, match=fragment):
        CallConverter().analyse(Refused(how), (torch.randn(1, 12, 8),))


def test_flex_calls_the_converter_cannot_see_are_still_named_by_the_export(tmp_path, monkeypatch):
    """A flex call reached through an object attribute escapes the interception: the export then names it."""
    from attn_export import call_convert

    monkeypatch.setattr(call_convert, "_targets", lambda: {})  # nothing intercepted
    result = run("zoo:flex-swa-tiny", "-o", tmp_path / "o")
    assert_one_line_error(result, 2, "calls FlexAttention (torch.nn.attention.flex_attention) at zoo.py")
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------
# FlexAttention patterns: each exported and run on ONNX Runtime against flex_attention itself

LENGTH, BLOCK = 100, 32  # not a multiple of the block: the last row and column of blocks are partial
DOCS = torch.tensor([0] * 30 + [1] * 45 + [2] * 25)


def sliding(b, h, q, kv):
    return (q - kv).abs() <= 8


def causal(b, h, q, kv):
    return q >= kv


def sliding_causal(b, h, q, kv):
    return (q >= kv) & (q - kv < 16)


def documents(b, h, q, kv):
    return DOCS[q] == DOCS[kv]


def prefix_lm(b, h, q, kv):
    return (kv < 20) | (q >= kv)


def neighborhood_2d(b, h, q, kv):  # NATTEN's 5x5 window on a 10x10 grid (clamped at the borders)
    def inside(i, j):
        start = torch.clamp(i - 2, 0, 10 - 5)
        return (j >= start) & (j < start + 5)

    return inside(q // 10, kv // 10) & inside(q % 10, kv % 10)


def dilated(b, h, q, kv):
    return ((q - kv) % 2 == 0) & ((q - kv).abs() <= 6)


def alibi(score, b, h, q, kv):
    return score - (h + 1) * 0.25 * (q - kv).abs()


REL_TABLE = torch.randn(2, 2 * LENGTH - 1, generator=torch.Generator().manual_seed(5))


def relative_table(score, b, h, q, kv):
    return score + REL_TABLE[h, q - kv + LENGTH - 1]


def softcap(score, b, h, q, kv):
    return 5.0 * torch.tanh(score / 5.0)


class FlexCall(torch.nn.Module):
    """One attention layer as users write it with flex_attention (a BlockMask built once, a score_mod)."""

    def __init__(self, mask_mod=None, score_mod=None, dim: int = 16, heads: int = 2):
        super().__init__()
        from torch.nn.attention.flex_attention import create_block_mask

        self.heads, self.score_mod = heads, score_mod
        self.qkv, self.proj = torch.nn.Linear(dim, 3 * dim), torch.nn.Linear(dim, dim)
        self.block_mask = None if mask_mod is None else create_block_mask(mask_mod, None, None, LENGTH, LENGTH,
                                                                          device="cpu", BLOCK_SIZE=BLOCK)

    def forward(self, x):
        from torch.nn.attention.flex_attention import flex_attention

        q, k, v = self.qkv(x).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)
        out = flex_attention(q, k, v, score_mod=self.score_mod, block_mask=self.block_mask)
        return self.proj(out.transpose(1, 2).flatten(-2))


def export_flex(tmp_path, mask_mod=None, score_mod=None):
    torch.manual_seed(0)
    model = FlexCall(mask_mod, score_mod).eval()
    return attn_export.run(model, tmp_path, example_inputs=(torch.randn(1, LENGTH, 16),), engine=False,
                           tolerances=attn_export.parity.Tolerances(atol=1e-5, rtol=0))


def block_counts(mask_mod) -> tuple[int, int]:
    """(blocks touched, partial blocks) of a mask on the 32 x 32 grid, counted by brute force."""
    i = torch.arange(LENGTH)
    dense = mask_mod(0, 0, i[:, None], i[None, :])
    n = -(-LENGTH // BLOCK)
    listed = partial = 0
    for r in range(n):
        for c in range(n):
            tile = dense[r * BLOCK:(r + 1) * BLOCK, c * BLOCK:(c + 1) * BLOCK]
            listed += bool(tile.any())
            partial += bool(tile.any()) and not bool(tile.all())
    return listed, partial


def block_sparse_target(mask_mod) -> str:
    listed, partial = block_counts(mask_mod)
    return (f"block_sparse_attention (blocks 32x32, {listed} of 16 listed, {partial} partial "
            f"block{'' if partial == 1 else 's'} exact")


@pytest.mark.parametrize("mask_mod, score_mod, target", [
    (sliding, None, block_sparse_target(sliding)),
    (causal, None, "neighborhood_attention (kernel 100, stride 1, dilation 1, causal)"),
    (sliding_causal, None, "neighborhood_attention (kernel 16, stride 1, dilation 1, causal)"),
    (documents, None, block_sparse_target(documents)),
    (prefix_lm, None, block_sparse_target(prefix_lm)),
    (neighborhood_2d, None, block_sparse_target(neighborhood_2d)),
    (dilated, None, block_sparse_target(dilated)),
    (causal, alibi, "score_mod alibi as an additive bias"),
    (None, relative_table, "blocks 100x100, 1 of 1 listed, block_bias with a per-head table of 199 (key - query) "
                           "values), score_mod relative_table"),
])
def test_flex_patterns_export_exactly_and_match_flex_attention(mask_mod, score_mod, target, tmp_path):
    result = export_flex(tmp_path, mask_mod, score_mod)
    assert result.passed, result.report.table()
    assert result.report.reference["runner"] == "pytorch-original"  # flex_attention itself
    assert len(result.converted_calls) == 1 and target in result.converted_calls[0], result.converted_calls


def test_a_wrong_partial_block_conversion_fails_parity(tmp_path, monkeypatch):
    """The parity check catches a mis-converted mask: partial blocks attended in full differ from flex."""
    from attn_export import flex_plan

    layout = flex_plan._tile_layout

    def attend_in_full(*args):
        tiles, tile_of_slot = layout(*args)
        return torch.ones_like(tiles), tile_of_slot

    monkeypatch.setattr(flex_plan, "_tile_layout", attend_in_full)
    result = export_flex(tmp_path, documents)
    assert not result.passed


def test_flex_document_lm_exports_through_the_cli_and_matches_flex(tmp_path):
    result = run("zoo:flex-doc-tiny", "-o", tmp_path, "--atol", "1e-5", "--rtol", "0")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["export"]["custom_nodes"] == {"BlockSparseAttention": 2}
    assert report["reference"]["runner"] == "pytorch-original"
    assert all("partial blocks exact through block_bias" in c for c in report["export"]["converted_calls"])


def test_engines_refuse_a_node_whose_input_the_plugin_does_not_take(tmp_path):
    """block_bias has no TensorRT plugin support yet: exit 3 naming the node, before TensorRT is needed."""
    from attn_export.errors import EXIT_MISSING_DEPENDENCY, AttnExportError
    from attn_export.trt import check_plugin_inputs, plugin_nodes

    assert export_flex(tmp_path / "doc", documents).passed
    with pytest.raises(AttnExportError) as info:
        check_plugin_inputs(plugin_nodes(tmp_path / "doc" / "model.onnx"), "model.onnx")
    assert info.value.exit_code == EXIT_MISSING_DEPENDENCY and "has input block_bias, which the " \
        "BlockSparseAttention TensorRT plugin does not take yet" in str(info.value)
    assert export_flex(tmp_path / "swa", sliding_causal).passed
    check_plugin_inputs(plugin_nodes(tmp_path / "swa" / "model.onnx"))  # NeighborhoodAttention, no rpb: nothing refused


@pytest.mark.parametrize("name", ["flex-swa-tiny", "flex-doc-tiny"])
def test_converted_calls_export_in_fp16(name, tmp_path):
    """--dtype casts a copy of the converted model: the copy's own forward must run (it once ran the fp32 original)."""
    import onnx

    result = run(f"zoo:{name}", "-o", tmp_path, "--dtype", "fp16")
    assert result.exit_code == 0, result.output
    model = onnx.load(tmp_path / "model.onnx")
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    typed = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in [*typed.graph.value_info, *typed.graph.input]}
    types.update({i.name: i.data_type for i in model.graph.initializer})
    for node in (n for n in model.graph.node if n.domain == "attn_export"):
        floats = [types.get(name) for name in (node.input[:3] + node.input[5:])]
        assert floats == [onnx.TensorProto.FLOAT16] * len(floats), (node.name, floats)


# ---------------------------------------------------------------------------------------------
# What a Flex plan cannot follow is refused; what it can, it follows exactly (found in review)


class GatedScore(torch.nn.Module):
    """An additive score_mod whose bias is computed from the input: a constant plan would be wrong."""

    def __init__(self):
        super().__init__()
        self.qkv, self.gate = torch.nn.Linear(16, 48), torch.nn.Linear(16, 1)

    def forward(self, x):
        from torch.nn.attention.flex_attention import flex_attention

        q, k, v = self.qkv(x).unflatten(-1, (3, 2, -1)).permute(2, 0, 3, 1, 4)
        gate = self.gate(x)[..., 0]

        def gated(score, b, h, q_idx, kv_idx):
            return score + gate[b, kv_idx]

        return flex_attention(q, k, v, score_mod=gated).transpose(1, 2).flatten(-2)


def test_a_score_mod_computed_from_the_inputs_is_refused(tmp_path):
    with pytest.raises(ConversionRefused, match="depends on the model's inputs"):
        attn_export.run(GatedScore().eval(), tmp_path, example_inputs=(torch.randn(1, 24, 16),), engine=False)
    assert not (tmp_path / "model.onnx").exists()


def masked_softcap(score, b, h, q, kv):  # a large finite mask value must not hide the cap
    return torch.where(q >= kv, 5.0 * torch.tanh(score / 5.0), -1e9)


def by_batch(score, b, h, q, kv):
    return score + b * 0.5


@pytest.mark.parametrize("score_mod, fragment", [
    (masked_softcap, "score_mod masked_softcap is not additive"),
    (by_batch, "score_mod by_batch depends on the batch index b"),
])
def test_score_mods_the_plan_cannot_follow_are_refused(score_mod, fragment):
    q = torch.randn(1, 2, 40, 8)
    with pytest.raises(ConversionRefused, match=fragment):
        plan_flex(q, q, q, score_mod, None, None, "here")


def test_a_mask_per_sample_is_refused():
    from torch.nn.attention.flex_attention import create_block_mask

    lengths = torch.tensor([30, 40])
    mask = create_block_mask(lambda b, h, q, kv: kv < lengths[b], 2, None, 40, 40, device="cpu", BLOCK_SIZE=16)
    q = torch.randn(2, 2, 40, 8)
    with pytest.raises(ConversionRefused, match="BlockMask has a batch dim of 2"):
        plan_flex(q, q, q, None, mask, None, "here")


def test_biases_keep_one_batch_and_only_the_heads_they_need():
    from attn_export.call_convert import score_bias

    assert score_bias(alibi, (2, 3), 40, 40, "here").shape == (1, 3, 40, 40)
    assert score_bias(lambda s, b, h, q, kv: s - 0.1 * (q - kv).abs(), (2, 3), 40, 40, "here").shape == (1, 1, 40, 40)


def test_masks_are_evaluated_at_the_calls_heads_as_flex_does():
    """A BlockMask built with H=None whose mask_mod reads h: flex evaluates it per head, so must we."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    def per_head_window(b, h, q, kv):
        return (q - kv).abs() <= 2 + 3 * h

    mask = create_block_mask(per_head_window, None, None, 50, 50, device="cpu", BLOCK_SIZE=16)
    q, k, v = torch.randn(3, 1, 2, 50, 8).unbind(0)
    plan = plan_flex(q, k, v, None, mask, None, "here")
    torch.testing.assert_close(run_plan(plan, q, k, v, None), flex_attention(q, k, v, block_mask=mask), atol=1e-5,
                               rtol=0)


def test_a_score_mod_alone_on_a_short_sequence_uses_one_block_of_its_length():
    q = torch.randn(1, 2, 40, 8)
    plan = plan_flex(q, q, q, alibi, None, None, "here")
    assert (plan["block_q"], plan["block_kv"]) == (40, 40) and plan["bias_table"].shape == (1, 2, 79)
    assert block_bias(plan, torch.float32).shape == (1, 2, 1, 1, 40, 40)


def test_a_checkpoint_calling_natten_na2d_exports_through_the_cli(tmp_path):
    pytest.importorskip("natten", reason="NATTEN not installed")
    checkpoint, factory = factory_checkpoint(tmp_path, (
        "import natten\n"
        "import torch\n"
        "class Image(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.qkv = torch.nn.Linear(16, 48)\n"
        "    def forward(self, x):\n"
        "        q, k, v = self.qkv(x).unflatten(-1, (3, 2, -1)).unbind(-3)\n"
        "        return natten.na2d(q, k, v, kernel_size=3, dilation=2).flatten(-2)\n"
        "def build():\n"
        "    torch.manual_seed(0)\n"
        "    return Image()\n"))
    with warnings.catch_warnings(record=True) as caught:  # what reaches the user's terminal
        warnings.simplefilter("always")
        result = run(checkpoint, "--factory", factory, "--input-shape", "x=1x9x10x16", "-o", tmp_path / "out",
                     "--atol", "1e-5", "--rtol", "0")
    assert result.exit_code == 0, result.output
    # NATTEN's own use of flex_attention's deprecated return_lse is not the user's business
    assert not [w for w in caught if "return_lse" in str(w.message)], [str(w.message) for w in caught]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["export"]["custom_nodes"] == {"NeighborhoodAttention": 1}
    assert report["reference"]["runner"] == "pytorch-original"  # NATTEN itself
    assert report["export"]["converted_calls"] == [
        "natten.na2d at factory.py:9 -> attn_export::neighborhood_attention"]


def test_one_partial_block_is_named_in_the_singular():
    from torch.nn.attention.flex_attention import create_block_mask

    def all_but_one(b, h, q_idx, kv_idx):
        return (q_idx != 0) | (kv_idx != 0)  # one masked element: block (0, 0) partial, the other three full

    q = torch.randn(1, 2, 64, 8)
    block_mask = create_block_mask(all_but_one, None, None, 64, 64, device="cpu", BLOCK_SIZE=32)
    target = plan_flex(q, q, q, None, block_mask, None, "here")["target"]
    assert "4 of 4 listed, 1 partial block exact through block_bias" in target, target


# ---------------------------------------------------------------------------------------------
# BlockMasks built inside forward (create_block_mask per call, the common FlexAttention pattern)


class MaskInForward(FlexCall):
    """FlexCall with its BlockMask built on every forward pass: from positions and a buffer ("buffer"), from the
    model's input ("input"), or through an attribute the converter cannot swap ("attribute")."""

    def __init__(self, how: str):
        super().__init__()
        from torch.nn.attention.flex_attention import create_block_mask

        self.how, self.factory = how, create_block_mask
        self.register_buffer("docs", DOCS.clone())

    def forward(self, x):
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        docs = self.docs if self.how != "input" else (x[0, :, 0] > 0).long().cumsum(0)  # doc ids from the input
        make = self.factory if self.how == "attribute" else create_block_mask

        def same_document(b, h, q, kv):
            return docs[q] == docs[kv]

        block_mask = make(same_document, None, None, x.shape[1], x.shape[1], device="cpu", BLOCK_SIZE=BLOCK)
        q, k, v = self.qkv(x).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)
        out = flex_attention(q, k, v, block_mask=block_mask)
        return self.proj(out.transpose(1, 2).flatten(-2))


def test_a_block_mask_built_in_forward_converts_like_one_built_in_init(tmp_path):
    torch.manual_seed(0)
    model = MaskInForward("buffer").eval()
    result = attn_export.run(model, tmp_path / "forward", example_inputs=(torch.randn(1, LENGTH, 16),), engine=False,
                             tolerances=attn_export.parity.Tolerances(atol=1e-5, rtol=0))
    assert result.passed, result.report.table()
    assert result.report.reference["runner"] == "pytorch-original"  # flex_attention itself, mask built per call
    (call,) = result.converted_calls
    assert "(BlockMask built at test_call_convert.py:" in call and block_sparse_target(documents) in call, call
    in_init = export_flex(tmp_path / "init", documents)  # the same weights, the mask built once in __init__
    assert in_init.converted_calls[0].split(" -> ")[1] == call.split(" -> ")[1]
    import onnx

    def constants(path):
        return sorted(onnx.numpy_helper.to_array(t).tobytes() for t in onnx.load(path).graph.initializer)

    assert constants(result.onnx_path) == constants(in_init.onnx_path)  # the same layout and bias, bit for bit


@pytest.mark.parametrize("how, fragments", [
    ("input", ["flex_attention at test_call_convert.py:", "(its BlockMask is built in forward by create_block_mask at "
               "test_call_convert.py:", "depends on the model's inputs", "compute it from positions, shapes"]),
    ("attribute", ["flex_attention at test_call_convert.py:", "its BlockMask is built anew on every forward pass by "
                   "code the converter cannot replace", "call create_block_mask by name inside forward"]),
])
def test_block_masks_built_in_forward_that_cannot_convert_are_named(tmp_path, how, fragments):
    factory = (f"import torch\nfrom test_call_convert import MaskInForward\n"
               f"def build():\n    torch.manual_seed(0)\n    return MaskInForward({how!r}).eval()\n")
    (tmp_path / "factory.py").write_text(factory)
    torch.save(MaskInForward(how).state_dict(), tmp_path / "model.pt")
    result = run(tmp_path / "model.pt", "--factory", f"{tmp_path / 'factory.py'}:build", "--input-shape",
                 f"x=1x{LENGTH}x16", "-o", tmp_path / "out")
    assert_one_line_error(result, 2, fragments[0])
    line = next(ln for ln in result.stderr.splitlines() if ln.startswith("error:"))
    assert all(fragment in line for fragment in fragments[1:]), line
    assert "aten.sort" not in line and "--static" not in line
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# Large FlexAttention biases: planned in chunks, a (key - query) bias stored as a per-head table


class AlibiLM(torch.nn.Module):
    """Causal attention with ALiBi slopes per head, as LMs write it with flex_attention."""

    def __init__(self, length: int, heads: int = 8, dim: int = 64):
        super().__init__()
        from torch.nn.attention.flex_attention import create_block_mask

        self.heads = heads
        self.qkv, self.proj = torch.nn.Linear(dim, 3 * dim), torch.nn.Linear(dim, dim)
        self.register_buffer("slopes", 2.0 ** (-8.0 * torch.arange(1, heads + 1) / heads))
        self.block_mask = create_block_mask(causal, None, None, length, length, device="cpu")

    def forward(self, x):
        from torch.nn.attention.flex_attention import flex_attention

        slopes = self.slopes

        def alibi_slopes(score, b, h, q, kv):
            return score + slopes[h] * (kv - q)

        q, k, v = self.qkv(x).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)
        out = flex_attention(q, k, v, score_mod=alibi_slopes, block_mask=self.block_mask)
        return self.proj(out.transpose(1, 2).flatten(-2))


@pytest.mark.slow
def test_alibi_at_2048_tokens_and_8_heads_exports_with_a_per_head_table(tmp_path):
    import onnx

    torch.manual_seed(0)
    length = 2048
    result = attn_export.run(AlibiLM(length).eval(), tmp_path, example_inputs=(torch.randn(1, length, 64),),
                             engine=False, tolerances=attn_export.parity.Tolerances(atol=1e-5, rtol=0))
    assert result.passed, result.report.table()
    (call,) = result.converted_calls
    assert "16 partial blocks exact through block_bias with a per-head table of 4095 (key - query) values" in call
    largest = max(onnx.numpy_helper.to_array(t).nbytes for t in onnx.load(tmp_path / "model.onnx").graph.initializer)
    assert largest < 1 << 20, largest  # a dense bias would be 8 x 2048 x 2048 floats: 128 MB


def quadratic(score, b, h, q, kv):  # depends on q and kv, not on kv - q alone
    return score + 1e-3 * ((q * kv) % 17) * (h + 1)


@pytest.mark.parametrize("mask_mod, score_mod", [(documents, alibi), (sliding, quadratic), (None, relative_table)])
def test_planning_in_chunks_gives_the_plan_of_one_pass(monkeypatch, mask_mod, score_mod):
    """Chunks of one query-block row give exactly the plan evaluated in one chunk, and it runs as flex does."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    from attn_export import flex_plan

    block_mask = None if mask_mod is None else create_block_mask(mask_mod, None, None, LENGTH, LENGTH, device="cpu",
                                                                 BLOCK_SIZE=BLOCK)
    q, k, v = torch.randn(3, 1, 2, LENGTH, 8, generator=torch.Generator().manual_seed(1)).unbind(0)
    whole = plan_flex(q, k, v, score_mod, block_mask, None, "here")
    monkeypatch.setattr(flex_plan, "_CHUNK_ELEMENTS", 1)  # one row of query blocks per chunk
    chunked = plan_flex(q, k, v, score_mod, block_mask, None, "here")
    assert whole.keys() == chunked.keys()
    for name, value in whole.items():
        assert torch.equal(value, chunked[name]) if isinstance(value, torch.Tensor) else value == chunked[name], name
    torch.testing.assert_close(run_plan(chunked, q, k, v, None),
                               flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask), atol=1e-5, rtol=0)
    assert (chunked["bias_table"] is None) == (score_mod is quadratic)  # a (key - query) bias travels as a table


def test_a_dense_bias_beyond_the_limit_is_refused_naming_the_call(monkeypatch):
    from attn_export import flex_plan

    q = torch.randn(1, 2, 64, 8)
    monkeypatch.setattr(flex_plan, "_BIAS_BYTES", 16 << 10)  # 2 heads x 64 x 64 floats = 32 KB
    with pytest.raises(ConversionRefused, match="flex_attention at here: its score_mod quadratic is not a function of "
                                                "key - query alone, so its bias would be stored dense"):
        plan_flex(q, q, q, quadratic, None, None, "here")
    assert plan_flex(q, q, q, alibi, None, None, "here")["bias_table"].shape == (1, 2, 127)  # a table: no limit hit
