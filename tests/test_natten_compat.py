"""NATTEN compatibility: our op and layers against NATTEN itself (its Flex backend runs on the CPU).

Skipped where NATTEN is absent; .ci/run installs it (`pip install --no-build-isolation natten`, which
builds without its CUDA library).
"""

from __future__ import annotations

import copy
import random

import pytest
import torch

natten = pytest.importorskip("natten", reason="NATTEN not installed: pip install --no-build-isolation natten")

from attn_export.convert import convert_modules  # noqa: E402
from attn_export.models import NeighborhoodAttention2D, neighborhood_attention  # noqa: E402

from helpers import build_natten_net  # noqa: E402
from oracle import make_inputs, neighborhood_attention_reference, random_config  # noqa: E402

ATOL = 1e-4  # NATTEN's Flex backend (fp32, eager) vs our fp32 op


def natten_configs(count: int) -> list[dict]:
    """Random configs that NATTEN runs as neighborhood attention (it treats a kernel equal to the
    whole input as plain self attention, for which it has no CPU backend) with Flex's head dims."""
    configs, seed = [], 0
    while len(configs) < count:
        cfg = random_config(random.Random(5000 + seed))
        seed += 1
        if all(k == n for k, n in zip(cfg["kernel"], cfg["spatial"])):
            continue
        configs.append(dict(cfg, rpb=False, dim=random.Random(seed).choice([8, 16, 32])))
    return configs


N_CONFIGS = 40


def test_natten_configs_cover_the_combinations():
    configs = natten_configs(N_CONFIGS)

    def count(pred):
        return sum(any(pred(*axis) for axis in zip(c["kernel"], c["stride"], c["dilation"], c["causal"]))
                   for c in configs)

    assert all(sum(len(c["spatial"]) == r for c in configs) >= 5 for r in (1, 2, 3))
    assert count(lambda k, s, d, causal: causal and s > 1) >= 5
    assert count(lambda k, s, d, causal: causal and d > 1) >= 5
    assert count(lambda k, s, d, causal: s > 1 and d > 1) >= 5
    assert count(lambda k, s, d, causal: k % 2 == 0) >= 10


@pytest.mark.parametrize("cfg", natten_configs(N_CONFIGS), ids=lambda c: f"{len(c['spatial'])}d-k{c['kernel']}")
def test_op_matches_natten(cfg):
    q, k, v, _ = make_inputs(cfg, 0)
    args = dict(kernel_size=tuple(cfg["kernel"]), stride=tuple(cfg["stride"]), dilation=tuple(cfg["dilation"]),
                is_causal=tuple(cfg["causal"]))
    want = natten.functional.neighborhood_attention_generic(q, k, v, backend="flex-fna", **args)
    torch.testing.assert_close(neighborhood_attention(q, k, v, **args), want, atol=ATOL, rtol=0)


def test_converted_natten_modules_give_natten_outputs():
    model = build_natten_net()
    inputs = (torch.randn(2, 20, 32), torch.randn(2, 9, 10, 32), torch.randn(2, 4, 6, 5, 32))
    with torch.no_grad():
        want = model(*inputs)
    converted, lines = convert_modules(copy.deepcopy(model))
    assert len(lines) == 3 and any(ln.startswith("image.0: natten.modules.NeighborhoodAttention2D") for ln in lines)
    assert not any(type(m).__module__.startswith("natten") for m in converted.modules())
    with torch.no_grad():
        got = converted(*inputs)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=ATOL, rtol=0)


def test_cli_exports_a_natten_checkpoint(tmp_path):
    import json

    from click.testing import CliRunner

    from attn_export.cli import main

    torch.save(build_natten_net().state_dict(), tmp_path / "natten.pt")
    result = CliRunner().invoke(main, [
        str(tmp_path / "natten.pt"), "--factory", "helpers:build_natten_net", "-o", str(tmp_path / "out"),
        "--input-shape", "seq=1x20x32", "--input-shape", "image=1x9x10x32", "--input-shape", "video=1x4x6x5x32"])
    assert result.exit_code == 0, result.output
    assert "converted seq: natten.modules.NeighborhoodAttention1D" in result.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["status"] == "pass"
    assert len(report["export"]["converted_modules"]) == 3
    assert report["export"]["custom_nodes"] == {"NeighborhoodAttention": 3}


class LegacyNeighborhoodAttention2D(torch.nn.Module):
    """The attribute layout of NATTEN < 0.20 modules, which carried a relative position bias."""

    def __init__(self, dim, num_heads, kernel_size, dilation=1):
        super().__init__()
        self.num_heads, self.kernel_size, self.dilation = num_heads, kernel_size, dilation
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.proj = torch.nn.Linear(dim, dim)
        self.rpb = torch.nn.Parameter(torch.randn(num_heads, 2 * kernel_size - 1, 2 * kernel_size - 1))


LegacyNeighborhoodAttention2D.__module__ = "natten.natten2d"
LegacyNeighborhoodAttention2D.__name__ = "NeighborhoodAttention2D"


def test_legacy_modules_keep_their_relative_position_bias():
    torch.manual_seed(0)
    legacy = LegacyNeighborhoodAttention2D(16, 2, 3, dilation=2)
    converted, lines = convert_modules(legacy)
    assert isinstance(converted, NeighborhoodAttention2D) and lines[0].startswith("<model>: natten.natten2d")
    assert torch.equal(converted.rpb, legacy.rpb)
    x = torch.randn(1, 8, 7, 16)
    q, k, v = legacy.qkv(x).unflatten(-1, (3, 2, 8)).unbind(-3)
    attn = neighborhood_attention_reference(q, k, v, (3, 3), (1, 1), (2, 2), (False, False), rpb=legacy.rpb)
    want = legacy.proj(attn.float().flatten(-2))
    torch.testing.assert_close(converted(x), want, atol=1e-5, rtol=0)


def test_parity_reference_is_the_original_natten_model_so_a_wrong_conversion_fails(tmp_path, monkeypatch):
    import json

    from click.testing import CliRunner

    from attn_export import convert
    from attn_export.cli import main

    torch.save(build_natten_net().state_dict(), tmp_path / "natten.pt")
    args = [str(tmp_path / "natten.pt"), "--factory", "helpers:build_natten_net", "--input-shape", "seq=1x20x32",
            "--input-shape", "image=1x9x10x32", "--input-shape", "video=1x4x6x5x32"]
    good = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "good")])
    assert good.exit_code == 0, good.output
    report = json.loads((tmp_path / "good" / "report.json").read_text())
    assert report["reference"]["runner"] == "pytorch-original"
    assert "pytorch-original vs onnxruntime-cpu" in good.output

    def slightly_wrong(module):  # a converter bug: the output projection's bias is off by 1e-2
        layer = convert._from_natten(module)
        with torch.no_grad():
            layer.proj.bias += 1e-2
        return layer

    monkeypatch.setattr(convert, "CONVERTERS", (convert.Converter("natten", convert._is_natten_na, slightly_wrong),))
    bad = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "bad")])
    assert bad.exit_code == 1, bad.output
    assert json.loads((tmp_path / "bad" / "report.json").read_text())["status"] == "fail"
