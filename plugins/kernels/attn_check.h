// Host-side validation of the block-sparse and PARO parameter structs (docs/ops/block_sparse_attention.md,
// docs/ops/paro_attention.md), shared by the launchers and the TensorRT plugins (no CUDA, no TensorRT).
#pragma once

#include <string>

#include "attnx_types.h"
#include "na_check.h"  // kMaxHeadDim

namespace attnx {

inline int ceil_blocks(int n, int b) { return b > 0 ? (n + b - 1) / b : 0; }

inline std::string dtype_problem(int dtype) {
    if (dtype != ATTNX_FLOAT32 && dtype != ATTNX_FLOAT16 && dtype != ATTNX_BFLOAT16)
        return "dtype=" + std::to_string(dtype) + " must be float32, float16 or bfloat16";
    return "";
}

// The layout's dims against batch, heads and the number of query blocks; `heads_exact`: PARO's layouts
// carry one row set per head ([1|B, heads, ...]), block-sparse ones may broadcast over heads too.
inline std::string layout_problem(const attnx_block_layout& l, int batch, int heads, int rows, bool heads_exact) {
    if (l.rows != rows)
        return "the layout has " + std::to_string(l.rows) + " query-block rows; the sequence needs " + std::to_string(rows);
    if (l.max_blocks < 0) return "max_blocks=" + std::to_string(l.max_blocks) + " is negative";
    const auto dim_ok = [&](int v, int full, bool exact) { return v == full || (v == 1 && (!exact || full == 1)); };
    if (!dim_ok(l.count_batch, batch, false) || !dim_ok(l.index_batch, batch, false))
        return "kv_count / kv_index lead with " + std::to_string(l.count_batch) + " / " + std::to_string(l.index_batch) +
               " batches; each must be 1 or batch=" + std::to_string(batch);
    if (!dim_ok(l.count_heads, heads, heads_exact) || !dim_ok(l.index_heads, heads, heads_exact))
        return "kv_count / kv_index have " + std::to_string(l.count_heads) + " / " + std::to_string(l.index_heads) +
               " heads; each must be " + (heads_exact ? "" : "1 or ") + "heads=" + std::to_string(heads);
    return "";
}

inline std::string bsa_problem(const attnx_bsa_params& p) {
    if (p.batch < 0 || p.heads < 1 || p.head_dim < 1 || p.seq_q < 0 || p.seq_kv < 0)
        return "batch=" + std::to_string(p.batch) + ", heads=" + std::to_string(p.heads) + ", seq_q=" +
               std::to_string(p.seq_q) + ", seq_kv=" + std::to_string(p.seq_kv) + ", head_dim=" +
               std::to_string(p.head_dim) + ": counts must be non-negative, heads and head_dim positive";
    if (p.block_q < 1 || p.block_kv < 1)
        return "block_q=" + std::to_string(p.block_q) + ", block_kv=" + std::to_string(p.block_kv) + " must be positive";
    std::string problem = dtype_problem(p.dtype);
    if (problem.empty()) problem = layout_problem(p.layout, p.batch, p.heads, ceil_blocks(p.seq_q, p.block_q), false);
    return problem;
}

inline std::string paro_problem(const attnx_paro_params& p) {
    if (p.batch < 0 || p.heads < 1 || p.head_dim < 1 || p.seq < 0)
        return "batch=" + std::to_string(p.batch) + ", heads=" + std::to_string(p.heads) + ", seq=" + std::to_string(p.seq) +
               ", head_dim=" + std::to_string(p.head_dim) + ": counts must be non-negative, heads and head_dim positive";
    if (p.block < 1 || p.q_group < 1 || p.k_group < 1)
        return "block=" + std::to_string(p.block) + ", q_group=" + std::to_string(p.q_group) + ", k_group=" +
               std::to_string(p.k_group) + " must be positive";
    for (int bits : {p.qk_bits, p.pv_bits})
        if (bits != 16 && bits != 8 && bits != 4)
            return "qk_bits=" + std::to_string(p.qk_bits) + ", pv_bits=" + std::to_string(p.pv_bits) +
                   ": each must be 16 (no quantization), 8 or 4";
    if (p.smooth_k != 0 && p.smooth_k != 1) return "smooth_k=" + std::to_string(p.smooth_k) + " must be 0 or 1";
    std::string problem = dtype_problem(p.dtype);
    if (problem.empty()) problem = layout_problem(p.layout, p.batch, p.heads, ceil_blocks(p.seq, p.block), true);
    return problem;
}

// Valid but beyond the kernels (ATTNX_UNSUPPORTED): "" when a kernel takes it.
inline std::string head_dim_unsupported(int head_dim) {
    if (head_dim > kMaxHeadDim)
        return "head_dim=" + std::to_string(head_dim) + " exceeds the supported maximum " + std::to_string(kMaxHeadDim);
    return "";
}

}  // namespace attnx
