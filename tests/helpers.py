"""Helpers the test modules share (tests never import one another): the CLI runner and its one-line-error
check, the console script, small models that --factory and pickles can name (``helpers:build_tiny``), and the
random block-sparse cases."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import onnx
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper

from attn_export.cli import main
from attn_export.models import NeighborhoodAttention1D, NeighborhoodAttention2D
from attn_export.models import block_layout as layout
from attn_export.models.block_sparse import num_blocks
from attn_export.onnx_export import DEFAULT_OPSET, attach_local_functions
from attn_export.registry import DOMAIN, NEIGHBORHOOD

SMALL = "zoo:na1d-causal"  # the fastest zoo model


def run(*args, cwd=None):
    runner = CliRunner()
    if cwd is None:
        return runner.invoke(main, list(map(str, args)))
    old = os.getcwd()
    os.chdir(cwd)
    try:
        return runner.invoke(main, list(map(str, args)))
    finally:
        os.chdir(old)


def assert_one_line_error(result, code: int, fragment: str):
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, result.stderr
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.output


class TinyModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = NeighborhoodAttention1D(16, 2, 5)

    def forward(self, x):
        return self.attn(x)


def build_tiny():
    torch.manual_seed(1)
    return TinyModel().eval()


def console(*args, cwd=None, env=None):
    """The installed console script (not `python -m`, whose sys.path differs), as a user runs it."""
    exe = Path(sys.executable).with_name("attn-export")
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=300, cwd=cwd, env=env)


class Small(torch.nn.Module):
    """Conv -> NA (Linear qkv/proj inside) -> Linear head: every quantizable op kind, and a custom node."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.attn = NeighborhoodAttention2D(16, 2, 3)
        self.head = torch.nn.Linear(16, 5)

    def forward(self, x):
        y = self.attn(self.conv(x).permute(0, 2, 3, 1))
        return self.head(y.mean(dim=(1, 2)))


def na_single_node_model(cfg: dict, dtype=TensorProto.FLOAT, scale: float | None = None,
                         opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """A graph holding one NeighborhoodAttention node (config as tests/oracle.py's random_config), every
    dimension symbolic, its local function attached as the exporter does."""
    rank = len(cfg["spatial"])
    names = ["q", "k", "v"] + (["rpb"] if cfg["rpb"] else [])
    sym = ["batch"] + [f"s{i}" for i in range(rank)] + ["heads", "dim"]
    inputs = [helper.make_tensor_value_info(n, dtype, sym) for n in names[:3]]
    if cfg["rpb"]:
        inputs.append(helper.make_tensor_value_info("rpb", dtype, ["heads"] + [f"r{i}" for i in range(rank)]))
    node = helper.make_node(
        NEIGHBORHOOD.onnx_op_type, names, ["out"], domain=DOMAIN,
        kernel_size=cfg["kernel"], stride=cfg["stride"], dilation=cfg["dilation"],
        is_causal=[int(c) for c in cfg["causal"]], scale=cfg["dim"] ** -0.5 if scale is None else scale,
        plugin_version="1", plugin_namespace=DOMAIN)
    graph = helper.make_graph([node], "na", inputs, [helper.make_tensor_value_info("out", dtype, sym)])
    return attach_local_functions(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))


def random_layout(rng: random.Random, lead_b: int, lead_h: int, n_qb: int, n_kvb: int, density: float):
    mask = torch.rand(lead_b, lead_h, n_qb, n_kvb, generator=torch.Generator().manual_seed(rng.randint(0, 10**6)))
    mask = mask < density
    extra = rng.randint(0, 2)  # max_blocks wider than needed: -1 padding beyond the counts
    return layout.from_block_mask(mask, max_blocks=int(mask.sum(-1).max()) + extra)


def random_case(seed: int):
    rng = random.Random(seed)
    batch, heads, dim = rng.randint(1, 2), rng.randint(1, 3), rng.choice([4, 8, 16])
    block_q, block_kv = rng.choice([1, 3, 4, 8, 16]), rng.choice([1, 2, 5, 8, 16])
    sq, skv = rng.randint(1, 70), rng.randint(1, 70)
    lead_b = rng.choice([1, batch])
    lead_h = rng.choice([1, heads])
    count, index = random_layout(rng, lead_b, lead_h, num_blocks(sq, block_q), num_blocks(skv, block_kv),
                                 rng.choice([0.0, 0.2, 0.5, 1.0]))
    if rng.random() < 0.5 and lead_b == 1:  # broadcast kv_count and kv_index independently
        count = count[:, :1].contiguous() if bool((count == count[:, :1]).all()) else count
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, sq, dim, generator=gen)
    k = torch.randn(batch, heads, skv, dim, generator=gen)
    v = torch.randn(batch, heads, skv, dim, generator=gen)
    scale = rng.choice([None, 0.7])
    return q, k, v, count, index, block_q, block_kv, scale


def factory_checkpoint(folder: Path, source: str, name: str = "factory") -> tuple[Path, str]:
    """A checkpoint as users bring one: ``folder/name.py`` with ``build()`` (the model, or (model, inputs)) and
    ``folder/name.pt``, its state dict. Returns the checkpoint and the --factory argument."""
    module = folder / f"{name}.py"
    module.write_text(source)
    namespace: dict = {}
    exec(compile(source, str(module), "exec"), namespace)
    built = namespace["build"]()
    checkpoint = folder / f"{name}.pt"
    torch.save((built[0] if isinstance(built, tuple) else built).state_dict(), checkpoint)
    return checkpoint, f"{module}:build"


def random_block_bias(seed: int, q, count, index, block_q: int, block_kv: int, masked: float = 0.3):
    """A block_bias for random_case's layout: normal values, a share of -inf (single masked keys), and, when
    the layout has listed slots, one query row masked in every slot (it must output zeros)."""
    gen = torch.Generator().manual_seed(seed)
    lead = (count.shape[0] if torch.rand(1, generator=gen) < 0.5 else q.shape[0], index.shape[1])
    shape = (*lead, index.shape[2], index.shape[3], block_q, block_kv)
    bias = torch.randn(shape, generator=gen)
    bias = bias.masked_fill(torch.rand(shape, generator=gen) < masked, float("-inf"))
    if bias.shape[3]:
        bias[..., 0, :, 0, :] = float("-inf")  # the first query of row block 0: no key left
    return bias


class NattenNet(torch.nn.Module):
    """NATTEN's modules in 1-D (causal), 2-D (dilated) and 3-D (strided); needs NATTEN installed."""

    def __init__(self):
        super().__init__()
        import natten

        self.seq = natten.NeighborhoodAttention1D(32, 2, 5, is_causal=True)
        self.image = torch.nn.Sequential(natten.NeighborhoodAttention2D(32, 4, 3, dilation=2), torch.nn.GELU())
        self.video = natten.NeighborhoodAttention3D(32, 2, (2, 3, 3), stride=(1, 2, 1))

    def forward(self, seq, image, video):
        return self.seq(seq), self.image(image), self.video(video)


def build_natten_net():
    torch.manual_seed(0)
    return NattenNet().eval()


class GpuOnlyAttention(torch.nn.Module):
    """A third-party layer whose own forward cannot run on this machine (a CUDA-only kernel)."""

    def __init__(self):
        super().__init__()
        self.inner = NeighborhoodAttention1D(16, 2, 5)

    def forward(self, x):
        raise RuntimeError("this kernel needs a CUDA device")


class WrapsGpuOnly(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = GpuOnlyAttention()

    def forward(self, x):
        return self.attn(x)


def build_gpu_only():
    torch.manual_seed(1)
    return WrapsGpuOnly().eval()


class SdpaGridModel(torch.nn.Module):
    """A user's model as PARO meets it: tokens [B, 2 + 2*4*4, 32] through two attention layers that call
    F.scaled_dot_product_attention (RoPE'd q/k whose biases make the heads local, as trained video models
    are), and one call PARO must leave alone (cross-attention to 3 memory tokens)."""

    grid, prefix = (2, 4, 4), 2

    def __init__(self):
        super().__init__()
        from attn_export.models.layers import ParoAttention

        self.layers = torch.nn.ModuleList(ParoAttention(32, 2, self.grid, self.prefix) for _ in range(2))
        self.memory = torch.nn.Parameter(torch.randn(1, 2, 3, 16))
        with torch.no_grad():
            for layer in self.layers:
                layer.qkv.bias[:64].fill_(2.0)  # q and k: strong positional terms on every RoPE pair

    def forward(self, tokens):
        for layer in self.layers:
            tokens = tokens + layer(tokens)
        q = tokens.reshape(tokens.shape[0], -1, 2, 16).transpose(1, 2)
        memory = self.memory.expand(tokens.shape[0], -1, -1, -1)
        cross = torch.nn.functional.scaled_dot_product_attention(q, memory, memory)
        return tokens + cross.transpose(1, 2).reshape(tokens.shape)


def build_sdpa_grid_model():
    torch.manual_seed(2)
    return SdpaGridModel().eval(), (torch.randn(1, 34, 32),)


class NoAttention(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(8, 8)

    def forward(self, x):
        return self.linear(x)


def build_no_attention():
    torch.manual_seed(0)
    return NoAttention().eval(), (torch.randn(1, 10, 8),)
