// TensorRT-free description of a plugin's tensors, for the shape and format rules every plugin tests
// on the CPU: the glue (pluginGlue.h) converts TensorRT's descriptors into these.
#pragma once

#include <cstdint>
#include <string>

namespace attnx {
namespace plugin {

enum class DType { kFloat32, kFloat16, kBFloat16, kOther };

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

}  // namespace plugin
}  // namespace attnx
