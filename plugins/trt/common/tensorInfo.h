// TensorRT-free description of a plugin's tensors, for the shape and format rules every plugin tests
// on the CPU: the glue (pluginGlue.h) converts TensorRT's descriptors into these.
#pragma once

#include <cstdint>
#include <string>

#include "attnx_types.h"

namespace attnx {
namespace plugin {

enum class DType { kFloat32, kFloat16, kBFloat16, kInt32, kOther };

// One tensor as TensorRT describes it at build time: type, linear format or not, rank and dims
// (-1 for a dimension that is still dynamic).
struct TensorInfo {
    DType type;
    bool linear;
    int32_t nbDims;
    int64_t dims[8];
};

// Whether a dimension is known (build-time dims of a dynamic profile may be -1).
inline bool isKnownDim(int64_t d) { return d >= 0; }

// "[2,16,16,4,32]", for messages.
std::string dimsText(TensorInfo const& t);

inline bool isFloatType(DType t) { return t == DType::kFloat32 || t == DType::kFloat16 || t == DType::kBFloat16; }

// The padded-ELL block layout inputs (docs/ops/block_sparse_attention.md) every block-sparse plugin takes
// (BlockSparseAttention, ParoAttention): one home for their shape rules and their kernel parameters.
//
// `count` [B|1, H|1, rows] and `index` [B|1, H|1, rows, max_blocks], int32, against q [B, H, S, D] whose query
// blocks are `block` tokens (rows = ceil(S / block); dims not known yet, -1, are not checked). headsExact: the
// heads dim must equal H (PARO: one layout per head), not 1. Returns "" or one sentence naming the tensor, its
// dims and the rule, ending in "(rows = ceil(<seqName> / <blockField>=<block>))" where the rows disagree.
std::string layoutProblem(TensorInfo const& q, TensorInfo const& count, TensorInfo const& index, int32_t block,
                          char const* seqName, char const* blockField, bool headsExact);

// The kernels' view of a checked layout (attnx_block_layout) from the two tensors' concrete dims.
attnx_block_layout layoutParams(TensorInfo const& count, TensorInfo const& index);

}  // namespace plugin
}  // namespace attnx
