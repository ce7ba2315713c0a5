// TensorRT-free description of a plugin's tensors, for the shape and format rules every plugin tests
// on the CPU: the glue (pluginGlue.h) converts TensorRT's descriptors into these.
#pragma once

#include <cstdint>
#include <string>

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

// A padded-ELL block layout's two tensors (docs/ops/block_sparse_attention.md) against the attention's batch,
// heads and query-block rows (any of them -1: not known yet, not checked): `count` [B|1, H|1, rows] and `index`
// [B|1, H|1, rows, max_blocks], int32. headsExact: the heads dim must equal heads (PARO), not 1.
// Returns "" or one sentence naming the tensor, its dims and the rule.
std::string layoutProblem(TensorInfo const& count, TensorInfo const& index, int64_t batch, int64_t heads, int64_t rows,
                          bool headsExact);

}  // namespace plugin
}  // namespace attnx
