// Which kernel a block-sparse, PARO or neighborhood call runs (host, no CUDA include: the CPU tests and the
// plugins use it), the core's shared memory, and PARO's workspace layout.
#pragma once

#include <stddef.h>

#include "attnx_types.h"

namespace attnx {

constexpr int kCoreTile = 64;  // attn_core.cuh's kBlockM (a row tile) == kBlockN (a kv tile)

constexpr bool core_head_dim(int dim) { return dim == 32 || dim == 64 || dim == 128; }

// Dynamic shared memory of the core: a Q tile of row_tiles x 64 rows and `stages` stages of K and V tiles
// (2-byte elements), plus PARO's tile-max exchange (2 x 4 floats). Must match attn_core.cuh's
// Geometry::kSmemBytes.
constexpr size_t core_smem_bytes(int dim, int row_tiles = 1, int stages = 2) {
    return size_t(2) * kCoreTile * dim * (row_tiles + 2 * stages) + 2 * 4 * sizeof(float);
}

// The core's cp.async ring can hold 3 kv tiles (2 in flight while one is computed) at head_dim <= 64 only: a
// third stage at head_dim 128 (+32 KB) halves sm_90's blocks per SM. These instances compile for sm_90 only
// (a trap elsewhere, like the 128-query tiles).
constexpr bool core_has_three_stages(int dim) { return dim <= 64; }

// Stages of the ring: 3 on sm_90 at head_dim <= 64, where the third stage costs no block per SM (227 KB of
// shared memory per SM: the register file, not shared memory, limits those kernels; bench/kernel_report.py's
// --ci checks it) and hides twice the load latency per block; on sm_80 (163 KB) and sm_86/89 (99 KB) it would
// cost blocks, and where the block's extra shared memory (`extra`: the neighborhood's static state) would not
// fit, 2. cc_major: launch_util.h's code_arch (the device's when the code it runs was compiled for it, else 0).
inline int core_stages(int dim, int row_tiles, int cc_major, size_t max_smem, size_t extra = 0) {
    return cc_major == 9 && core_has_three_stages(dim) && core_smem_bytes(dim, row_tiles, 3) + extra <= max_smem ? 3 : 2;
}

// The core: fp16/bf16, head_dim 32/64/128, sm_80+, 16-byte aligned tensors, enough shared memory.
inline bool core_fits(int dtype, int dim, int cc_major, size_t max_smem, bool aligned) {
    return dtype != ATTNX_FLOAT32 && core_head_dim(dim) && cc_major >= 8 && aligned && core_smem_bytes(dim) <= max_smem;
}

// The neighborhood policy's static shared memory (its per-block state and slot coordinates) is at most this;
// attn_policies.cuh checks it. It counts against the same per-block limit as the dynamic memory.
constexpr size_t kNaStaticSmem = 2048;

// Neighborhood with a bias: the core stages the head's table (prod(2k-1) floats) in shared memory next to its
// tiles; where that does not fit on this device, the first-generation kernel takes the call.
constexpr bool na_rpb_staged(long long table, int dim, size_t max_smem) {
    return core_smem_bytes(dim) + kNaStaticSmem + sizeof(float) * static_cast<size_t>(table) <= max_smem;
}

// Block-sparse: the core needs a query block of whole 64-query tiles (any block_kv: listed blocks are read
// as one virtual key sequence); else the generic kernel.
inline attnx_path bsa_path(const attnx_bsa_params& p, int cc_major, size_t max_smem, bool aligned) {
    if (cc_major < 8) return ATTNX_PATH_NONE;
    return core_fits(p.dtype, p.head_dim, cc_major, max_smem, aligned) && p.block_q % kCoreTile == 0 ? ATTNX_PATH_CORE
                                                                                                      : ATTNX_PATH_GENERIC;
}

// Block-sparse on the core: 128-query tiles (2 row tiles: each warp's K/V fragment loads feed two MMAs, each
// K/V tile read serves 128 queries) when query blocks hold whole 128-query tiles, the larger Q tile fits in shared
// memory and the device and its code are sm_90 (cc_major: launch_util.h's code_arch; on sm_80/86 ptxas spills
// these instances in their main loop, so they compile to a trap there; bench/kernel_report.py checks both); else
// 64-query tiles. (At head_dim 128 the core runs each 64-key tile in two 32-key steps: attn_core.cuh's
// core_split.)
inline int bsa_row_tiles(const attnx_bsa_params& p, int cc_major, size_t max_smem) {
    return cc_major == 9 && p.block_q % (2 * kCoreTile) == 0 && core_smem_bytes(p.head_dim, 2) <= max_smem ? 2 : 1;
}

// PARO: the core needs block == 64 (a query tile is one query block, a kv tile one listed block, so its
// per-tile P scale is the reference's); else the generic kernel.
inline attnx_path paro_path(const attnx_paro_params& p, int cc_major, size_t max_smem, bool aligned) {
    if (cc_major < 8) return ATTNX_PATH_NONE;
    return core_fits(p.dtype, p.head_dim, cc_major, max_smem, aligned) && p.block == kCoreTile ? ATTNX_PATH_CORE
                                                                                               : ATTNX_PATH_GENERIC;
}

// The generic kernel keeps one float per listed block in shared memory when P is quantized.
inline size_t generic_smem_bytes(int max_blocks, bool quant_p) { return quant_p ? sizeof(float) * (max_blocks + 1) : 0; }

inline int bytes_of(int dtype) { return dtype == ATTNX_FLOAT32 ? 4 : 2; }

// Tokens per CTA of the pre-pass's channel statistics (paro_prepass.cuh), and their chunks per (batch, head).
constexpr int kParoStatsChunk = 256;
inline int paro_stats_chunks(int seq) { return (seq + kParoStatsChunk - 1) / kParoStatsChunk; }

// PARO's workspace (the pre-pass's output), in 256-byte aligned segments; a segment is empty when its
// quantization is off. Both kernels read the same layout.
struct ParoWorkspace {
    size_t q, k, v;                         // integer-valued operands [B, H, N, D], permuted order, input type
    size_t q_scale, k_scale, k_mean, v_scale;  // float
    size_t k_sum_parts, v_amax_parts;       // float [B, H, chunks, D]: the channel statistics' per-chunk partials
    size_t total;
};

inline size_t align256(size_t bytes) { return (bytes + 255) & ~size_t(255); }

inline ParoWorkspace paro_workspace(const attnx_paro_params& p) {
    const size_t rows = size_t(p.batch) * p.heads;
    const size_t operand = align256(rows * size_t(p.seq) * p.head_dim * bytes_of(p.dtype));
    const bool qk = p.qk_bits < 16, pv = p.pv_bits < 16;
    ParoWorkspace w{};
    size_t at = 0;
    auto take = [&](size_t bytes) { const size_t here = at; at += align256(bytes); return here; };
    w.q = take(qk ? operand : 0);
    w.k = take(qk ? operand : 0);
    w.v = take(pv ? operand : 0);
    w.q_scale = take(qk ? sizeof(float) * rows * size_t((p.seq + p.q_group - 1) / p.q_group) : 0);
    w.k_scale = take(qk ? sizeof(float) * rows * size_t((p.seq + p.k_group - 1) / p.k_group) : 0);
    w.k_mean = take(qk && p.smooth_k ? sizeof(float) * rows * p.head_dim : 0);
    w.v_scale = take(pv ? sizeof(float) * rows * p.head_dim : 0);
    const size_t parts = sizeof(float) * rows * size_t(paro_stats_chunks(p.seq)) * p.head_dim;
    w.k_sum_parts = take(qk && p.smooth_k ? parts : 0);
    w.v_amax_parts = take(pv ? parts : 0);
    w.total = at;
    return w;
}

}  // namespace attnx
