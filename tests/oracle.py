"""Brute-force references written straight from DESIGN.md section 5: a dense mask, loops, float64.

Deliberately independent of attn_export's vectorised window math: the tests compare the two.
"""

from __future__ import annotations

import itertools
import math
import random

import torch


def axis_neighbors(i: int, n: int, k: int, s: int, d: int, causal: bool) -> dict[int, int]:
    """Keys j of query i on one axis, mapped to their relative-bias index j' - i' + k - 1."""
    g, ip = i % d, i // d
    n_g = math.ceil((n - g) / d)
    if causal:
        leader = min((ip // s) * s + s - 1, n_g - 1)
        lo, hi = max(leader - k + 1, 0), min(ip + 1, n_g) - 1
    else:
        left, right = k // 2, k // 2 + k % 2 - 1
        leader = min((ip // s) * s + s // 2, n_g - 1)
        c = min(max(leader, left), n_g - 1 - right)
        lo, hi = c - left, c + right
    return {j: (j // d) - ip + k - 1 for j in range(n) if j % d == g and lo <= j // d <= hi}


def dense_mask_and_bias(spatial, kernel, stride, dilation, causal, rpb=None):
    """Boolean mask [N, N] and, with rpb [H, 2k-1, ...], the bias [H, N, N] (0 where masked)."""
    coords = list(itertools.product(*(range(n) for n in spatial)))
    n_tok = len(coords)
    mask = torch.zeros(n_tok, n_tok, dtype=torch.bool)
    bias = None if rpb is None else torch.zeros(rpb.shape[0], n_tok, n_tok, dtype=torch.float64)
    flat = {c: idx for idx, c in enumerate(coords)}
    for qi, qc in enumerate(coords):
        per_axis = [
            axis_neighbors(qc[a], spatial[a], kernel[a], stride[a], dilation[a], causal[a]) for a in range(len(spatial))
        ]
        for kc in itertools.product(*(sorted(p) for p in per_axis)):
            ki = flat[kc]
            mask[qi, ki] = True
            if bias is not None:
                rel = tuple(per_axis[a][kc[a]] for a in range(len(spatial)))
                bias[:, qi, ki] = rpb[(slice(None), *rel)].double()
    return mask, bias


def neighborhood_attention_reference(q, k, v, kernel, stride, dilation, causal, scale=None, rpb=None):
    batch, *spatial, heads, dim = q.shape
    scale = dim**-0.5 if scale is None else scale
    mask, bias = dense_mask_and_bias(spatial, kernel, stride, dilation, causal, rpb)
    n_tok = mask.shape[0]

    def heads_first(x):
        return x.double().reshape(batch, n_tok, heads, dim).transpose(1, 2)

    logits = heads_first(q) @ heads_first(k).transpose(-1, -2) * scale
    if bias is not None:
        logits = logits + bias
    logits = logits.masked_fill(~mask, float("-inf"))
    out = logits.softmax(-1) @ heads_first(v)
    return out.transpose(1, 2).reshape(q.shape)


def random_config(rng: random.Random, max_tokens: int = 400) -> dict:
    """A random valid configuration: rank 1-3, odd and even kernels, stride, dilation, causal, rpb."""
    rank = rng.choice([1, 1, 2, 2, 2, 3])
    while True:
        kernel = [rng.randint(2, 7 if rank < 3 else 4) for _ in range(rank)]
        dilation = [rng.choice([1, 1, 2, 3]) for _ in range(rank)]
        stride = [rng.choice([1, 1, rng.randint(1, k)]) for k in kernel]
        causal = [rng.random() < 0.3 for _ in range(rank)]
        spatial = [k * d + rng.randint(0, 6) for k, d in zip(kernel, dilation)]
        if math.prod(spatial) <= max_tokens:
            break
    use_rpb = not any(causal) and rng.random() < 0.5
    return dict(
        spatial=spatial, kernel=kernel, stride=stride, dilation=dilation, causal=causal,
        heads=rng.randint(1, 3), dim=rng.choice([4, 8, 16]), batch=rng.randint(1, 2), rpb=use_rpb,
    )


def make_inputs(cfg: dict, seed: int, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    shape = (cfg["batch"], *cfg["spatial"], cfg["heads"], cfg["dim"])
    q, k, v = (torch.randn(shape, generator=gen, dtype=dtype) for _ in range(3))
    rpb = None
    if cfg["rpb"]:
        rpb = torch.randn(cfg["heads"], *(2 * x - 1 for x in cfg["kernel"]), generator=gen, dtype=dtype)
    return q, k, v, rpb
