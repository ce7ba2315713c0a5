"""Issue 25's model: a small neighborhood-attention ViT for raw 0-255 MNIST digits, as a user writes it with
``natten.NeighborhoodAttention2D`` (normalization inside the model, a conv stem, 3 NA blocks, a linear head).

NATTEN's CPU path cannot train (FlexAttention has no CPU backward), so training uses attn_export's own
NeighborhoodAttention2D, which has the same qkv / proj weights; ``build()`` (the ``--factory`` entry point)
builds the NATTEN variant when NATTEN is installed and loads the same state dict, so an export goes through
attn-export's NATTEN conversion exactly as the issue's did.

Train (seeded, CPU, a few minutes) and write ``bench/weights/mnist_navit.pt``:

    python bench/mnist_navit.py [--epochs 12]

Export as the issue did:

    attn-export bench/weights/mnist_navit.pt --factory bench/mnist_navit.py:build --int8 \\
        --calib-method entropy --calib-data calib.npy
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

WEIGHTS = Path(__file__).resolve().parent / "weights" / "mnist_navit.pt"
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def _attention(dim: int, heads: int, kernel: int, use_natten: bool) -> nn.Module:
    if use_natten:
        import natten

        return natten.NeighborhoodAttention2D(embed_dim=dim, num_heads=heads, kernel_size=kernel)
    from attn_export.models.layers import NeighborhoodAttention2D

    return NeighborhoodAttention2D(dim, heads, kernel)


class MaskedTrainingAttention(nn.Module):
    """The same attention for training only: dense SDPA with the neighborhood as a boolean mask (7x7 tokens,
    so 49 x 49), several times faster to train on the CPU than the gathered reference; same qkv / proj."""

    def __init__(self, layer: nn.Module, tokens: tuple[int, int] = (7, 7)):
        super().__init__()
        from attn_export.models.neighborhood import neighborhood_index

        self.qkv, self.proj, self.heads, self.scale = layer.qkv, layer.proj, layer.num_heads, layer.scale
        keys = neighborhood_index(tokens, layer.params)[0]  # [N, K] flat key index per query
        mask = torch.zeros(keys.shape[0], keys.shape[0], dtype=torch.bool)
        mask[torch.arange(keys.shape[0])[:, None], keys] = True
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, dim = x.shape
        qkv = self.qkv(x).reshape(batch, height * width, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        out = nn.functional.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=self.mask,
                                                         scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(batch, height, width, dim))


class Block(nn.Module):
    """Pre-norm transformer block over channels-last tokens [B, H, W, C]."""

    def __init__(self, dim: int, heads: int, kernel: int, use_natten: bool):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = _attention(dim, heads, kernel, use_natten)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class MnistNAViT(nn.Module):
    """[B, 1, 28, 28] raw pixels -> 10 logits. Conv stem to 7x7 tokens, 3 NA blocks (kernel 5), mean pool."""

    def __init__(self, dim: int = 64, heads: int = 4, kernel: int = 5, depth: int = 3, use_natten: bool = False):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, dim // 2, 3, stride=2, padding=1), nn.GELU(),
                                  nn.Conv2d(dim // 2, dim, 3, stride=2, padding=1))
        self.blocks = nn.Sequential(*(Block(dim, heads, kernel, use_natten) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images / 255.0 - MNIST_MEAN) / MNIST_STD
        x = self.blocks(self.stem(x).permute(0, 2, 3, 1))
        return self.head(self.norm(x).mean(dim=(1, 2)))


def _natten_available() -> bool:
    try:
        import natten  # noqa: F401
    except ImportError:
        return False
    return True


def build() -> tuple[nn.Module, tuple[torch.Tensor]]:
    """The --factory entry point: the NATTEN model (attn_export's layers without NATTEN), eval mode."""
    model = MnistNAViT(use_natten=_natten_available()).eval()
    return model, (torch.zeros(1, 1, 28, 28),)


def trained(use_natten: bool = False) -> MnistNAViT:
    model = MnistNAViT(use_natten=use_natten)
    model.load_state_dict(torch.load(WEIGHTS, weights_only=True))
    return model.eval()


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray, batch: int = 250) -> float:
    with torch.inference_mode():
        predictions = np.concatenate([model(torch.from_numpy(x[i:i + batch])).argmax(1).numpy()
                                      for i in range(0, len(x), batch)])
    return 100.0 * float((predictions == y).mean())


def train(epochs: int, seed: int = 0, batch: int = 64, lr: float = 3e-3) -> MnistNAViT:
    from attn_export.models.mnist import load_split

    torch.manual_seed(seed)
    x_train, x_test, y_train, y_test = load_split()
    model = MnistNAViT()
    for block in model.blocks:
        block.attn = MaskedTrainingAttention(block.attn)  # shares its parameters: the state dict is unchanged
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    steps = epochs * -(-len(x_train) // batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    rng, start = np.random.default_rng(seed), time.time()
    for epoch in range(epochs):
        model.train()
        order = rng.permutation(len(x_train))
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            loss = nn.functional.cross_entropy(model(torch.from_numpy(x_train[idx])), torch.from_numpy(y_train[idx]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        print(f"epoch {epoch + 1}: loss {loss.item():.3f}, held-out top-1 "
              f"{accuracy(model.eval(), x_test, y_test):.2f}% ({time.time() - start:.0f} s)", flush=True)
    return model.eval()


def main() -> None:
    from attn_export.models.mnist import load_split

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model = train(args.epochs, args.seed)
    WEIGHTS.parent.mkdir(exist_ok=True)
    torch.save(model.state_dict(), WEIGHTS)
    x_test, y_test = load_split()[1::2]
    print(f"wrote {WEIGHTS} ({WEIGHTS.stat().st_size / 1e3:.0f} kB); held-out top-1 with the neighborhood "
          f"attention op: {accuracy(trained(), x_test, y_test):.2f}%")


if __name__ == "__main__":
    main()
