#include "naPlugin.h"

namespace attnx {
namespace plugin {

size_t NeighborhoodAttentionOp::workspaceSize(Config const& cfg, TensorInfo const* largest, int32_t n) {
    attnx_na_params const params = kernelParams(cfg, largest[0], n == 4);
    return attnx_na_workspace_size(&params);
}

attnx_status NeighborhoodAttentionOp::validate(Config const& cfg, TensorInfo const* inputs, int32_t n) {
    attnx_na_params const params = kernelParams(cfg, inputs[0], n == 4);
    return attnx_na_validate(&params);
}

attnx_status NeighborhoodAttentionOp::forward(Config const& cfg, TensorInfo const* inputs, int32_t n,
                                              void const* const* data, void* out, void* workspace, cudaStream_t stream) {
    attnx_na_params const params = kernelParams(cfg, inputs[0], n == 4);
    void const* rpb = params.has_rpb ? data[3] : nullptr;
    return attnx_na_forward(&params, data[0], data[1], data[2], rpb, out, workspace, attnx_na_workspace_size(&params),
                            stream);
}

}  // namespace plugin
}  // namespace attnx
