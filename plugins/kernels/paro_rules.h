// PARO's numeric rules that the kernels (attn_core.cuh's P quantization, attn_generic.cuh) and the CPU tests
// share, host + device (nvcc and g++); models/paro.py, models/paro_kernel_sim.py and the ONNX function follow
// the same rules (docs/ops/paro_attention.md, Semantics).
#pragma once

#include <math.h>
#include <stdint.h>

#include "na_index.h"  // ATTNX_HD

namespace attnx {
namespace paro {

// The per-tile P scale is max(tile_max, kPTileMaxFloor) / qmax. Probabilities are <= 1 (exp of a logit minus the
// row max), so the floor bounds the online rescale p_scale_prev / p_scale by 2^30: without it, a later listed
// tile whose largest probability is ~2^-105 of an earlier one's overflowed the fp32 accumulator (inf/NaN).
// Probabilities below 2^-30 / (2 qmax) quantize to 0; an all-zero tile gets the floor's scale.
constexpr float kPTileMaxFloor = 9.313225746154785e-10f;  // 2^-30, exact in fp32

ATTNX_HD float p_tile_scale(float tile_max, float qmax) {
    return (tile_max > kPTileMaxFloor ? tile_max : kPTileMaxFloor) / qmax;
}

// P's quantization, round(p / scale) half to even, clamped to qmax (p >= 0), as the reference rounds it: the
// correctly rounded fp32 quotient, then rint. The kernel quantizes a whole tile with one scale, so it multiplies
// by the correctly rounded reciprocal instead of dividing per element (an fp32 division is ~10 instructions and
// a branch), and divides only where that can differ: y = RN(p * RN(1 / scale)) is within 1.5 * 2^-23 * y of
// the exact quotient and RN(p / scale) within 2^-24 of it, so below qmax + 1 (y < 128) the two are less than
// 2^-15.4 apart and round to the same integer unless y lies within kPNearHalf of a half-integer; at or above
// qmax + 1 both clamp to qmax. quantize_p_fast sets `near` for those y; the caller then divides
// (quantize_p_exact). tests/test_native_paro_rules.py checks both against the reference on the host, boundary
// cases included.
constexpr float kPNearHalf = 6.103515625e-05f;  // 2^-14

ATTNX_HD float p_tile_reciprocal(float scale) {
#ifdef __CUDA_ARCH__
    return __frcp_rn(scale);
#else
    return 1.0f / scale;
#endif
}

ATTNX_HD float quantize_p_exact(float p, float scale, float qmax) {
#ifdef __CUDA_ARCH__
    const float q = rintf(__fdiv_rn(p, scale));
#else
    const float q = rintf(p / scale);
#endif
    return q < qmax ? q : qmax;
}

ATTNX_HD float quantize_p_fast(float p, float reciprocal, float qmax, bool& near) {
#ifdef __CUDA_ARCH__
    const float y = __fmul_rn(p, reciprocal);  // never contracted into an FMA: the bound above needs RN(p * r)
    const float q = rintf(y);
    const float off = fabsf(__fsub_rn(y, q));  // exact: |y - rint(y)| <= 1/2
#else
    const float y = p * reciprocal;
    const float q = rintf(y);
    const float off = fabsf(y - q);
#endif
    near = near || off >= 0.5f - kPNearHalf;
    return q < qmax ? q : qmax;
}

// The original index of the token at permuted position `position` of one head's perm_idx row, clamped into
// [0, seq) like kv_index entries (block_layout.h): an invalid permutation can never make a kernel read or write
// outside q, k, v and out. Every perm_idx read of the kernels goes through here (tests/test_native_paro_rules.py).
ATTNX_HD int permuted(const int32_t* perm_row, int position, int seq) {
    const int32_t index = perm_row[position];
    return index < 0 ? 0 : (index >= seq ? seq - 1 : index);
}

}  // namespace paro
}  // namespace attnx
