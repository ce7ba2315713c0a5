"""GPU tier: the neighborhood kernels (the fused core for fp16/bf16 at head_dim 32/64/128, the first generation's
generic kernel otherwise; through the C ABI) against the fp32 PyTorch reference.

Tolerances (docs/architecture.md, Test tiers; rtol 0): fp32 1e-4, fp16 1e-2, bf16 5e-2. Every run uses fresh random
inputs and an output buffer poisoned with NaN, so a query the kernel never writes fails the test.
Runs where CUDA and the kernel library are present (scripts/gpu-check.sh); skips elsewhere, saying why.
"""

from __future__ import annotations

import random

import pytest
import torch

from attn_export.models.neighborhood import neighborhood_attention

from native_tools import gpu_kernels

pytestmark = pytest.mark.gpu
TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}


@pytest.fixture(scope="module")
def kernels():
    return gpu_kernels()


def run_case(kernels, spatial, kw, dtype, heads=2, dim=32, batch=2, use_rpb=False, seed=0, scale=None, misalign=False,
             device="cuda"):
    gen = torch.Generator(device=device).manual_seed(seed)
    shape = (batch, *spatial, heads, dim)

    def rand(*s):
        x = torch.randn(*s, generator=gen, device=device, dtype=torch.float32)
        if misalign:  # contiguous but 2 bytes off a 16-byte boundary: must take the generic path
            buf = torch.empty(x.numel() + 1, device=device, dtype=dtype)
            view = buf[1:].view(s)
            view.copy_(x)
            return view
        return x.to(dtype)

    q, k, v = rand(*shape), rand(*shape), rand(*shape)
    rpb = rand(heads, *[2 * x - 1 for x in kw["kernel_size"]]) if use_rpb else None
    out = torch.full_like(q, float("nan"))
    kernels.neighborhood_attention(q, k, v, rpb=rpb, out=out, scale=scale, **kw)
    torch.cuda.synchronize(q.device)
    ref = neighborhood_attention(q.float(), k.float(), v.float(), rpb=None if rpb is None else rpb.float(),
                                 scale=scale, **kw)
    assert torch.isfinite(out).all(), "the kernel left unwritten (NaN) outputs"
    torch.testing.assert_close(out.float(), ref, atol=TOLERANCE[dtype], rtol=0,
                               msg=lambda m: f"{spatial} {kw} {dtype} dim={dim} rpb={use_rpb}: {m}")


def random_case(seed: int):
    rng = random.Random(seed)
    rank = rng.randint(1, 3)
    kw = dict(kernel_size=[], stride=[], dilation=[], is_causal=[])
    spatial = []
    for _ in range(rank):
        k = rng.randint(2, {1: 33, 2: 13, 3: 7}[rank])
        d = rng.choice([1, 1, 2, 3])
        kw["kernel_size"].append(k)
        kw["stride"].append(rng.randint(1, k))
        kw["dilation"].append(d)
        kw["is_causal"].append(rng.random() < 0.25)
        spatial.append(rng.randint(k * d, k * d + {1: 200, 2: 30, 3: 8}[rank]))
    use_rpb = not any(kw["is_causal"]) and rng.random() < 0.4
    return spatial, kw, use_rpb


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("dim", [32, 64, 128, 48])  # 48: the generic path for fp16/bf16 too
@pytest.mark.parametrize("seed", range(8))
def test_random_configs(kernels, dtype, dim, seed):
    spatial, kw, use_rpb = random_case(seed)
    run_case(kernels, spatial, kw, dtype, dim=dim, use_rpb=use_rpb, seed=seed)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_core_path_is_selected(kernels, dtype):
    """fp16/bf16 at head_dim 32/64/128 run the fused core (attn_core.cuh); fp32 and other head_dims the
    first generation's generic kernel."""
    q = torch.empty(1, 16, 16, 2, 64, device="cuda", dtype=dtype)
    assert kernels.select_path(q, kernel_size=7) == "core"
    assert kernels.select_path(q.float(), kernel_size=7) == "generic"
    assert kernels.select_path(torch.empty(1, 16, 16, 2, 48, device="cuda", dtype=dtype), kernel_size=7) == "generic"


@pytest.mark.parametrize("spatial, kw", [
    ([64, 64], dict(kernel_size=16, stride=16)),  # blocked
    ([4096], dict(kernel_size=256, stride=64)),  # strided 1-D
    ([8, 16, 16], dict(kernel_size=(3, 7, 7))),
    ([1000], dict(kernel_size=31, is_causal=True)),
    ([33, 47], dict(kernel_size=(5, 9), dilation=(3, 2))),
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_benchmark_shapes_small(kernels, spatial, kw, dtype):
    run_case(kernels, spatial, kw, dtype, dim=64, heads=2, batch=1, seed=7)


def test_rpb_explicit_scale_and_misaligned_pointers(kernels):
    kw = dict(kernel_size=(7, 5), dilation=(1, 2))
    run_case(kernels, [20, 22], kw, torch.float16, dim=64, use_rpb=True, scale=0.3, seed=3)
    run_case(kernels, [20, 22], kw, torch.float16, dim=64, use_rpb=True, misalign=True, seed=4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_bias_table_too_big_for_shared_memory_runs_the_generic_kernel(kernels, dtype):
    """3-D k19 at head_dim 64: the bias table (37^3 floats, 198 KB) does not fit next to the core's tiles in any
    GPU's shared memory, so the call runs on the generic kernel, and select_path says so (it used to say
    tensor-core while the launcher returned UNSUPPORTED)."""
    kw = dict(kernel_size=(19, 19, 19))
    q = torch.empty(1, 19, 19, 19, 1, 64, device="cuda", dtype=dtype)
    assert kernels.select_path(q, has_rpb=True, **kw) == "generic"
    assert kernels.select_path(q, **kw) == "core"
    run_case(kernels, [19, 19, 19], kw, dtype, dim=64, heads=1, batch=1, use_rpb=True, seed=13)


def test_empty_batch_and_invalid_shape(kernels):
    q = torch.randn(0, 8, 2, 32, device="cuda")
    assert kernels.neighborhood_attention(q, q, q, kernel_size=3).shape == q.shape
    q = torch.randn(1, 8, 2, 32, device="cuda")
    with pytest.raises(Exception, match="exceeds the axis length 8"):
        kernels.neighborhood_attention(q, q, q, kernel_size=3, dilation=3)


@pytest.mark.parametrize("dim", [97, 199])  # tile 64 fits only without the static array on sm_86/89/120, sm_80/87
def test_head_dims_at_the_shared_memory_edge(kernels, dim):
    run_case(kernels, [20, 18], dict(kernel_size=(5, 3)), torch.float16, dim=dim, heads=1, batch=1, seed=11)


@pytest.mark.parametrize("batch, heads", [(1, 65537), (65537, 1)])
def test_batch_or_heads_beyond_the_grid_limit(kernels, batch, heads):
    """gridDim.y/z stop at 65,535: the launcher splits the grid, each chunk with its own pointers."""
    run_case(kernels, [8], dict(kernel_size=(3,)), torch.float16, dim=8, heads=heads, batch=batch, seed=12,
             use_rpb=True)


def test_launch_on_the_device_of_q(kernels):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs: q on cuda:1 while cuda:0 is current")
    with torch.cuda.device(0):
        run_case(kernels, [12, 12], dict(kernel_size=5), torch.float16, dim=64, device="cuda:1", seed=13)
