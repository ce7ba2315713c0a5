// Neighborhood-attention index math shared by the CUDA kernels, the host launcher, the TensorRT plugin
// and the CPU unit tests (compiled by both nvcc and g++). docs/ops/neighborhood_attention.md defines the windows;
// tests/test_native_index.py checks every function here against the Python reference formula.
#pragma once

#include <stdint.h>

#if defined(__CUDACC__)
#define ATTNX_HD __host__ __device__ __forceinline__
#else
#define ATTNX_HD inline
#endif

namespace attnx {

constexpr int kMaxRank = 3;

// A half-open index range [begin, end).
struct Range {
    int begin;
    int end;
};

// Number of positions of dilation group g on an axis of length n with dilation d.
ATTNX_HD int group_length(int n, int d, int g) { return (n - g + d - 1) / d; }

// Keys (in group coordinates j' = j div d) seen by the query at group coordinate ip.
// n_g: group length, k: kernel, s: stride. Non-causal windows always hold exactly k keys.
ATTNX_HD Range window(int ip, int n_g, int k, int s, bool causal) {
    if (causal) {
        int leader = (ip / s) * s + s - 1;
        leader = leader < n_g - 1 ? leader : n_g - 1;
        int begin = leader - k + 1;
        int end = ip + 1 < n_g ? ip + 1 : n_g;
        return Range{begin > 0 ? begin : 0, end};
    }
    int left = k / 2;
    int right = k / 2 + k % 2 - 1;
    int leader = (ip / s) * s + s / 2;
    leader = leader < n_g - 1 ? leader : n_g - 1;
    int center = leader < n_g - 1 - right ? leader : n_g - 1 - right;
    center = center > left ? center : left;
    return Range{center - left, center - left + k};
}

// Keys touched by the query tile [q_first, q_last] (group coordinates, inclusive): window begins and
// ends are non-decreasing in the query index, so the union is [begin(q_first), end(q_last)).
ATTNX_HD Range tile_kv_range(int q_first, int q_last, int n_g, int k, int s, bool causal) {
    Range lo = window(q_first, n_g, k, s, causal);
    Range hi = window(q_last, n_g, k, s, causal);
    return Range{lo.begin, hi.end};
}

// Whether the kv tile [kv_first, kv_first + tile) of one axis lies inside the window of every query in
// [q_first, q_last] and below kv_end: windows are monotone in the query index, so the first and the last
// query decide, exactly. A kv tile interior on every axis needs no element mask (the core skips it).
ATTNX_HD bool kv_tile_interior(int q_first, int q_last, int kv_first, int tile, int kv_end, int n_g, int k, int s,
                               bool causal) {
    const int lo = window(q_last, n_g, k, s, causal).begin;
    const int hi = window(q_first, n_g, k, s, causal).end;
    const int kv_last = kv_first + tile - 1;
    return kv_first >= lo && kv_last < hi && kv_last < kv_end;
}

// Bits [lo, hi) of a 64-bit word; empty when hi <= lo (both clamped into [0, 64]).
ATTNX_HD uint64_t bit_run(int lo, int hi) {
    lo = lo < 0 ? 0 : lo;
    hi = hi > 64 ? 64 : hi;
    if (hi <= lo) return 0;
    const uint64_t below_hi = hi == 64 ? ~0ull : (1ull << hi) - 1;
    return below_hi & ~((1ull << lo) - 1);
}

// A pattern of `period` bits (a power of two <= 64) repeated over the word.
ATTNX_HD uint64_t repeat_bits(uint64_t pattern, int period) {
    return period >= 64 ? pattern : pattern * (~0ull / ((1ull << period) - 1));
}

// The element mask of one query over the slots of one kv tile, as 64 bits: bit c is set iff slot c (row-major
// over the tile shape, axis 2 fastest; tile dims powers of two, at most 64 slots) is a real key, below kv_end,
// inside the query's window [q_begin, q_end) on every axis. origin: the kv tile's first key per axis (group
// coordinates). On each axis the kept local coordinates are one interval, so the mask is an AND of repeated
// bit runs: a few integer operations per query and tile instead of a window test per element. A tile whose
// mask is full for every query of a warp needs no element mask, for any window size.
ATTNX_HD uint64_t slot_keep_mask(const int* tile, const int* origin, const int* kv_end, const int* q_begin,
                                 const int* q_end) {
    uint64_t mask = ~0ull;
    int period = 1;  // slots per step of the axis
    for (int a = kMaxRank - 1; a >= 0; --a) {
        const int lo = (q_begin[a] > origin[a] ? q_begin[a] : origin[a]) - origin[a];
        int hi = (q_end[a] < kv_end[a] ? q_end[a] : kv_end[a]) - origin[a];
        hi = hi < tile[a] ? hi : tile[a];
        const int span = period * tile[a];
        mask &= repeat_bits(bit_run(lo * period, hi * period), span);
        period = span;
    }
    return mask & bit_run(0, period);  // slots past the tile's tokens hold no key
}

// Relative-position-bias index of key jp for query ip on one axis, in [0, 2k-2] inside the window.
ATTNX_HD int rpb_index(int jp, int ip, int k) { return jp - ip + k - 1; }

ATTNX_HD int ceil_div(int a, int b) { return (a + b - 1) / b; }

// Query-tile shape (in group coordinates) holding at most `tile_tokens` queries (a power of two).
// Doubles one axis at a time, innermost axis first, while the axis still has room: a tile never
// extends far past the longest dilation group of its axis. kv tiles use the same shape.
ATTNX_HD void choose_tile_shape(int rank, const int* n, const int* d, int tile_tokens, int* shape) {
    int cap[kMaxRank];
    for (int a = 0; a < rank; ++a) {
        shape[a] = 1;
        cap[a] = ceil_div(n[a], d[a]);
    }
    int tokens = 1;
    bool grew = true;
    while (grew && tokens * 2 <= tile_tokens) {
        grew = false;
        for (int a = rank - 1; a >= 0 && tokens * 2 <= tile_tokens; --a) {
            if (shape[a] < cap[a]) {
                shape[a] *= 2;
                tokens *= 2;
                grew = true;
            }
        }
    }
}

// Query tiles along one axis: every dilation group gets ceil(ceil(n/d) / tile) tiles (groups shorter
// than the longest one may leave their last tile empty; the kernel skips empty slots).
ATTNX_HD int tiles_per_axis(int n, int d, int tile) { return d * ceil_div(ceil_div(n, d), tile); }

}  // namespace attnx
