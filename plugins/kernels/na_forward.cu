// C ABI launcher: validates the parameters, picks the kernel path and tile (na_launch.h), and launches.
#include <algorithm>
#include <atomic>
#include <mutex>
#include <string>

#include "attnx_abi.h"
#include "attnx_kernels.h"
#include "na_check.h"
#include "na_fused.cuh"
#include "na_launch.h"

namespace {

using attnx::fail;

struct Device {
    int id = 0;
    int major = 0;
    int max_smem = 0;  // opt-in shared memory per block (dynamic + static)
};

// Per-device attributes, queried once per device instead of on every launch (enqueue is hot).
constexpr int kCachedDevices = 64;
std::atomic<int> g_major[kCachedDevices];     // 0: not queried yet
std::atomic<int> g_max_smem[kCachedDevices];  // published before g_major

bool query(int id, Device& dev) {
    return cudaDeviceGetAttribute(&dev.major, cudaDevAttrComputeCapabilityMajor, id) == cudaSuccess &&
           cudaDeviceGetAttribute(&dev.max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, id) == cudaSuccess;
}

bool current_device(Device& dev) {
    if (cudaGetDevice(&dev.id) != cudaSuccess) return false;
    if (dev.id < 0 || dev.id >= kCachedDevices) return query(dev.id, dev);
    dev.major = g_major[dev.id].load(std::memory_order_acquire);
    if (dev.major > 0) {
        dev.max_smem = g_max_smem[dev.id].load(std::memory_order_relaxed);
        return true;
    }
    if (!query(dev.id, dev)) return false;
    g_max_smem[dev.id].store(dev.max_smem, std::memory_order_relaxed);
    g_major[dev.id].store(dev.major, std::memory_order_release);
    return true;
}

bool aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15) == 0; }

// cudaFuncSetAttribute(MaxDynamicSharedMemorySize) once per kernel instantiation, device number and
// larger size, not on every launch. The mutex keeps a smaller size from overwriting a larger one.
// The attribute really belongs to the CUDA context, which the cache cannot see (cudaDeviceReset, or a
// second context on the same device): `force` sets it again whatever the cache says (see launch).
template <typename T, int TILE, bool TC>
cudaError_t allow_dynamic_smem(int device, size_t bytes, bool force = false) {
    static std::atomic<size_t> allowed[kCachedDevices];
    static std::mutex mutex;
    const bool cached = device >= 0 && device < kCachedDevices;
    if (!force && cached && bytes <= allowed[device].load(std::memory_order_acquire)) return cudaSuccess;
    std::lock_guard<std::mutex> lock(mutex);
    if (!force && cached && bytes <= allowed[device].load(std::memory_order_acquire)) return cudaSuccess;
    const size_t size = cached ? std::max(bytes, allowed[device].load(std::memory_order_acquire)) : bytes;
    const cudaError_t err = cudaFuncSetAttribute(attnx::na_fused_kernel<T, TILE, TC>,
                                                 cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(size));
    if (err == cudaSuccess && cached) allowed[device].store(size, std::memory_order_release);
    return err;
}

// What a launch reports when the context lacks the shared-memory attribute the cache believed set.
bool missing_smem_attribute(cudaError_t err) {
    return err == cudaErrorInvalidValue || err == cudaErrorLaunchOutOfResources;
}

template <typename T, int TILE, bool TC>
attnx_status launch(const attnx_na_params& p, const Device& dev, size_t smem, const void* q, const void* k,
                    const void* v, const void* rpb, void* out, cudaStream_t stream) {
    const attnx::NaProblem problem = attnx::make_problem(p, TILE);
    cudaError_t err = allow_dynamic_smem<T, TILE, TC>(dev.id, smem);
    if (err != cudaSuccess) return fail(ATTNX_CUDA_ERROR, std::string("cudaFuncSetAttribute: ") + cudaGetErrorString(err));
    const long long table = static_cast<long long>(2 * problem.k[0] - 1) * (2 * problem.k[1] - 1) * (2 * problem.k[2] - 1);
    attnx_status status = ATTNX_OK;
    // gridDim.y and gridDim.z stop at 65,535: larger batch or head counts launch in chunks, with the
    // pointers offset to the chunk's first batch and head (strides stay those of the whole tensor).
    attnx::for_each_grid_chunk(p.batch, p.heads, [&](int b0, int batches, int h0, int heads) {
        if (status != ATTNX_OK) return;
        const long long offset = b0 * problem.batch_stride + static_cast<long long>(h0) * p.head_dim;
        const dim3 grid(problem.query_tiles(), heads, batches);
        const auto run = [&] {
            attnx::na_fused_kernel<T, TILE, TC><<<grid, attnx::kThreads, smem, stream>>>(
                problem, static_cast<const T*>(q) + offset, static_cast<const T*>(k) + offset,
                static_cast<const T*>(v) + offset, rpb ? static_cast<const T*>(rpb) + h0 * table : nullptr,
                static_cast<T*>(out) + offset);
            return cudaGetLastError();  // launch errors are not sticky: this also clears them
        };
        cudaError_t launched = run();
        // A new context (after cudaDeviceReset, or another one on this device) starts without the
        // attribute although the per-device cache says it is set: set it again and retry once.
        if (missing_smem_attribute(launched) && allow_dynamic_smem<T, TILE, TC>(dev.id, smem, true) == cudaSuccess)
            launched = run();
        if (launched != cudaSuccess)
            status = fail(ATTNX_CUDA_ERROR, std::string("kernel launch: ") + cudaGetErrorString(launched));
    });
    return status;
}

template <typename T>
attnx_status dispatch(const attnx_na_params& p, const Device& dev, const void* q, const void* k, const void* v,
                      const void* rpb, void* out, cudaStream_t stream) {
    // The vectorized tensor-core loads need 16-byte aligned rows; otherwise the generic path runs.
    const bool aligned = aligned16(q) && aligned16(k) && aligned16(v) && aligned16(out);
    const attnx::LaunchChoice c = attnx::choose_launch(p.dtype, p.head_dim, dev.major, dev.max_smem, aligned);
    if constexpr (!std::is_same<T, float>::value) {
        if (c.path == ATTNX_PATH_TENSOR_CORE) return launch<T, 64, true>(p, dev, c.dynamic_smem, q, k, v, rpb, out, stream);
    }
    switch (c.path == ATTNX_PATH_GENERIC ? c.tile : 0) {
        case 64: return launch<T, 64, false>(p, dev, c.dynamic_smem, q, k, v, rpb, out, stream);
        case 32: return launch<T, 32, false>(p, dev, c.dynamic_smem, q, k, v, rpb, out, stream);
        case 16: return launch<T, 16, false>(p, dev, c.dynamic_smem, q, k, v, rpb, out, stream);
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
    return attnx::choose_launch(params->dtype, params->head_dim, dev.major, dev.max_smem, true).path;
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
