// The BlockSparseAttention plugin: the shared IPluginV3 glue (common/attentionPlugin.h) over this op's
// TensorRT-free logic (bsaConfig.h) and kernel C ABI (attnx_kernels.h). Contract: README.md here.
#pragma once

#include "attentionPlugin.h"
#include "bsaConfig.h"

namespace attnx {
namespace plugin {

struct BlockSparseAttentionOp {
    using Config = BSAConfig;
    static constexpr int32_t kFixedInputs = blockSparseAttention::kNbInputs;
    static constexpr int32_t kMaxInputs = blockSparseAttention::kNbInputs;
    static constexpr auto parseFields = &blockSparseAttention::parseFields;
    static constexpr auto serializeFields = &blockSparseAttention::serializeFields;
    static constexpr auto checkInputs = &blockSparseAttention::checkInputs;
    static constexpr auto supportsFormat = &blockSparseAttention::supportsFormat;

    static PluginDecl const& decl() { return blockSparseAttention::kDecl; }
    static bool takesInputCount(int32_t n) { return n == kFixedInputs; }
    static int32_t qRank(Config const&) { return 4; }
    static std::string expectedInputs(Config const&) { return "q, k, v, kv_count, kv_index with q of rank 4"; }
    static size_t workspaceSize(Config const& cfg, TensorInfo const* largest, int32_t n);
    static attnx_status validate(Config const& cfg, TensorInfo const* inputs, int32_t n);
    static attnx_status forward(Config const& cfg, TensorInfo const* inputs, int32_t n, void const* const* data,
                                void* out, void* workspace, cudaStream_t stream);
};

using BlockSparseAttentionPlugin = AttentionPlugin<BlockSparseAttentionOp>;
using BlockSparseAttentionCreator = AttentionCreator<BlockSparseAttentionOp>;

}  // namespace plugin
}  // namespace attnx
