// The launcher's normalized view of a neighborhood-attention call: always three spatial axes (missing
// leading axes have length 1 and kernel 1), tile shapes chosen once on the host. Shared by the CUDA
// kernel and the CPU tests; the Python simulator (attn_export.models.na_kernel_sim) mirrors it.
#pragma once

#include "attnx_types.h"
#include "na_index.h"

namespace attnx {

struct NaProblem {
    int batch, heads, dim;
    int n[kMaxRank], k[kMaxRank], s[kMaxRank], d[kMaxRank], causal[kMaxRank];
    int tile[kMaxRank];            // query and kv tile shape, in group coordinates
    int tiles_per_group[kMaxRank]; // query tiles per dilation group along each axis
    int rpb_stride[kMaxRank];      // row-major strides of the [2k_0-1, 2k_1-1, 2k_2-1] bias table
    long long token_stride[kMaxRank];  // elements between neighbouring tokens along each axis
    long long batch_stride;            // elements between batches
    float scale_log2;                  // softmax scale * log2(e): the kernel works in base 2
    int has_rpb;

    // Entries of one head's bias table, prod(2k - 1) (rpb is [heads, 2k_0-1, 2k_1-1, 2k_2-1]).
    ATTNX_HD long long bias_table() const {
        return static_cast<long long>(2 * k[0] - 1) * (2 * k[1] - 1) * (2 * k[2] - 1);
    }
    ATTNX_HD int query_tiles() const {
        int count = 1;
        for (int a = 0; a < kMaxRank; ++a) count *= d[a] * tiles_per_group[a];
        return count;
    }
};

// Builds the normalized problem; p must already be valid (na_problem(p) == "").
inline NaProblem make_problem(const attnx_na_params& p, int tile_tokens) {
    NaProblem q{};
    const int pad = kMaxRank - p.rank;
    q.batch = p.batch;
    q.heads = p.heads;
    q.dim = p.head_dim;
    for (int a = 0; a < kMaxRank; ++a) {
        const bool used = a >= pad;
        q.n[a] = used ? p.spatial[a - pad] : 1;
        q.k[a] = used ? p.kernel_size[a - pad] : 1;
        q.s[a] = used ? p.stride[a - pad] : 1;
        q.d[a] = used ? p.dilation[a - pad] : 1;
        q.causal[a] = used ? p.is_causal[a - pad] : 0;
    }
    choose_tile_shape(kMaxRank, q.n, q.d, tile_tokens, q.tile);
    long long step = static_cast<long long>(p.heads) * p.head_dim;
    int bias = 1;
    for (int a = kMaxRank - 1; a >= 0; --a) {
        q.tiles_per_group[a] = ceil_div(ceil_div(q.n[a], q.d[a]), q.tile[a]);
        q.token_stride[a] = step;
        step *= q.n[a];
        q.rpb_stride[a] = bias;
        bias *= 2 * q.k[a] - 1;
    }
    q.batch_stride = step;
    const float scale = p.scale > 0.f ? p.scale : 1.f / __builtin_sqrtf(static_cast<float>(p.head_dim));
    q.scale_log2 = scale * 1.4426950408889634f;
    q.has_rpb = p.has_rpb;
    return q;
}

}  // namespace attnx
