"""Small launches of each kernel path, for compute-sanitizer (memcheck, racecheck) in gpu-check.sh."""

import torch

from attn_export.native import NativeKernels

kernels = NativeKernels()
cases = [  # (shape, kwargs, dtype): tensor-core fp16/bf16, generic fp32 and odd head_dim, 1/2/3-D
    ((1, 10, 12, 2, 64), dict(kernel_size=(3, 5), dilation=(2, 1)), torch.float16),
    ((1, 70, 2, 32), dict(kernel_size=9, stride=4, is_causal=True), torch.bfloat16),
    ((1, 9, 11, 2, 48), dict(kernel_size=(3, 4), stride=(1, 2)), torch.float16),
    ((1, 4, 6, 5, 1, 32), dict(kernel_size=(2, 3, 3)), torch.float32),
]
for shape, kw, dtype in cases:
    q, k, v = (torch.randn(shape, device="cuda", dtype=dtype) for _ in range(3))
    kernels.neighborhood_attention(q, k, v, **kw)
torch.cuda.synchronize()
print(f"{len(cases)} sanitizer cases ran")
