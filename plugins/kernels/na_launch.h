// Host-side launch plan of the first-generation neighborhood kernel (na_fused.cuh, CUDA cores), shared by the
// launcher (na_forward.cu), the kernel (the shared-memory layout) and the CPU tests (no CUDA include):
//   - SmemPlan: the block's dynamic shared memory AND its static __shared__ arrays; a launch needs
//     dynamic + static <= the device's opt-in limit per block, or it fails instead of using a smaller tile;
//   - choose_launch: the generic kernel's tile for a dtype, head_dim and device;
//   - na_path: which kernel a call runs (the core where it fits, else the generic kernel);
//   - for_each_grid_chunk: grids within CUDA's limits (gridDim.y, gridDim.z <= 65,535) for any batch
//     and head count.
#pragma once

#include <stddef.h>

#include "attnx_types.h"
#include "core_plan.h"
#include "na_index.h"

namespace attnx {

constexpr int kThreads = 128;  // 4 warps
constexpr int kMaxGridYZ = 65535;

// Shared memory of one block. ElemBytes: size of q/k/v's element type; the probabilities are stored in fp32.
template <int ElemBytes, int TILE>
struct SmemPlan {
    static constexpr int kProbBytes = 4;
    static constexpr int kPadIn = ElemBytes == 4 ? 1 : 2;
    static constexpr int kPadScore = 1;
    static constexpr int kPadProb = 1;
    // The kernel's static __shared__ array: one 64-bit global row offset per tile slot.
    static constexpr int kRowOffsets = TILE;
    ATTNX_HD static int ld_in(int dim) { return dim + kPadIn; }
    ATTNX_HD static int ld_out(int dim) { return dim + 4; }
    ATTNX_HD static size_t align(size_t bytes) { return (bytes + 127) & ~size_t(127); }
    ATTNX_HD static size_t qkv_bytes(int dim) { return align(size_t(ElemBytes) * TILE * ld_in(dim)); }
    ATTNX_HD static size_t score_bytes() { return align(sizeof(float) * TILE * (TILE + kPadScore)); }
    ATTNX_HD static size_t prob_bytes() { return align(size_t(kProbBytes) * TILE * (TILE + kPadProb)); }
    ATTNX_HD static size_t out_bytes(int dim) { return align(sizeof(float) * TILE * ld_out(dim)); }
    // Row statistics (m, l), per-slot window begin/end and coordinates of queries and keys (one int per
    // axis each), and the two validity flags.
    ATTNX_HD static size_t index_bytes() { return align(sizeof(int) * TILE * (2 + 4 * kMaxRank + 2)); }
    // Dynamic shared memory (the launch's third argument).
    ATTNX_HD static size_t total(int dim) {
        return 3 * qkv_bytes(dim) + score_bytes() + prob_bytes() + out_bytes(dim) + index_bytes();
    }
    // Static shared memory, counted against the same per-block limit.
    ATTNX_HD static size_t static_bytes() { return sizeof(long long) * kRowOffsets; }
    ATTNX_HD static size_t block_bytes(int dim) { return total(dim) + static_bytes(); }
};

struct LaunchChoice {
    attnx_na_path path;   // ATTNX_PATH_GENERIC, or ATTNX_PATH_NONE when no tile fits
    int tile;             // tokens per query / kv tile (0 when path is ATTNX_PATH_NONE)
    size_t dynamic_smem;  // bytes, the launch's dynamic shared memory
    size_t static_smem;   // bytes of static __shared__ arrays
};

template <int ElemBytes, int TILE>
inline bool fits(int dim, size_t max_smem) { return SmemPlan<ElemBytes, TILE>::block_bytes(dim) <= max_smem; }

template <int ElemBytes, int TILE>
inline LaunchChoice choice(int dim) {
    using Plan = SmemPlan<ElemBytes, TILE>;
    return LaunchChoice{ATTNX_PATH_GENERIC, TILE, Plan::total(dim), Plan::static_bytes()};
}

// The largest tile whose block fits.
template <int ElemBytes>
inline LaunchChoice choose_launch_for(int dim, size_t max_smem) {
    if (fits<ElemBytes, 64>(dim, max_smem)) return choice<ElemBytes, 64>(dim);
    if (fits<ElemBytes, 32>(dim, max_smem)) return choice<ElemBytes, 32>(dim);
    if (fits<ElemBytes, 16>(dim, max_smem)) return choice<ElemBytes, 16>(dim);
    return LaunchChoice{ATTNX_PATH_NONE, 0, 0, 0};
}

// The generic kernel's launch on a device whose opt-in shared memory per block is `max_smem` bytes (any dtype,
// head_dim and alignment: it loads element by element).
inline LaunchChoice choose_launch(int dtype, int dim, size_t max_smem) {
    return dtype == ATTNX_FLOAT32 ? choose_launch_for<4>(dim, max_smem) : choose_launch_for<2>(dim, max_smem);
}

// The path of a call: the core where it fits (core_plan.h; with a bias, its table staged in shared memory
// too), else the generic kernel (its bias read from global memory: any table size), else NONE. The launcher
// (na_forward.cu) and attnx_na_select_path both ask this, so select_path names the kernel that runs.
inline attnx_na_path na_path(const attnx_na_params& p, int cc_major, size_t max_smem, bool aligned) {
    long long table = 1;
    for (int a = 0; a < p.rank; ++a) table *= 2LL * p.kernel_size[a] - 1;
    if (core_fits(p.dtype, p.head_dim, cc_major, max_smem, aligned) &&
        (!p.has_rpb || na_rpb_staged(table, p.head_dim, max_smem)))
        return ATTNX_PATH_CORE;
    return cc_major >= 8 ? choose_launch(p.dtype, p.head_dim, max_smem).path : ATTNX_PATH_NONE;
}

// Calls f(batch0, batches, head0, heads) for grids of at most kMaxGridYZ heads (gridDim.y) and batches
// (gridDim.z) that together cover [0, batch) x [0, heads) once. The launcher offsets the tensor
// pointers by batch0 and head0 (the kernel's strides stay those of the whole tensor).
template <typename F>
inline void for_each_grid_chunk(int batch, int heads, F&& f) {
    for (int b0 = 0; b0 < batch; b0 += kMaxGridYZ)
        for (int h0 = 0; h0 < heads; h0 += kMaxGridYZ)
            f(b0, batch - b0 < kMaxGridYZ ? batch - b0 : kMaxGridYZ, h0, heads - h0 < kMaxGridYZ ? heads - h0 : kMaxGridYZ);
}

}  // namespace attnx
