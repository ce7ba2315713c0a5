// The ParoAttention plugin: the shared IPluginV3 glue (common/attentionPlugin.h) over this op's TensorRT-free
// logic (paroConfig.h) and kernel C ABI (attnx_kernels.h). Contract: README.md here.
#pragma once

#include "attentionPlugin.h"
#include "paroConfig.h"

namespace attnx {
namespace plugin {

struct ParoAttentionOp {
    using Config = ParoConfig;
    static constexpr int32_t kFixedInputs = paroAttention::kNbInputs;
    static constexpr int32_t kMaxInputs = paroAttention::kNbInputs;
    static constexpr auto parseFields = &paroAttention::parseFields;
    static constexpr auto serializeFields = &paroAttention::serializeFields;
    static constexpr auto checkInputs = &paroAttention::checkInputs;
    static constexpr auto supportsFormat = &paroAttention::supportsFormat;

    static PluginDecl const& decl() { return paroAttention::kDecl; }
    static bool takesInputCount(int32_t n) { return n == kFixedInputs; }
    static int32_t qRank(Config const&) { return 4; }
    static std::string expectedInputs(Config const&) {
        return "q, k, v, perm_idx, kv_count, kv_index with q of rank 4";
    }
    static size_t workspaceSize(Config const& cfg, TensorInfo const* largest, int32_t n);
    static attnx_status validate(Config const& cfg, TensorInfo const* inputs, int32_t n);
    static attnx_status forward(Config const& cfg, TensorInfo const* inputs, int32_t n, void const* const* data,
                                void* out, void* workspace, cudaStream_t stream);
};

using ParoAttentionPlugin = AttentionPlugin<ParoAttentionOp>;
using ParoAttentionCreator = AttentionCreator<ParoAttentionOp>;

}  // namespace plugin
}  // namespace attnx
