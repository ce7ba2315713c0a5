// Host-side validation of attnx_na_params against docs/ops/neighborhood_attention.md (Semantics), shared by
// the launcher and the TensorRT plugin (no CUDA, no TensorRT: unit-tested on the CPU).
#pragma once

#include <string>

#include "attnx_types.h"

namespace attnx {

constexpr int kMaxHeadDim = 256;

// The rules of one axis's window that need no input shape (also what the plugin checks on its fields).
inline std::string window_problem(int k, int s, int d, int causal, int a) {
    const std::string where = " on axis " + std::to_string(a);
    if (k < 2) return "kernel_size=" + std::to_string(k) + where + " is below the minimum 2";
    if (s < 1 || s > k)
        return "stride=" + std::to_string(s) + where + " must lie in [1, kernel_size=" + std::to_string(k) + "]";
    if (d < 1) return "dilation=" + std::to_string(d) + where + " is below the minimum 1";
    if (causal != 0 && causal != 1) return "is_causal=" + std::to_string(causal) + where + " must be 0 or 1";
    return "";
}

inline std::string axis_problem(const attnx_na_params& p, int a) {
    const int n = p.spatial[a], k = p.kernel_size[a], d = p.dilation[a];
    std::string problem = window_problem(k, p.stride[a], d, p.is_causal[a], a);
    if (problem.empty() && static_cast<long long>(k) * d > n)
        problem = "kernel_size*dilation=" + std::to_string(k) + "*" + std::to_string(d) + " on axis " + std::to_string(a) +
                  " exceeds the axis length " + std::to_string(n) + "; use a smaller kernel or dilation";
    return problem;
}

// "" when p is valid; otherwise one sentence naming the parameter, the axis and the limit.
inline std::string na_problem(const attnx_na_params& p) {
    if (p.rank < 1 || p.rank > ATTNX_MAX_RANK)
        return "rank=" + std::to_string(p.rank) + " must be 1, 2 or 3 spatial axes";
    if (p.batch < 0 || p.heads < 1 || p.head_dim < 1)
        return "batch=" + std::to_string(p.batch) + ", heads=" + std::to_string(p.heads) + ", head_dim=" +
               std::to_string(p.head_dim) + " must be non-negative, positive and positive";
    if (p.dtype != ATTNX_FLOAT32 && p.dtype != ATTNX_FLOAT16 && p.dtype != ATTNX_BFLOAT16)
        return "dtype=" + std::to_string(p.dtype) + " must be float32, float16 or bfloat16";
    for (int a = 0; a < p.rank; ++a) {
        std::string problem = axis_problem(p, a);
        if (!problem.empty()) return problem;
    }
    if (p.has_rpb)
        for (int a = 0; a < p.rank; ++a)
            if (p.is_causal[a]) return "a relative position bias is not defined for causal axis " + std::to_string(a);
    return "";
}

}  // namespace attnx
