// The NeighborhoodAttention plugin: the shared IPluginV3 glue (common/attentionPlugin.h) over this op's
// TensorRT-free logic (naConfig.h) and kernel C ABI (attnx_kernels.h). Contract: README.md here.
#pragma once

#include "attentionPlugin.h"
#include "naConfig.h"

namespace attnx {
namespace plugin {

struct NeighborhoodAttentionOp {
    using Config = NAConfig;
    static constexpr int32_t kFixedInputs = 0;  // q, k, v, and rpb where the node has one
    static constexpr int32_t kMaxInputs = 4;
    static constexpr auto parseFields = static_cast<std::string (*)(std::vector<FieldView> const&, NAConfig&)>(
        &plugin::parseFields);
    static constexpr auto serializeFields =
        static_cast<std::vector<FieldView> (*)(NAConfig const&)>(&plugin::serializeFields);
    static constexpr auto checkInputs =
        static_cast<std::string (*)(NAConfig const&, TensorInfo const*, int32_t)>(&plugin::checkInputs);
    static constexpr auto supportsFormat = &plugin::supportsFormat;

    static PluginDecl const& decl() { return neighborhoodAttention::kDecl; }
    static bool takesInputCount(int32_t n) { return n == 3 || n == 4; }
    static int32_t qRank(Config const& cfg) { return cfg.rank + 3; }
    static std::string expectedInputs(Config const& cfg) {
        return "q, k, v[, rpb] of rank " + std::to_string(cfg.rank + 3);
    }
    static size_t workspaceSize(Config const& cfg, TensorInfo const* largest, int32_t n);
    static attnx_status validate(Config const& cfg, TensorInfo const* inputs, int32_t n);
    static attnx_status forward(Config const& cfg, TensorInfo const* inputs, int32_t n, void const* const* data,
                                void* out, void* workspace, cudaStream_t stream);
};

using NeighborhoodAttentionPlugin = AttentionPlugin<NeighborhoodAttentionOp>;
using NeighborhoodAttentionCreator = AttentionCreator<NeighborhoodAttentionOp>;

}  // namespace plugin
}  // namespace attnx
