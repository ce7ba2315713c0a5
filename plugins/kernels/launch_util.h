// Host helpers every launcher shares (CUDA runtime, no TensorRT): the current device's attributes, cached
// per device (enqueue is hot), and the opt-in dynamic shared memory of a kernel, set once per kernel,
// device and larger size. Internal to libattnx_kernels.
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "core_plan.h"

namespace attnx {

struct Device {
    int id = 0;
    int major = 0;
    int max_smem = 0;  // opt-in shared memory per block (dynamic + static)
};

constexpr int kCachedDevices = 64;

inline bool query_device(int id, Device& dev) {
    return cudaDeviceGetAttribute(&dev.major, cudaDevAttrComputeCapabilityMajor, id) == cudaSuccess &&
           cudaDeviceGetAttribute(&dev.max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, id) == cudaSuccess;
}

// The thread's current device, its attributes queried once per device for the process.
inline bool current_device(Device& dev) {
    static std::atomic<int> major[kCachedDevices];     // 0: not queried yet
    static std::atomic<int> max_smem[kCachedDevices];  // published before major
    if (cudaGetDevice(&dev.id) != cudaSuccess) return false;
    if (dev.id < 0 || dev.id >= kCachedDevices) return query_device(dev.id, dev);
    dev.major = major[dev.id].load(std::memory_order_acquire);
    if (dev.major > 0) {
        dev.max_smem = max_smem[dev.id].load(std::memory_order_relaxed);
        return true;
    }
    if (!query_device(dev.id, dev)) return false;
    max_smem[dev.id].store(dev.max_smem, std::memory_order_relaxed);
    major[dev.id].store(dev.major, std::memory_order_release);
    return true;
}

namespace {
// An empty kernel of the including unit: its attributes tell which code the driver runs for the unit's kernels.
__global__ void arch_probe() {}
}  // namespace

// The architecture (major) the core's per-architecture choices (core_plan.h: 128-query tiles, the 3-stage ring) are
// made for: the device's when the code this unit runs on it was compiled for that architecture, else 0 (none of
// them). The two differ when the driver JIT-compiles a PTX of another architecture: a library built for sm_80 only,
// on an H100 (__CUDA_ARCH__ was 800: the core's sm_90-only instances are traps), or one built for sm_90 on an sm_100
// or sm_120 card (no trap, but neither choice was made or checked for that card). Asked once per device and unit.
static inline int code_arch(const Device& dev) {
    static std::atomic<int> cached[kCachedDevices];  // PTX major + 1; 0: not asked yet
    const bool cacheable = dev.id >= 0 && dev.id < kCachedDevices;
    int known = cacheable ? cached[dev.id].load(std::memory_order_relaxed) : 0;
    if (known == 0) {
        cudaFuncAttributes attr{};
        if (cudaFuncGetAttributes(&attr, arch_probe) != cudaSuccess) {
            cudaGetLastError();  // not left for the next launch's cudaGetLastError to report
            return 0;            // not cached: asked again next time
        }
        known = attr.ptxVersion / 10 + 1;
        if (cacheable) cached[dev.id].store(known, std::memory_order_relaxed);
    }
    return known - 1 == dev.major ? dev.major : 0;
}

// The core's ring stages for this device and unit (core_plan.h's core_stages). ATTNX_CORE_STAGES=2 in the
// environment, read once per process and unit (at its first launch), keeps every launch on 2 stages: the same library then times both rings on
// one GPU (bench/bench_sparse_gpu.py). Only the exact value "2" is read; a third stage is never forced where the
// rule refuses it (its instances are traps off sm_90).
static inline int ring_stages(const Device& dev, int dim, int row_tiles, size_t extra = 0) {
    static const bool two_stages = [] {
        const char* forced = std::getenv("ATTNX_CORE_STAGES");
        return forced != nullptr && std::strcmp(forced, "2") == 0;
    }();
    return two_stages ? 2 : core_stages(dim, row_tiles, code_arch(dev), static_cast<size_t>(dev.max_smem), extra);
}

inline bool aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15) == 0; }

// cudaFuncSetAttribute(MaxDynamicSharedMemorySize) for Kernel once per device and larger size. The
// attribute belongs to the CUDA context, which the cache cannot see: `force` sets it whatever the cache says.
template <auto Kernel>
cudaError_t allow_smem(int device, size_t bytes, bool force = false) {
    static std::atomic<size_t> allowed[kCachedDevices];
    static std::mutex mutex;
    const bool cached = device >= 0 && device < kCachedDevices;
    if (!force && cached && bytes <= allowed[device].load(std::memory_order_acquire)) return cudaSuccess;
    std::lock_guard<std::mutex> lock(mutex);
    if (!force && cached && bytes <= allowed[device].load(std::memory_order_acquire)) return cudaSuccess;
    const size_t size = cached ? std::max(bytes, allowed[device].load(std::memory_order_acquire)) : bytes;
    const cudaError_t err = cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(size));
    if (err == cudaSuccess && cached) allowed[device].store(size, std::memory_order_release);
    return err;
}

// Launches run() (which returns cudaGetLastError after the launch); if the context lacks the attribute the
// cache believed set (a new context after cudaDeviceReset), sets it again and retries once.
template <auto Kernel, typename Run>
cudaError_t launch_with_smem(int device, size_t bytes, Run&& run) {
    cudaError_t err = allow_smem<Kernel>(device, bytes);
    if (err != cudaSuccess) return err;
    err = run();
    if ((err == cudaErrorInvalidValue || err == cudaErrorLaunchOutOfResources) && allow_smem<Kernel>(device, bytes, true) == cudaSuccess)
        err = run();
    return err;
}

}  // namespace attnx
