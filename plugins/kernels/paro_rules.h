// PARO's numeric rules that the kernels (attn_core.cuh's P quantization, attn_generic.cuh) and the CPU tests
// share, host + device (nvcc and g++); models/paro.py, models/paro_kernel_sim.py and the ONNX function follow
// the same rules (docs/ops/paro_attention.md, Semantics).
#pragma once

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

// The original index of the token at permuted position `position` of one head's perm_idx row, clamped into
// [0, seq) like kv_index entries (block_layout.h): an invalid permutation can never make a kernel read or write
// outside q, k, v and out. Every perm_idx read of the kernels goes through here (tests/test_native_paro_rules.py).
ATTNX_HD int permuted(const int32_t* perm_row, int position, int seq) {
    const int32_t index = perm_row[position];
    return index < 0 ? 0 : (index >= seq ? seq - 1 : index);
}

}  // namespace paro
}  // namespace attnx
