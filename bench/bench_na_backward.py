"""Training cost of the neighborhood-attention CPU op: forward and forward + backward against dense SDPA.

Run: python bench/bench_na_backward.py [--batch 64] [--side 14] [--kernel 7] [--heads 4] [--dim 32] [--reps 5]
Prints, for each implementation, the median ms of a forward pass and of a forward + backward step (inputs
requiring gradients, a sum of the output as the loss), and the ratios measured in this run: the NA op against
SDPA over all N x N pairs (torch.nn.functional.scaled_dot_product_attention, the same tensors), and each
implementation's step against its own forward.
"""

from __future__ import annotations

import argparse

import torch
from timing import median_ms

from attn_export.models import neighborhood_attention


def step(attend, tensors, backward: bool):
    def run():
        leaves = [t.detach().requires_grad_(backward) for t in tensors]
        with torch.set_grad_enabled(backward):
            out = attend(*leaves)
            if backward:
                out.sum().backward()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--side", type=int, default=14, help="tokens per spatial axis (a side x side grid)")
    parser.add_argument("--kernel", type=int, default=7)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--dim", type=int, default=32, help="head dim")
    parser.add_argument("--rpb", action="store_true", help="with a relative position bias (NAT checkpoints)")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    shape = (args.batch, args.side, args.side, args.heads, args.dim)
    q, k, v = (torch.randn(shape) for _ in range(3))
    rpb = torch.randn(args.heads, 2 * args.kernel - 1, 2 * args.kernel - 1) if args.rpb else None

    def na(q, k, v, *bias):
        return neighborhood_attention(q, k, v, args.kernel, rpb=bias[0] if bias else None)

    def sdpa(q, k, v, *_):  # dense attention over all N tokens, the same layout in and out
        def flat(x):
            return x.flatten(1, 2).transpose(1, 2)

        out = torch.nn.functional.scaled_dot_product_attention(flat(q), flat(k), flat(v))
        return out.transpose(1, 2).unflatten(1, (args.side, args.side))

    tensors = (q, k, v) if rpb is None else (q, k, v, rpb)
    rows = {}
    for name, attend in (("na", na), ("sdpa", sdpa)):
        forward = median_ms(step(attend, tensors, False), args.reps)
        train = median_ms(step(attend, tensors, True), args.reps)
        rows[name] = (forward, train)
    print(f"batch {args.batch}, {args.side}x{args.side} tokens, kernel {args.kernel}, heads {args.heads}, "
          f"head dim {args.dim}{', rpb' if rpb is not None else ''}; threads {torch.get_num_threads()}")
    print(f"{'impl':<6} {'forward ms':>11} {'fwd+bwd ms':>11} {'step / forward':>15}")
    for name, (forward, train) in rows.items():
        print(f"{name:<6} {forward:>11.1f} {train:>11.1f} {train / forward:>15.2f}")
    (na_f, na_t), (sd_f, sd_t) = rows["na"], rows["sdpa"]
    print(f"NA / SDPA: forward {na_f / sd_f:.2f}x, forward + backward {na_t / sd_t:.2f}x, "
          f"backward alone {(na_t - na_f) / (sd_t - sd_f):.2f}x")


if __name__ == "__main__":
    main()
