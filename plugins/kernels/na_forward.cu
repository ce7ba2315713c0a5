// C ABI launcher: validates the parameters, picks the kernel path and tile, and launches.
#include <string>

#include "attnx_kernels.h"
#include "na_check.h"
#include "na_fused.cuh"

namespace {

thread_local std::string g_last_error;

attnx_status fail(attnx_status status, const std::string& message) {
    g_last_error = message;
    return status;
}

struct Device {
    int major = 0;
    int max_smem = 0;  // opt-in dynamic shared memory per block
};

bool current_device(Device& dev) {
    int id = 0;
    if (cudaGetDevice(&id) != cudaSuccess) return false;
    if (cudaDeviceGetAttribute(&dev.major, cudaDevAttrComputeCapabilityMajor, id) != cudaSuccess) return false;
    return cudaDeviceGetAttribute(&dev.max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, id) == cudaSuccess;
}

bool tensor_core_head_dim(int dim) { return dim == 32 || dim == 64 || dim == 128; }

template <typename T>
size_t tensor_core_smem(int dim) { return attnx::SmemPlan<T, 64, true>::total(dim); }

template <typename T, int TILE>
size_t generic_smem(int dim) { return attnx::SmemPlan<T, TILE, false>::total(dim); }

template <typename T>
int generic_tile(int dim, int max_smem) {
    if (generic_smem<T, 64>(dim) <= static_cast<size_t>(max_smem)) return 64;
    if (generic_smem<T, 32>(dim) <= static_cast<size_t>(max_smem)) return 32;
    if (generic_smem<T, 16>(dim) <= static_cast<size_t>(max_smem)) return 16;
    return 0;
}

template <typename T>
attnx_na_path select_path(const attnx_na_params& p, const Device& dev) {
    if (p.dtype != ATTNX_FLOAT32 && tensor_core_head_dim(p.head_dim) && dev.major >= 8 &&
        tensor_core_smem<T>(p.head_dim) <= static_cast<size_t>(dev.max_smem))
        return ATTNX_PATH_TENSOR_CORE;
    return generic_tile<T>(p.head_dim, dev.max_smem) ? ATTNX_PATH_GENERIC : ATTNX_PATH_NONE;
}

bool aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15) == 0; }

template <typename T, int TILE, bool TC>
attnx_status launch(const attnx_na_params& p, const void* q, const void* k, const void* v, const void* rpb, void* out,
                    cudaStream_t stream) {
    const attnx::NaProblem problem = attnx::make_problem(p, TILE);
    const size_t smem = attnx::SmemPlan<T, TILE, TC>::total(p.head_dim);
    auto kernel = attnx::na_fused_kernel<T, TILE, TC>;
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (err != cudaSuccess) return fail(ATTNX_CUDA_ERROR, std::string("cudaFuncSetAttribute: ") + cudaGetErrorString(err));
    const dim3 grid(problem.query_tiles(), p.heads, p.batch);
    kernel<<<grid, attnx::kThreads, smem, stream>>>(problem, static_cast<const T*>(q), static_cast<const T*>(k),
                                                    static_cast<const T*>(v), static_cast<const T*>(rpb),
                                                    static_cast<T*>(out));
    err = cudaGetLastError();
    if (err != cudaSuccess) return fail(ATTNX_CUDA_ERROR, std::string("kernel launch: ") + cudaGetErrorString(err));
    return ATTNX_OK;
}

template <typename T>
attnx_status dispatch(const attnx_na_params& p, const Device& dev, const void* q, const void* k, const void* v,
                      const void* rpb, void* out, cudaStream_t stream) {
    attnx_na_path path = select_path<T>(p, dev);
    // The vectorized tensor-core loads need 16-byte aligned rows; fall back rather than fault.
    if (path == ATTNX_PATH_TENSOR_CORE && !(aligned16(q) && aligned16(k) && aligned16(v) && aligned16(out)))
        path = generic_tile<T>(p.head_dim, dev.max_smem) ? ATTNX_PATH_GENERIC : ATTNX_PATH_NONE;
    if constexpr (!std::is_same<T, float>::value) {
        if (path == ATTNX_PATH_TENSOR_CORE) return launch<T, 64, true>(p, q, k, v, rpb, out, stream);
    }
    switch (path == ATTNX_PATH_GENERIC ? generic_tile<T>(p.head_dim, dev.max_smem) : 0) {
        case 64: return launch<T, 64, false>(p, q, k, v, rpb, out, stream);
        case 32: return launch<T, 32, false>(p, q, k, v, rpb, out, stream);
        case 16: return launch<T, 16, false>(p, q, k, v, rpb, out, stream);
        default:
            return fail(ATTNX_UNSUPPORTED, "head_dim=" + std::to_string(p.head_dim) +
                                               " needs more shared memory than this GPU offers per block");
    }
}

}  // namespace

extern "C" {

int32_t attnx_abi_version(void) { return ATTNX_ABI_VERSION; }

const char* attnx_last_error(void) { return g_last_error.c_str(); }

attnx_status attnx_na_validate(const attnx_na_params* params) {
    if (!params) return fail(ATTNX_INVALID_ARGUMENT, "params is null");
    const std::string problem = attnx::na_problem(*params);
    if (!problem.empty()) return fail(ATTNX_INVALID_ARGUMENT, problem);
    if (params->head_dim > attnx::kMaxHeadDim)
        return fail(ATTNX_UNSUPPORTED, "head_dim=" + std::to_string(params->head_dim) + " exceeds the supported maximum " +
                                           std::to_string(attnx::kMaxHeadDim));
    g_last_error.clear();
    return ATTNX_OK;
}

size_t attnx_na_workspace_size(const attnx_na_params*) { return 0; }

attnx_na_path attnx_na_select_path(const attnx_na_params* params) {
    Device dev;
    if (attnx_na_validate(params) != ATTNX_OK || !current_device(dev)) return ATTNX_PATH_NONE;
    switch (params->dtype) {
        case ATTNX_FLOAT16: return select_path<__half>(*params, dev);
        case ATTNX_BFLOAT16: return select_path<__nv_bfloat16>(*params, dev);
        default: return select_path<float>(*params, dev);
    }
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
