// PARO's quantization pre-pass (docs/ops/paro_attention.md, Semantics, steps 1 and 3-4): the scales need reductions
// over whole token groups (Q per q_group, K per k_group permuted tokens, after subtracting K's mean over
// all N) and whole channels (V over all N), which no single query tile sees. The pre-pass reads q, k, v
// through perm_idx and writes integer-valued operands in the PERMUTED order into the workspace, in the
// input type (|x| <= 127 is exact in fp16 and bf16), plus their float scales; the attention kernels then
// read them directly. Without quantization nothing is written and the kernels gather through perm_idx.
// Rounding as the reference: x / scale in fp32, round half to even (rintf), clamp to +-qmax; a scale of 0
// becomes 1. perm_idx entries are read clamped into [0, seq) (paro_rules.h).
#pragma once

#include "attn_generic.cuh"
#include "core_plan.h"

namespace attnx {
namespace paro {

constexpr int kThreads = 256;
constexpr int kStatsChunk = kParoStatsChunk;  // tokens per CTA of the channel statistics

// K's channel means (smooth_k) and V's channel scales (amax / qmax) over all N tokens (order does not matter for
// either), in two steps so that many CTAs share a head: channel_partials_kernel reduces one chunk of
// kStatsChunk tokens of one (batch, head) per CTA (core_plan.h's paro_stats_chunks; one CTA walking all N tokens
// of a head serially took milliseconds at 16k tokens), channel_finish_kernel adds the chunks in chunk order
// (deterministic, no atomics). Partials live in the workspace ([B*H, chunks, dim] floats each).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    channel_partials_kernel(int bh_count, int seq, int dim, int chunks, const T* __restrict__ k,
                            const T* __restrict__ v, float* __restrict__ part_sum, float* __restrict__ part_amax) {
    __shared__ float sum[kThreads], amax[kThreads];
    // `channels` channels per pass, `lanes` threads per channel splitting the chunk's tokens (the rest idle).
    const int channels = dim < kThreads ? dim : kThreads;
    const int lanes = kThreads / channels;
    const int c_local = threadIdx.x % channels, part = threadIdx.x / channels;
    const int n0 = blockIdx.x * kStatsChunk, n1 = n0 + kStatsChunk < seq ? n0 + kStatsChunk : seq;
    for (int bh = blockIdx.y; bh < bh_count; bh += gridDim.y) {
        const long long base = static_cast<long long>(bh) * seq * dim;
        for (int c0 = 0; c0 < dim; c0 += channels) {
            const int c = c0 + c_local;
            const bool active = part < lanes && c < dim;
            float s = 0.f, a = 0.f;
            if (active) {
#pragma unroll 4
                for (int n = n0 + part; n < n1; n += lanes) {  // independent loads: several in flight
                    const long long at = base + static_cast<long long>(n) * dim + c;
                    if (part_sum) s += generic::load(k + at);
                    if (part_amax) a = fmaxf(a, fabsf(generic::load(v + at)));
                }
            }
            sum[threadIdx.x] = s;
            amax[threadIdx.x] = a;
            __syncthreads();
            if (active && part == 0) {
                for (int j = 1; j < lanes; ++j) {
                    s += sum[threadIdx.x + j * channels];
                    a = fmaxf(a, amax[threadIdx.x + j * channels]);
                }
                const long long at = (static_cast<long long>(bh) * chunks + blockIdx.x) * dim + c;
                if (part_sum) part_sum[at] = s;
                if (part_amax) part_amax[at] = a;
            }
            __syncthreads();
        }
    }
}

// Partials each finishing thread loads before it adds them: a batch's loads are in flight together, so the
// kernel waits ceil(chunks / kFinishBatch) load latencies instead of one per chunk (70 at N = 17,776: ~40 us on
// an H100); bench/kernel_report.py's pre-pass model counts the same batches.
constexpr int kFinishBatch = 8;

// One thread per (batch, head, channel): the chunks' partials in chunk order. k_mean / v_scale may be null.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    channel_finish_kernel(int bh_count, int seq, int dim, int chunks, const float* __restrict__ part_sum,
                          const float* __restrict__ part_amax, float* __restrict__ k_mean,
                          float* __restrict__ v_scale, float v_qmax) {
    const long long total = static_cast<long long>(bh_count) * dim;
    for (long long e = blockIdx.x * static_cast<long long>(kThreads) + threadIdx.x; e < total;
         e += static_cast<long long>(gridDim.x) * kThreads) {
        const long long bh = e / dim;
        const int c = static_cast<int>(e % dim);
        float s = 0.f, a = 0.f;
        for (int j0 = 0; j0 < chunks; j0 += kFinishBatch) {
            float sums[kFinishBatch], amaxes[kFinishBatch];
            // The loads first, none waiting for an add; past the last chunk the neutral elements: x + -0 is x for
            // every x (+0 and -0 included) and the amax is >= 0, so the result is the chunk-order sum as before.
#pragma unroll
            for (int i = 0; i < kFinishBatch; ++i) {
                const bool real = j0 + i < chunks;
                const long long at = (bh * chunks + j0 + i) * dim + c;
                sums[i] = k_mean && real ? part_sum[at] : -0.f;
                amaxes[i] = v_scale && real ? part_amax[at] : 0.f;
            }
#pragma unroll
            for (int i = 0; i < kFinishBatch; ++i) {
                s += sums[i];
                a = fmaxf(a, amaxes[i]);
            }
        }
        if (k_mean) k_mean[e] = s / seq;
        if (v_scale) {
            const float scale = a / v_qmax;
            v_scale[e] = scale == 0.f ? 1.f : scale;
        }
    }
}

// One group of `group` consecutive permuted tokens of one (batch, head) per block: amax over the group's
// tokens and channels (of x - mean), then the integer values, in permuted order, and the group's scale.
// D: the values' type, T (the generic kernel) or int8_t (the fused core's s8 MMA; |value| <= qmax <= 127).
template <typename T, typename D = T>
__global__ void __launch_bounds__(kThreads)
    quantize_groups_kernel(int heads, int seq, int dim, int group, const int32_t* __restrict__ perm,
                           const T* __restrict__ x, const float* __restrict__ mean, float qmax, D* __restrict__ dst,
                           float* __restrict__ scales, int bh_count) {
    __shared__ float red[kThreads / 32];
    const int groups = ceil_div(seq, group);
    for (int bh = blockIdx.y; bh < bh_count; bh += gridDim.y) {
        const int h = bh % heads;
        const long long base = static_cast<long long>(bh) * seq * dim;
        const int first = blockIdx.x * group, count = min(group, seq - first) * dim;
        auto value = [&](int e) {
            const int n = first + e / dim, c = e % dim;
            const float raw = generic::load(x + base + static_cast<long long>(paro::permuted(perm + static_cast<long long>(h) * seq, n, seq)) * dim + c);
            return mean ? raw - mean[static_cast<long long>(bh) * dim + c] : raw;
        };
        float a = 0.f;
        for (int e = threadIdx.x; e < count; e += kThreads) a = fmaxf(a, fabsf(value(e)));
        for (int off = 16; off > 0; off >>= 1) a = fmaxf(a, __shfl_xor_sync(0xffffffffu, a, off));
        if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = a;
        __syncthreads();
        a = red[0];
        for (int w = 1; w < kThreads / 32; ++w) a = fmaxf(a, red[w]);
        __syncthreads();
        float scale = a / qmax;
        if (scale == 0.f) scale = 1.f;
        for (int e = threadIdx.x; e < count; e += kThreads)
            generic::store(dst + base + static_cast<long long>(first) * dim + e, fminf(fmaxf(rintf(value(e) / scale), -qmax), qmax));
        if (threadIdx.x == 0) scales[static_cast<long long>(bh) * groups + blockIdx.x] = scale;
    }
}

// V per channel: integer values in permuted order with the channel scales of channel_stats_kernel.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    quantize_channels_kernel(int heads, int seq, int dim, const int32_t* __restrict__ perm, const T* __restrict__ x,
                             const float* __restrict__ scales, float qmax, T* __restrict__ dst, int bh_count) {
    for (int bh = blockIdx.y; bh < bh_count; bh += gridDim.y) {
        const int h = bh % heads;
        const long long base = static_cast<long long>(bh) * seq * dim;
        const long long total = static_cast<long long>(seq) * dim;
        for (long long e = blockIdx.x * static_cast<long long>(kThreads) + threadIdx.x; e < total;
             e += static_cast<long long>(gridDim.x) * kThreads) {
            const int n = static_cast<int>(e / dim), c = static_cast<int>(e % dim);
            const float raw = generic::load(x + base + static_cast<long long>(paro::permuted(perm + static_cast<long long>(h) * seq, n, seq)) * dim + c);
            generic::store(dst + base + e, fminf(fmaxf(rintf(raw / scales[static_cast<long long>(bh) * dim + c]), -qmax), qmax));
        }
    }
}

}  // namespace paro
}  // namespace attnx
