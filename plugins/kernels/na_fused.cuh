// Fused neighborhood-attention forward, first generation: the generic kernel (CUDA cores, fp32 math).
//
// A thread block owns one query tile (a box of up to TILE queries of one dilation group, in group
// coordinates) for one (batch, head). It visits, in row-major order, only the kv tiles of the box that
// the tile's windows span (tile_kv_range per axis), masks single elements by each query's window, and
// keeps an online softmax in fp32: scores and probabilities live in shared memory, never in global
// memory. CUDA-core fp32 math for any dtype and head_dim (the fused core, attn_core.cuh, takes fp16/bf16
// at head_dim 32/64/128 where it fits). attn_export.models.na_kernel_sim replays this algorithm on the CPU.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "na_launch.h"
#include "na_problem.h"

namespace attnx {

template <typename T>
__device__ __forceinline__ float to_float(T x) { return static_cast<float>(x); }
template <>
__device__ __forceinline__ float to_float<__half>(__half x) { return __half2float(x); }
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x) { return static_cast<T>(x); }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

__device__ __forceinline__ float warp_max(float x) {
    for (int off = 16; off > 0; off >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, off));
    return x;
}
__device__ __forceinline__ float warp_sum(float x) {
    for (int off = 16; off > 0; off >>= 1) x += __shfl_xor_sync(0xffffffffu, x, off);
    return x;
}

template <typename T, int TILE>
__global__ void __launch_bounds__(kThreads)
    na_fused_kernel(NaProblem pr, const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                    const T* __restrict__ rpb, T* __restrict__ out) {
    using Plan = SmemPlan<sizeof(T), TILE>;
    static_assert(sizeof(float) == Plan::kProbBytes, "the plan sizes the probabilities as the kernel stores them");
    const int dim = pr.dim;
    const int ldi = Plan::ld_in(dim), ldo = Plan::ld_out(dim);
    constexpr int lds = TILE + Plan::kPadScore, ldp = TILE + Plan::kPadProb;

    extern __shared__ __align__(128) unsigned char smem[];
    unsigned char* cursor = smem;
    T* qs = reinterpret_cast<T*>(cursor);      cursor += Plan::qkv_bytes(dim);
    T* ks = reinterpret_cast<T*>(cursor);      cursor += Plan::qkv_bytes(dim);
    T* vs = reinterpret_cast<T*>(cursor);      cursor += Plan::qkv_bytes(dim);
    float* sc = reinterpret_cast<float*>(cursor);  cursor += Plan::score_bytes();
    float* pr_s = reinterpret_cast<float*>(cursor);    cursor += Plan::prob_bytes();
    float* os = reinterpret_cast<float*>(cursor);  cursor += Plan::out_bytes(dim);
    float* row_max = reinterpret_cast<float*>(cursor);
    float* row_sum = row_max + TILE;
    int* q_begin = reinterpret_cast<int*>(row_sum + TILE);  // [TILE][3]
    int* q_end = q_begin + TILE * kMaxRank;
    int* q_pos = q_end + TILE * kMaxRank;
    int* kv_pos = q_pos + TILE * kMaxRank;
    int* q_valid = kv_pos + TILE * kMaxRank;
    int* kv_valid = q_valid + TILE;

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int head = blockIdx.y, batch = blockIdx.z;

    // Which dilation group and which tile of it along each axis (axis 2 fastest).
    int group[kMaxRank], first[kMaxRank], glen[kMaxRank];
    {
        int id = blockIdx.x;
        for (int a = kMaxRank - 1; a >= 0; --a) {
            const int per_axis = pr.d[a] * pr.tiles_per_group[a];
            const int t = id % per_axis;
            id /= per_axis;
            group[a] = t / pr.tiles_per_group[a];
            first[a] = (t % pr.tiles_per_group[a]) * pr.tile[a];
            glen[a] = group_length(pr.n[a], pr.d[a], group[a]);
            if (first[a] >= glen[a]) return;  // a shorter dilation group: this tile is empty
        }
    }
    // The box of keys the tile's windows span, and how many kv tiles cover it.
    int kv_begin[kMaxRank], kv_end[kMaxRank], kv_tiles[kMaxRank];
    int kv_tile_count = 1;
    for (int a = 0; a < kMaxRank; ++a) {
        const int last = min(first[a] + pr.tile[a], glen[a]) - 1;
        const Range r = tile_kv_range(first[a], last, glen[a], pr.k[a], pr.s[a], pr.causal[a] != 0);
        kv_begin[a] = r.begin;
        kv_end[a] = r.end;
        kv_tiles[a] = ceil_div(r.end - r.begin, pr.tile[a]);
        kv_tile_count *= kv_tiles[a];
    }

    const long long head_offset = static_cast<long long>(batch) * pr.batch_stride + static_cast<long long>(head) * dim;
    const int tile_tokens = pr.tile[0] * pr.tile[1] * pr.tile[2];

    // Slot r of a tile sits at local coordinates (r / (t1*t2), (r / t2) % t1, r % t2).
    auto slot_offset = [&](int slot, const int* base, int* pos, bool& valid) -> long long {
        int local[kMaxRank] = {slot / (pr.tile[1] * pr.tile[2]), (slot / pr.tile[2]) % pr.tile[1], slot % pr.tile[2]};
        long long offset = head_offset;
        valid = slot < tile_tokens;
        for (int a = 0; a < kMaxRank; ++a) {
            pos[a] = base[a] + local[a];
            valid = valid && pos[a] < glen[a];
            offset += static_cast<long long>(group[a] + pr.d[a] * pos[a]) * pr.token_stride[a];
        }
        return offset;
    };

    // Copies TILE rows of head_dim elements into shared memory; invalid slots become zeros.
    auto load_rows = [&](const T* src, T* dst, const long long* offsets, const int* valid) {
        for (int e = tid; e < TILE * dim; e += kThreads) {
            const int row = e / dim, col = e % dim;
            dst[row * ldi + col] = valid[row] ? src[offsets[row] + col] : from_float<T>(0.f);
        }
    };

    // Static shared memory: counted by Plan::static_bytes() (tests compare it with ptxas's report).
    __shared__ long long row_offset[Plan::kRowOffsets];

    // Query slots: coordinates, windows, validity; then Q and the accumulators.
    for (int r = tid; r < TILE; r += kThreads) {
        bool valid;
        row_offset[r] = slot_offset(r, first, q_pos + r * kMaxRank, valid);
        q_valid[r] = valid;
        for (int a = 0; a < kMaxRank; ++a) {
            const Range w = window(q_pos[r * kMaxRank + a], glen[a], pr.k[a], pr.s[a], pr.causal[a] != 0);
            q_begin[r * kMaxRank + a] = w.begin;
            q_end[r * kMaxRank + a] = w.end;
        }
        row_max[r] = -INFINITY;
        row_sum[r] = 0.f;
    }
    for (int e = tid; e < TILE * ldo; e += kThreads) os[e] = 0.f;
    __syncthreads();
    load_rows(q, qs, row_offset, q_valid);

    for (int kv_tile = 0; kv_tile < kv_tile_count; ++kv_tile) {
        __syncthreads();  // the previous tile's K, V and offsets are no longer read
        int kv_first[kMaxRank];
        {
            int id = kv_tile;
            for (int a = kMaxRank - 1; a >= 0; --a) {
                kv_first[a] = kv_begin[a] + (id % kv_tiles[a]) * pr.tile[a];
                id /= kv_tiles[a];
            }
        }
        for (int c = tid; c < TILE; c += kThreads) {
            bool valid;
            row_offset[c] = slot_offset(c, kv_first, kv_pos + c * kMaxRank, valid);
            for (int a = 0; a < kMaxRank; ++a) valid = valid && kv_pos[c * kMaxRank + a] < kv_end[a];
            kv_valid[c] = valid;
        }
        __syncthreads();
        load_rows(k, ks, row_offset, kv_valid);
        load_rows(v, vs, row_offset, kv_valid);
        __syncthreads();

        // Scores S = Q . K^T (unscaled, fp32).
        for (int e = tid; e < TILE * TILE; e += kThreads) {
            const int r = e / TILE, c = e % TILE;
            float dot = 0.f;
            for (int x = 0; x < dim; ++x) dot += to_float(qs[r * ldi + x]) * to_float(ks[c * ldi + x]);
            sc[r * lds + c] = dot;
        }
        __syncthreads();

        // Online softmax, one warp per row: mask by window, add the bias, rescale the accumulator.
        for (int r = warp; r < TILE; r += kThreads / 32) {
            float s[(TILE + 31) / 32];
            float tile_max = -INFINITY;
            for (int i = 0, c = lane; i < (TILE + 31) / 32; ++i, c += 32) {
                s[i] = -INFINITY;
                if (c >= TILE || !q_valid[r] || !kv_valid[c]) continue;
                bool inside = true;
                int bias_index = 0;
                for (int a = 0; a < kMaxRank; ++a) {
                    const int j = kv_pos[c * kMaxRank + a];
                    inside = inside && j >= q_begin[r * kMaxRank + a] && j < q_end[r * kMaxRank + a];
                    bias_index += rpb_index(j, q_pos[r * kMaxRank + a], pr.k[a]) * pr.rpb_stride[a];
                }
                if (!inside) continue;
                float logit = sc[r * lds + c] * pr.scale_log2;
                if (pr.has_rpb) {
                    const int table = static_cast<int>(pr.bias_table());
                    logit += to_float(rpb[head * table + bias_index]) * 1.4426950408889634f;
                }
                s[i] = logit;
                tile_max = fmaxf(tile_max, logit);
            }
            tile_max = warp_max(tile_max);
            const float old_max = row_max[r];
            const float new_max = fmaxf(old_max, tile_max);
            const float base = new_max == -INFINITY ? 0.f : new_max;  // a fully masked row so far
            float part = 0.f;
            for (int i = 0, c = lane; i < (TILE + 31) / 32; ++i, c += 32) {
                const float p = exp2f(s[i] - base);
                if (c < TILE) pr_s[r * ldp + c] = p;
                part += p;
            }
            part = warp_sum(part);
            const float alpha = exp2f(old_max - base);
            __syncwarp();
            if (lane == 0) {
                row_max[r] = new_max;
                row_sum[r] = row_sum[r] * alpha + part;
            }
            for (int x = lane; x < dim; x += 32) os[r * ldo + x] *= alpha;
        }

        // Accumulate O += P . V.
        __syncthreads();
        for (int e = tid; e < TILE * dim; e += kThreads) {
            const int r = e / dim, x = e % dim;
            float acc = os[r * ldo + x];
            for (int c = 0; c < TILE; ++c) acc += pr_s[r * ldp + c] * to_float(vs[c * ldi + x]);
            os[r * ldo + x] = acc;
        }
    }
    __syncthreads();

    // Normalize and write the valid queries (every valid query has at least one key: l > 0).
    for (int r = tid; r < TILE; r += kThreads) {
        bool valid;
        row_offset[r] = slot_offset(r, first, q_pos + r * kMaxRank, valid);
    }
    __syncthreads();
    for (int e = tid; e < TILE * dim; e += kThreads) {
        const int r = e / dim, x = e % dim;
        if (q_valid[r]) out[row_offset[r] + x] = from_float<T>(os[r * ldo + x] / row_sum[r]);
    }
}

}  // namespace attnx
