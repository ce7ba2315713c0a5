"""Small launches of each kernel path, for compute-sanitizer (memcheck, racecheck) in gpu-check.sh."""

import torch

from attn_export.models.block_layout import from_block_mask
from attn_export.models.paro import grid_permutation
from attn_export.native import NativeKernels

kernels = NativeKernels()
cases = [  # (shape, kwargs, dtype): the core fp16/bf16, generic fp32 and odd head_dim, 1/2/3-D, rpb
    ((1, 10, 12, 2, 64), dict(kernel_size=(3, 5), dilation=(2, 1)), torch.float16),
    ((1, 70, 2, 32), dict(kernel_size=9, stride=4, is_causal=True), torch.bfloat16),
    ((1, 9, 11, 2, 48), dict(kernel_size=(3, 4), stride=(1, 2)), torch.float16),
    ((1, 4, 6, 5, 1, 32), dict(kernel_size=(2, 3, 3)), torch.float32),
]
for shape, kw in [((1, 20, 18, 2, 128), dict(kernel_size=(5, 3)))]:
    q, k, v = (torch.randn(shape, device="cuda", dtype=torch.float16) for _ in range(3))
    kernels.neighborhood_attention(q, k, v, rpb=torch.randn(2, 9, 5, device="cuda", dtype=torch.float16), **kw)
for shape, kw, dtype in cases:
    q, k, v = (torch.randn(shape, device="cuda", dtype=dtype) for _ in range(3))
    kernels.neighborhood_attention(q, k, v, **kw)

# Block-sparse: the core (block_q 64, a partial tail block, a row without blocks) and the generic kernel.
mask = torch.rand(1, 2, 3, 4) < 0.5
mask[..., 0, :] = False
count, index = (x.cuda() for x in from_block_mask(mask, max_blocks=5))
for dtype, block_q, dim in ((torch.float16, 64, 64), (torch.bfloat16, 64, 128), (torch.float32, 64, 40)):
    q = torch.randn(1, 2, 150, dim, device="cuda", dtype=dtype)
    k, v = (torch.randn(1, 2, 190, dim, device="cuda", dtype=dtype) for _ in range(2))
    kernels.block_sparse_attention(q, k, v, count, index, block_q, 50)

# PARO: pre-pass and core (INT8, INT4, fp16 PV), the generic kernel (fp32, block 32).
grid, prefix = (2, 5, 7), 6
n = prefix + 70
perm = torch.stack([grid_permutation(h, grid, prefix) for h in range(2)]).to(torch.int32).cuda()
for dtype, block, bits in ((torch.float16, 64, (8, 8)), (torch.bfloat16, 64, (4, 16)), (torch.float32, 32, (8, 4))):
    nb = -(-n // block)
    layout = torch.rand(1, 2, nb, nb) < 0.6
    layout |= torch.eye(nb, dtype=torch.bool)
    count, index = (x.cuda() for x in from_block_mask(layout))
    q, k, v = (torch.randn(1, 2, n, 64, device="cuda", dtype=dtype) for _ in range(3))
    kernels.paro_attention(q, k, v, perm, count, index, block=block, qk_bits=bits[0], pv_bits=bits[1])
torch.cuda.synchronize()
print(f"{len(cases) + 1} neighborhood, 3 block-sparse and 3 PARO sanitizer cases ran")
