// CUDA-core fallback for block-sparse and PARO attention: any dtype (fp32 too), any head_dim up to 256, any
// block sizes, unaligned rows. It follows the reference's order of operations (models/block_sparse.py,
// models/paro.py): per query row, pass 1 takes the row max over the kept keys; with quantized P, pass 2
// takes each (query block, kv block) tile's max of exp(s - m) over the block's rows; the last pass
// accumulates (quantized) P times V, with the unquantized sum as the denominator. One block of 4 warps
// per (query block, head, batch); a warp takes the block's rows in turn, its lanes own the channels.
// Slow (a dot product is a warp reduction) and meant for shapes the core (attn_core.cuh) does not take.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "attnx_types.h"
#include "block_layout.h"
#include "paro_rules.h"

namespace attnx {
namespace generic {

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kMaxPerLane = 8;  // head_dim <= 256

template <typename T>
__device__ __forceinline__ float load(const T* p) { return static_cast<float>(*p); }
template <>
__device__ __forceinline__ float load<__half>(const __half* p) { return __half2float(*p); }
template <>
__device__ __forceinline__ float load<__nv_bfloat16>(const __nv_bfloat16* p) { return __bfloat162float(*p); }

template <typename T>
__device__ __forceinline__ void store(T* p, float x) { *p = static_cast<T>(x); }
template <>
__device__ __forceinline__ void store<__half>(__half* p, float x) { *p = __float2half_rn(x); }
template <>
__device__ __forceinline__ void store<__nv_bfloat16>(__nv_bfloat16* p, float x) { *p = __float2bfloat16_rn(x); }

__device__ __forceinline__ float warp_sum(float x) {
    for (int off = 16; off > 0; off >>= 1) x += __shfl_xor_sync(0xffffffffu, x, off);
    return x;
}

struct Params {
    int heads, seq_q, seq_kv, dim, block_q, block_kv;
    attnx_block_layout layout;
    const int32_t* kv_count;
    const int32_t* kv_index;
    int batch0, head0;         // this launch's first batch and head (grid chunks)
    const int32_t* perm;       // PARO: [heads, seq] of this launch's first head; null for block-sparse
    int gather_qk, gather_v;   // PARO: rows through perm (input) or direct (pre-pass workspace)
    const float* q_scale;      // PARO: [B, H, ceil(seq / q_group)] or null
    const float* k_scale;      // PARO: [B, H, ceil(seq / k_group)] or null
    const float* v_scale;      // PARO: [B, H, dim] or null
    int q_group, k_group;
    float qmax_p;              // PARO: levels of quantized P; 0 when P is not quantized
    float scale;               // logit scale (natural base, as the reference)
};

// Shared memory: the tile maxima of quantized P (one float per listed block).
inline size_t smem_bytes(const Params& p) { return p.qmax_p > 0 ? sizeof(float) * (p.layout.max_blocks + 1) : 0; }

template <typename T>
__global__ void __launch_bounds__(kThreads)
    blocked_rows_kernel(const __grid_constant__ Params p, const T* __restrict__ q, const T* __restrict__ k,
                        const T* __restrict__ v, T* __restrict__ out) {
    extern __shared__ float tile_max[];
    const int b = blockIdx.z, h = blockIdx.y, qb = blockIdx.x;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const BlockRow row = block_row(p.layout, p.kv_count, p.kv_index, p.batch0 + b, p.head0 + h, qb,
                                   ceil_div(p.seq_kv, p.block_kv));
    const VirtualKeys keys{row, FastDivisor(p.block_kv), p.seq_kv};
    const int32_t* perm = p.perm ? p.perm + static_cast<long long>(h) * p.seq_q : nullptr;
    const long long q_base = (static_cast<long long>(b) * p.heads + h) * p.seq_q * p.dim;
    const long long kv_base = (static_cast<long long>(b) * p.heads + h) * p.seq_kv * p.dim;
    const long long scale_row = static_cast<long long>(p.batch0 + b) * p.heads + (p.head0 + h);
    const int first = qb * p.block_q, last = min(first + p.block_q, p.seq_q);
    auto at = [&](int position, bool gather) {
        return static_cast<long long>(gather && perm ? paro::permuted(perm, position, p.seq_q) : position) * p.dim;
    };
    auto k_scale = [&](int key) { return p.k_scale ? p.k_scale[scale_row * ceil_div(p.seq_kv, p.k_group) + key / p.k_group] : 1.f; };

    // The logit of query row i's registers against key `key`: (q . k) * scale (* the QK quantization scales).
    float qr[kMaxPerLane];
    auto logit = [&](float row_scale, int key) {
        const T* kr = k + kv_base + at(key, p.gather_qk);
        float part = 0.f;
        for (int x = 0; x < kMaxPerLane; ++x)
            if (lane + 32 * x < p.dim) part += qr[x] * load(kr + lane + 32 * x);
        return warp_sum(part) * row_scale * k_scale(key);
    };
    auto load_row = [&](int i, float& row_scale) {
        const T* src = q + q_base + at(i, p.gather_qk);
        for (int x = 0; x < kMaxPerLane; ++x) qr[x] = lane + 32 * x < p.dim ? load(src + lane + 32 * x) : 0.f;
        row_scale = p.scale * (p.q_scale ? p.q_scale[scale_row * ceil_div(p.seq_q, p.q_group) + i / p.q_group] : 1.f);
    };
    auto row_max = [&](float row_scale) {
        float m = -INFINITY;
        for (int s = 0; s < keys.slots(); ++s) {
            const int key = keys.key(s);
            if (key >= 0) m = fmaxf(m, logit(row_scale, key));
        }
        return m;
    };

    const bool quant_p = p.qmax_p > 0;
    if (quant_p) {
        for (int t = threadIdx.x; t < row.count; t += kThreads) tile_max[t] = 0.f;
        __syncthreads();
        for (int i = first + warp; i < last; i += kWarps) {
            float row_scale;
            load_row(i, row_scale);
            const float m = row_max(row_scale);
            for (int s = 0; s < keys.slots(); ++s) {
                const int key = keys.key(s);
                if (key < 0) continue;
                const float pv = expf(logit(row_scale, key) - m);
                // Non-negative floats order like their bit patterns: an integer atomicMax is a float max.
                if (lane == 0) atomicMax(reinterpret_cast<int*>(tile_max + s / p.block_kv), __float_as_int(pv));
            }
        }
        __syncthreads();
    }

    for (int i = first + warp; i < last; i += kWarps) {
        float row_scale;
        load_row(i, row_scale);
        const float m = row_max(row_scale);
        float acc[kMaxPerLane] = {};
        float total = 0.f;
        for (int s = 0; s < keys.slots(); ++s) {
            const int key = keys.key(s);
            if (key < 0) continue;
            const float pv = expf(logit(row_scale, key) - m);
            total += pv;
            float weight = pv;
            if (quant_p) {
                const float scale = paro::p_tile_scale(tile_max[s / p.block_kv], p.qmax_p);
                weight = fminf(rintf(pv / scale), p.qmax_p) * scale;
            }
            const T* vr = v + kv_base + at(key, p.gather_v);
            for (int x = 0; x < kMaxPerLane; ++x)
                if (lane + 32 * x < p.dim) acc[x] += weight * load(vr + lane + 32 * x);
        }
        T* dst = out + q_base + at(i, true);
        for (int x = 0; x < kMaxPerLane; ++x) {
            const int c = lane + 32 * x;
            if (c >= p.dim) continue;
            const float channel = p.v_scale ? p.v_scale[scale_row * p.dim + c] : 1.f;
            store(dst + c, total > 0.f ? acc[x] * channel / total : 0.f);
        }
    }
}

}  // namespace generic
}  // namespace attnx
