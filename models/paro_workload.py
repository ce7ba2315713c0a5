"""A PARO workload with known answers: heads whose attention pattern is set by token positions.

With grid coordinates x = (f, h, w) and per-axis widths sigma, the logits
``s_ij = -sum_a (x_ia - x_ja)^2 / (2 sigma_a^2)`` come from ``q = [x / sigma^2, 1, c]`` and
``k = [x, -|x / sigma|^2 / 2, c]`` (the row constant cancels in the softmax). Small content terms ``c`` come
from real images (scikit-image's sample images, a shifted crop per frame). A temporal head (wide along F)
must pick an order with F innermost, a vertical one H innermost, a horizontal one W innermost; a local head
may pick any; a uniform head and a prefix-sink head complete the set. Logits are meant unscaled
(``scale=1``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from attn_export import lazy

# per-axis widths (F, H, W) of the positional heads
HEAD_SIGMAS = {
    "temporal": (6.0, 0.35, 0.35),
    "vertical": (0.35, 6.0, 0.35),
    "horizontal": (0.35, 0.35, 6.0),
    "local": (1.0, 1.5, 1.5),
}
HEADS = (*HEAD_SIGMAS, "uniform", "sink")
# which grid axis each positional head must put innermost (the orders that do, by name)
INNERMOST = {"temporal": ("HWF", "WHF"), "vertical": ("FWH", "WFH"), "horizontal": ("FHW", "HFW")}
_IMAGES = ("camera", "astronaut", "coffee", "chelsea", "moon", "coins", "rocket", "brick")
_FAR = -1e3  # a logit that no softmax keeps
_SINK = 6.0  # how strongly the sink head prefers the prefix


def grid_coordinates(grid: Sequence[int]) -> torch.Tensor:
    """``[F*H*W, 3]`` float (f, h, w) of each grid token in row-major order."""
    axes = [torch.arange(n, dtype=torch.float32) for n in grid]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)


def image_content(grid: Sequence[int], sample: int, channels: int = 2) -> torch.Tensor:
    """``[F*H*W, channels]``: intensity and horizontal gradient of a scikit-image sample image, a crop shifted
    per frame (a panning camera), resized to H x W and standardized. Sample s uses image s mod 8."""
    image = np.asarray(getattr(lazy.skimage_data, _IMAGES[sample % len(_IMAGES)])(), dtype=np.float32)
    image = torch.from_numpy(image.mean(axis=-1) if image.ndim == 3 else image)
    frames, height, width = grid
    crop = min(image.shape) * 3 // 4
    frames_out = []
    for f in range(frames):
        shift = (f * (min(image.shape) - crop)) // max(1, frames - 1) if frames > 1 else 0
        window = image[shift:shift + crop, shift:shift + crop][None, None]
        frames_out.append(torch.nn.functional.interpolate(window, size=(height, width), mode="bilinear",
                                                          align_corners=False)[0, 0])
    video = torch.stack(frames_out)  # [F, H, W]
    gradient = torch.zeros_like(video)
    gradient[..., 1:] = video[..., 1:] - video[..., :-1]
    features = torch.stack([video, gradient], dim=-1).reshape(-1, 2)[:, :channels]
    return (features - features.mean(0)) / features.std(0).clamp_min(1e-6)


def positional_qk(grid: Sequence[int], prefix: int, head: str, content: torch.Tensor | None = None,
                  content_scale: float = 0.3, dim: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """One head's q, k ``[prefix + F*H*W, dim]`` (see the module docstring); prefix tokens first."""
    coords = grid_coordinates(grid)
    n_grid = coords.shape[0]
    c = torch.zeros(n_grid, 2) if content is None else content * content_scale
    if head in HEAD_SIGMAS:
        sigma = torch.tensor(HEAD_SIGMAS[head])
        q_grid = torch.cat([coords / sigma**2, torch.ones(n_grid, 1), c], dim=1)
        k_grid = torch.cat([coords, -((coords / sigma) ** 2).sum(1, keepdim=True) / 2, c], dim=1)
    elif head == "uniform":
        q_grid = torch.zeros(n_grid, 6)
        k_grid = torch.cat([coords, torch.zeros(n_grid, 1), c], dim=1)
    elif head == "sink":  # every query prefers the prefix keys, by _SINK over its own (local) neighbours
        sigma = torch.tensor(HEAD_SIGMAS["local"])
        q_grid = torch.cat([coords / sigma**2, torch.ones(n_grid, 1), c], dim=1)
        k_grid = torch.cat([coords, -((coords / sigma) ** 2).sum(1, keepdim=True) / 2, c], dim=1)
    else:
        raise ValueError(f"unknown workload head {head!r}; choose from {HEADS}")
    # Prefix tokens: their queries attend everything evenly; their keys are ignored (logit _FAR), except by
    # the sink head, whose queries carry their own best grid logit in channel 6 so that every prefix key
    # beats every grid key by _SINK.
    q_prefix, k_prefix = torch.zeros(prefix, 7), torch.zeros(prefix, 7)
    q_grid, k_grid = (torch.nn.functional.pad(x, (0, 1)) for x in (q_grid, k_grid))
    if head == "sink":
        q_grid[:, 6] = (q_grid[:, :3] * k_grid[:, :3]).sum(1) + k_grid[:, 3] + _SINK
        k_prefix[:, 6] = 1.0
    else:
        k_prefix[:, 3] = _FAR
    q = torch.nn.functional.pad(torch.cat([q_prefix, q_grid]), (0, dim - 7))
    k = torch.nn.functional.pad(torch.cat([k_prefix, k_grid]), (0, dim - 7))
    return q, k


def workload(grid: Sequence[int], prefix: int = 0, samples: int = 4, heads: Sequence[str] = HEADS,
             seed: int = 0, dim: int = 8) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per head name: q, k, v ``[samples, N, dim]``; content terms from sample images (sample s: image s + seed),
    v seeded random."""
    n = prefix + math.prod(grid)
    generator = torch.Generator().manual_seed(seed)
    contents = [image_content(grid, s + seed) for s in range(samples)]
    result = {}
    for head in heads:
        pairs = [positional_qk(grid, prefix, head, content, dim=dim) for content in contents]
        q = torch.stack([p[0] for p in pairs])
        k = torch.stack([p[1] for p in pairs])
        result[head] = (q, k, torch.randn(samples, n, dim, generator=generator))
    return result
