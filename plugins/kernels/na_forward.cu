// C ABI launcher: validates the parameters, picks the kernel (na_launch.h's na_path, which select_path
// reports too) and launches it. fp16/bf16 with head_dim 32/64/128 and aligned rows run the fused core
// (attn_core.cuh) with the neighborhood tile policy where it fits (with a bias: where its table fits in shared
// memory); everything else runs the first-generation generic kernel (na_fused.cuh, tile from na_launch.h).
#include <string>
#include <type_traits>

#include "attnx_abi.h"
#include "attnx_kernels.h"
#include "core_plan.h"
#include "launch_util.h"
#include "na_check.h"
#include "na_fused.cuh"
#include "na_launch.h"
#include "na_core.h"

namespace {

using attnx::fail;

using attnx::aligned16;
using attnx::current_device;
using attnx::Device;

template <typename T, int TILE>
attnx_status launch(const attnx_na_params& p, const Device& dev, size_t smem, const void* q, const void* k,
                    const void* v, const void* rpb, void* out, cudaStream_t stream) {
    const attnx::NaProblem problem = attnx::make_problem(p, TILE);
    constexpr auto kernel = attnx::na_fused_kernel<T, TILE>;
    const long long table = problem.bias_table();
    attnx_status status = ATTNX_OK;
    // gridDim.y and gridDim.z stop at 65,535: larger batch or head counts launch in chunks, with the
    // pointers offset to the chunk's first batch and head (strides stay those of the whole tensor).
    attnx::for_each_grid_chunk(p.batch, p.heads, [&](int b0, int batches, int h0, int heads) {
        if (status != ATTNX_OK) return;
        const long long offset = b0 * problem.batch_stride + static_cast<long long>(h0) * p.head_dim;
        const dim3 grid(problem.query_tiles(), heads, batches);
        // A new context (after cudaDeviceReset) starts without the shared-memory attribute although the
        // per-device cache says it is set: launch_with_smem sets it again and retries once.
        const cudaError_t launched = attnx::launch_with_smem<kernel>(dev.id, smem, [&] {
            kernel<<<grid, attnx::kThreads, smem, stream>>>(
                problem, static_cast<const T*>(q) + offset, static_cast<const T*>(k) + offset,
                static_cast<const T*>(v) + offset, rpb ? static_cast<const T*>(rpb) + h0 * table : nullptr,
                static_cast<T*>(out) + offset);
            return cudaGetLastError();  // launch errors are not sticky: this also clears them
        });
        if (launched != cudaSuccess)
            status = fail(ATTNX_CUDA_ERROR, std::string("kernel launch: ") + cudaGetErrorString(launched));
    });
    return status;
}

template <typename T>
attnx_status dispatch(const attnx_na_params& p, const Device& dev, const void* q, const void* k, const void* v,
                      const void* rpb, void* out, cudaStream_t stream) {
    // The vectorized core loads need 16-byte aligned rows; otherwise the generic path runs.
    const bool aligned = aligned16(q) && aligned16(k) && aligned16(v) && aligned16(out);
    const attnx_na_path path = attnx::na_path(p, dev.major, dev.max_smem, aligned);
    if (path == ATTNX_PATH_CORE) return attnx::na_core_forward(p, dev, q, k, v, rpb, out, stream);
    const attnx::LaunchChoice c = attnx::choose_launch(p.dtype, p.head_dim, dev.max_smem);
    switch (path == ATTNX_PATH_GENERIC ? c.tile : 0) {
        case 64: return launch<T, 64>(p, dev, c.dynamic_smem, q, k, v, rpb, out, stream);
        case 32: return launch<T, 32>(p, dev, c.dynamic_smem, q, k, v, rpb, out, stream);
        case 16: return launch<T, 16>(p, dev, c.dynamic_smem, q, k, v, rpb, out, stream);
        default:
            return fail(ATTNX_UNSUPPORTED, "head_dim=" + std::to_string(p.head_dim) +
                                               " needs more shared memory than this GPU offers per block");
    }
}

}  // namespace

extern "C" {

attnx_status attnx_na_validate(const attnx_na_params* params) {
    if (!params) return fail(ATTNX_INVALID_ARGUMENT, "params is null");
    const std::string problem = attnx::na_problem(*params);
    if (!problem.empty()) return fail(ATTNX_INVALID_ARGUMENT, problem);
    if (params->head_dim > attnx::kMaxHeadDim)
        return fail(ATTNX_UNSUPPORTED, "head_dim=" + std::to_string(params->head_dim) + " exceeds the supported maximum " +
                                           std::to_string(attnx::kMaxHeadDim));
    attnx::clear_error();
    return ATTNX_OK;
}

size_t attnx_na_workspace_size(const attnx_na_params*) { return 0; }

attnx_na_path attnx_na_select_path(const attnx_na_params* params) {
    Device dev;
    if (attnx_na_validate(params) != ATTNX_OK || !current_device(dev)) return ATTNX_PATH_NONE;
    return attnx::na_path(*params, dev.major, dev.max_smem, true);
}

attnx_status attnx_na_forward(const attnx_na_params* params, const void* q, const void* k, const void* v,
                              const void* rpb, void* out, void* /*workspace*/, size_t /*workspace_size*/,
                              cudaStream_t stream) {
    const attnx_status status = attnx_na_validate(params);
    if (status != ATTNX_OK) return status;
    if (params->batch == 0) return ATTNX_OK;
    if (!q || !k || !v || !out) return fail(ATTNX_INVALID_ARGUMENT, "q, k, v and out must be device pointers");
    if (params->has_rpb && !rpb) return fail(ATTNX_INVALID_ARGUMENT, "has_rpb is set but rpb is null");
    Device dev;
    if (!current_device(dev)) return fail(ATTNX_CUDA_ERROR, "no current CUDA device");
    if (dev.major < 8) return fail(ATTNX_UNSUPPORTED, "the kernels need compute capability 8.0 or newer");
    switch (params->dtype) {
        case ATTNX_FLOAT16: return dispatch<__half>(*params, dev, q, k, v, rpb, out, stream);
        case ATTNX_BFLOAT16: return dispatch<__nv_bfloat16>(*params, dev, q, k, v, rpb, out, stream);
        default: return dispatch<float>(*params, dev, q, k, v, rpb, out, stream);
    }
}

}  // extern "C"
