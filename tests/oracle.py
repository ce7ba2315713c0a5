"""Brute-force references written straight from the Semantics sections of docs/ops/*.md: a dense mask, loops, float64.

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


def block_sparse_reference(q, k, v, kv_count, kv_index, block_q, block_kv, scale=None, block_bias=None):
    """Block-sparse attention from docs/ops/block_sparse_attention.md (Semantics) with loops and a dense token
    mask, in float64: query i attends key j iff j's block is listed (within kv_count) in i's block row and j < Skv;
    the optional block_bias of (row, slot, i % block_q, j % block_kv) is added to that logit (-inf: not
    attended); a query left with no key outputs zeros."""
    batch, heads, sq, dim = q.shape
    skv = k.shape[2]
    scale = dim ** -0.5 if scale is None else scale
    out = torch.zeros(batch, heads, sq, dim, dtype=torch.float64)
    for b in range(batch):
        for h in range(heads):
            cb, ch = min(b, kv_count.shape[0] - 1), min(h, kv_count.shape[1] - 1)
            ib, ih = min(b, kv_index.shape[0] - 1), min(h, kv_index.shape[1] - 1)
            for i in range(sq):
                row = i // block_q
                blocks = [int(kv_index[ib, ih, row, s]) for s in range(int(kv_count[cb, ch, row]))]

                def bias(j, row=row, blocks=blocks, b=b, h=h, i=i):
                    if block_bias is None:
                        return 0.0
                    lb, lh = min(b, block_bias.shape[0] - 1), min(h, block_bias.shape[1] - 1)
                    return float(block_bias[lb, lh, row, blocks.index(j // block_kv), i % block_q, j % block_kv])

                keys = [j for j in range(skv) if j // block_kv in blocks and bias(j) != float("-inf")]
                if not keys:
                    continue
                logits = torch.stack([(q[b, h, i].double() @ k[b, h, j].double()) * scale + bias(j) for j in keys])
                weights = torch.softmax(logits, dim=0)
                out[b, h, i] = weights @ v[b, h, keys].double()
    return out


def _fake_quant(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric fake quantization of one group, round half to even, scale = amax / qmax (amax 0 -> 1)."""
    top = 2 ** (bits - 1) - 1
    scale = x.abs().max() / top
    scale = scale if scale > 0 else torch.ones((), dtype=x.dtype)  # amax 0 (or underflow): scale 1
    return torch.clamp(torch.round(x / scale), -top, top) * scale


def paro_reference(q, k, v, perm_idx, kv_count, kv_index, block, qk_bits=8, pv_bits=8, q_group=32, k_group=64,
                   smooth_k=True, scale=None, dtype=torch.float64):
    """PARO attention written straight from its contract (docs/ops/paro_attention.md), one batch and head at a
    time with loops over groups, channels and tiles and a dense N x N mask, in ``dtype``."""
    batch, heads, n, dim = q.shape
    scale = dim ** -0.5 if scale is None else scale
    n_blocks = -(-n // block)
    out = torch.zeros(batch, heads, n, dim, dtype=dtype)
    for b in range(batch):
        for h in range(heads):
            perm = perm_idx[h].long()
            qp, kp, vp = (x[b, h, perm].to(dtype).clone() for x in (q, k, v))
            if qk_bits < 16:
                if smooth_k:
                    kp = kp - kp.mean(dim=0)
                for x, group in ((qp, q_group), (kp, k_group)):
                    for start in range(0, n, group):
                        x[start:start + group] = _fake_quant(x[start:start + group], qk_bits)
            if pv_bits < 16:
                for d in range(dim):
                    vp[:, d] = _fake_quant(vp[:, d], pv_bits)
            allowed = torch.zeros(n, n, dtype=torch.bool)
            cb, ch = min(b, kv_count.shape[0] - 1), min(h, kv_count.shape[1] - 1)
            ib, ih = min(b, kv_index.shape[0] - 1), min(h, kv_index.shape[1] - 1)
            for row in range(n_blocks):
                for slot in range(int(kv_count[cb, ch, row])):
                    col = int(kv_index[ib, ih, row, slot])
                    allowed[row * block:(row + 1) * block, col * block:(col + 1) * block] = True
            logits = (qp @ kp.T) * scale
            logits[~allowed] = float("-inf")
            p = torch.exp(logits - logits.max(dim=1, keepdim=True).values)
            total = p.sum(dim=1, keepdim=True)
            if pv_bits < 16:
                top = 2 ** (pv_bits - 1) - 1
                for row in range(n_blocks):
                    for col in range(n_blocks):
                        tile = p[row * block:(row + 1) * block, col * block:(col + 1) * block]
                        step = max(tile.max(), torch.tensor(2.0**-30, dtype=dtype)) / top  # the contract's floor
                        tile.copy_(torch.clamp(torch.round(tile / step), 0, top) * step)
            out[b, h, perm] = (p @ vp) / total
    return out
