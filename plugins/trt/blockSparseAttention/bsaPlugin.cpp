#include "bsaPlugin.h"

namespace attnx {
namespace plugin {

using namespace blockSparseAttention;  // the Input indices

size_t BlockSparseAttentionOp::workspaceSize(Config const& cfg, TensorInfo const* largest, int32_t n) {
    if (n != kNbInputs) return 0;
    attnx_bsa_params const params = kernelParams(cfg, largest);
    return attnx_bsa_workspace_size(&params);
}

attnx_status BlockSparseAttentionOp::validate(Config const& cfg, TensorInfo const* inputs, int32_t /*n*/) {
    attnx_bsa_params const params = kernelParams(cfg, inputs);
    return attnx_bsa_validate(&params);
}

attnx_status BlockSparseAttentionOp::forward(Config const& cfg, TensorInfo const* inputs, int32_t /*n*/,
                                             void const* const* data, void* out, void* workspace, cudaStream_t stream) {
    attnx_bsa_params const params = kernelParams(cfg, inputs);
    return attnx_bsa_forward(&params, data[kQ], data[kK], data[kV], static_cast<int32_t const*>(data[kCount]),
                             static_cast<int32_t const*>(data[kIndex]), out, workspace,
                             attnx_bsa_workspace_size(&params), stream);
}

}  // namespace plugin
}  // namespace attnx
