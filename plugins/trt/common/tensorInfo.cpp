#include "tensorInfo.h"

namespace attnx {
namespace plugin {

std::string dimsText(TensorInfo const& t) {
    std::string s = "[";
    for (int32_t i = 0; i < t.nbDims; ++i) s += (i ? "," : "") + std::to_string(t.dims[i]);
    return s + "]";
}

}  // namespace plugin
}  // namespace attnx
