#include "paroPlugin.h"

namespace attnx {
namespace plugin {

using namespace paroAttention;  // the Input indices

size_t ParoAttentionOp::workspaceSize(Config const& cfg, TensorInfo const* largest, int32_t n) {
    if (n != kNbInputs) return 0;
    attnx_paro_params const params = kernelParams(cfg, largest);
    return attnx_paro_workspace_size(&params);
}

attnx_status ParoAttentionOp::validate(Config const& cfg, TensorInfo const* inputs, int32_t /*n*/) {
    attnx_paro_params const params = kernelParams(cfg, inputs);
    return attnx_paro_validate(&params);
}

attnx_status ParoAttentionOp::forward(Config const& cfg, TensorInfo const* inputs, int32_t /*n*/,
                                      void const* const* data, void* out, void* workspace, cudaStream_t stream) {
    attnx_paro_params const params = kernelParams(cfg, inputs);
    return attnx_paro_forward(&params, data[kQ], data[kK], data[kV], static_cast<int32_t const*>(data[kPerm]),
                              static_cast<int32_t const*>(data[kCount]), static_cast<int32_t const*>(data[kIndex]),
                              out, workspace, attnx_paro_workspace_size(&params), stream);
}

}  // namespace plugin
}  // namespace attnx
