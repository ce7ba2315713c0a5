// C ABI of block-sparse attention: validation, the path (core_plan.h), and the launch of the fused core
// with the block-sparse tile policy or of the generic CUDA-core kernel.
#include <string>

#include "attn_check.h"
#include "attn_generic.cuh"
#include "attn_policies.cuh"
#include "attnx_abi.h"
#include "attnx_kernels.h"
#include "core_plan.h"
#include "launch_util.h"
#include "na_launch.h"  // for_each_grid_chunk

namespace {

using attnx::fail;

float scale_of(const attnx_bsa_params& p) { return p.scale > 0.f ? p.scale : 1.f / __builtin_sqrtf(float(p.head_dim)); }

template <typename Elem, int HD, int RowTiles, int Stages>
cudaError_t launch_core(const attnx_bsa_params& p, const attnx::Device& dev, const void* q, const void* k, const void* v,
                        const int32_t* kv_count, const int32_t* kv_index, void* out, cudaStream_t stream) {
    using Policy = attnx::core::BsaPolicy<Elem, RowTiles>;
    constexpr auto kernel = attnx::core::attention_core_kernel<Elem, HD, Policy, Stages>;
    const size_t smem = attnx::core::Geometry<Elem, HD, RowTiles, Stages>::kSmemBytes;
    cudaError_t status = cudaSuccess;
    attnx::for_each_grid_chunk(p.batch, p.heads, [&](int b0, int batches, int h0, int heads) {
        if (status != cudaSuccess) return;
        typename Policy::Params params{p.heads, p.seq_q, p.seq_kv, p.head_dim, p.block_q,
                                       attnx::FastDivisor(p.block_kv), p.layout, kv_count, kv_index, b0, h0,
                                       scale_of(p) * attnx::core::kLog2e};
        const long long q_off = (static_cast<long long>(b0) * p.heads + h0) * p.seq_q * p.head_dim;
        const long long kv_off = (static_cast<long long>(b0) * p.heads + h0) * p.seq_kv * p.head_dim;
        const dim3 grid(attnx::ceil_div(p.seq_q, attnx::core::block_rows<RowTiles>()), heads, batches);
        status = attnx::launch_with_smem<kernel>(dev.id, smem, [&] {
            kernel<<<grid, attnx::core::kThreads, smem, stream>>>(
                params, static_cast<const Elem*>(q) + q_off, static_cast<const Elem*>(k) + kv_off,
                static_cast<const Elem*>(v) + kv_off, static_cast<Elem*>(out) + q_off);
            return cudaGetLastError();
        });
    });
    return status;
}

// The ring's stages as core_plan.h's core_stages picks them (launch_util.h's ring_stages).
template <typename Elem, int HD, int RowTiles>
cudaError_t dispatch_stages(const attnx_bsa_params& p, const attnx::Device& dev, const void* q, const void* k,
                            const void* v, const int32_t* c, const int32_t* i, void* out, cudaStream_t s) {
    return attnx::core::with_stages<HD>(attnx::ring_stages(dev, HD, RowTiles), [&](auto stages) {
        return launch_core<Elem, HD, RowTiles, decltype(stages)::value>(p, dev, q, k, v, c, i, out, s);
    });
}

// 128-query tiles where core_plan.h's bsa_row_tiles picks them, else 64.
template <typename Elem, int HD>
cudaError_t dispatch_rows(const attnx_bsa_params& p, const attnx::Device& dev, const void* q, const void* k,
                          const void* v, const int32_t* c, const int32_t* i, void* out, cudaStream_t s) {
    if (attnx::bsa_row_tiles(p, attnx::code_arch(dev), dev.max_smem) == 2)
        return dispatch_stages<Elem, HD, 2>(p, dev, q, k, v, c, i, out, s);
    return dispatch_stages<Elem, HD, 1>(p, dev, q, k, v, c, i, out, s);
}

template <typename Elem>
cudaError_t dispatch_core(const attnx_bsa_params& p, const attnx::Device& dev, const void* q, const void* k,
                          const void* v, const int32_t* c, const int32_t* i, void* out, cudaStream_t s) {
    switch (p.head_dim) {
        case 32: return dispatch_rows<Elem, 32>(p, dev, q, k, v, c, i, out, s);
        case 64: return dispatch_rows<Elem, 64>(p, dev, q, k, v, c, i, out, s);
        default: return dispatch_rows<Elem, 128>(p, dev, q, k, v, c, i, out, s);
    }
}

template <typename T>
cudaError_t launch_generic(const attnx_bsa_params& p, const attnx::Device& dev, const void* q, const void* k,
                           const void* v, const int32_t* kv_count, const int32_t* kv_index, void* out,
                           cudaStream_t stream) {
    constexpr auto kernel = attnx::generic::blocked_rows_kernel<T>;
    cudaError_t status = cudaSuccess;
    attnx::for_each_grid_chunk(p.batch, p.heads, [&](int b0, int batches, int h0, int heads) {
        if (status != cudaSuccess) return;
        attnx::generic::Params params{p.heads, p.seq_q, p.seq_kv, p.head_dim, p.block_q, p.block_kv, p.layout, kv_count,
                                      kv_index, b0, h0, nullptr, 0, 0, nullptr, nullptr, nullptr, 1, 1, 0.f, scale_of(p)};
        const long long q_off = (static_cast<long long>(b0) * p.heads + h0) * p.seq_q * p.head_dim;
        const long long kv_off = (static_cast<long long>(b0) * p.heads + h0) * p.seq_kv * p.head_dim;
        const dim3 grid(p.layout.rows, heads, batches);
        status = attnx::launch_with_smem<kernel>(dev.id, 0, [&] {
            kernel<<<grid, attnx::generic::kThreads, 0, stream>>>(params, static_cast<const T*>(q) + q_off,
                                                                  static_cast<const T*>(k) + kv_off,
                                                                  static_cast<const T*>(v) + kv_off,
                                                                  static_cast<T*>(out) + q_off);
            return cudaGetLastError();
        });
    });
    return status;
}

}  // namespace

extern "C" {

attnx_status attnx_bsa_validate(const attnx_bsa_params* params) {
    if (!params) return fail(ATTNX_INVALID_ARGUMENT, "params is null");
    const std::string problem = attnx::bsa_problem(*params);
    if (!problem.empty()) return fail(ATTNX_INVALID_ARGUMENT, problem);
    const std::string unsupported = attnx::head_dim_unsupported(params->head_dim);
    if (!unsupported.empty()) return fail(ATTNX_UNSUPPORTED, unsupported);
    attnx::clear_error();
    return ATTNX_OK;
}

size_t attnx_bsa_workspace_size(const attnx_bsa_params*) { return 0; }

attnx_path attnx_bsa_select_path(const attnx_bsa_params* params) {
    attnx::Device dev;
    if (attnx_bsa_validate(params) != ATTNX_OK || !attnx::current_device(dev)) return ATTNX_PATH_NONE;
    return attnx::bsa_path(*params, dev.major, dev.max_smem, true);
}

attnx_status attnx_bsa_forward(const attnx_bsa_params* params, const void* q, const void* k, const void* v,
                               const int32_t* kv_count, const int32_t* kv_index, void* out, void* /*workspace*/,
                               size_t /*workspace_size*/, cudaStream_t stream) {
    const attnx_status status = attnx_bsa_validate(params);
    if (status != ATTNX_OK) return status;
    const attnx_bsa_params& p = *params;
    if (p.batch == 0 || p.seq_q == 0) return ATTNX_OK;
    if (!q || !k || !v || !out || !kv_count || !kv_index)
        return fail(ATTNX_INVALID_ARGUMENT, "q, k, v, kv_count, kv_index and out must be device pointers");
    attnx::Device dev;
    if (!attnx::current_device(dev)) return fail(ATTNX_CUDA_ERROR, "no current CUDA device");
    if (dev.major < 8) return fail(ATTNX_UNSUPPORTED, "the kernels need compute capability 8.0 or newer");
    const bool aligned = attnx::aligned16(q) && attnx::aligned16(k) && attnx::aligned16(v) && attnx::aligned16(out);
    cudaError_t err;
    if (p.seq_kv == 0 || p.layout.max_blocks == 0) {  // no key anywhere: every row is zeros
        err = cudaMemsetAsync(out, 0, size_t(p.batch) * p.heads * p.seq_q * p.head_dim * attnx::bytes_of(p.dtype), stream);
    } else if (attnx::bsa_path(p, dev.major, dev.max_smem, aligned) == ATTNX_PATH_CORE) {
        err = p.dtype == ATTNX_FLOAT16 ? dispatch_core<cute::half_t>(p, dev, q, k, v, kv_count, kv_index, out, stream)
                                       : dispatch_core<cute::bfloat16_t>(p, dev, q, k, v, kv_count, kv_index, out, stream);
    } else {
        switch (p.dtype) {
            case ATTNX_FLOAT16: err = launch_generic<__half>(p, dev, q, k, v, kv_count, kv_index, out, stream); break;
            case ATTNX_BFLOAT16: err = launch_generic<__nv_bfloat16>(p, dev, q, k, v, kv_count, kv_index, out, stream); break;
            default: err = launch_generic<float>(p, dev, q, k, v, kv_count, kv_index, out, stream); break;
        }
    }
    if (err != cudaSuccess) return fail(ATTNX_CUDA_ERROR, std::string("block-sparse launch: ") + cudaGetErrorString(err));
    return ATTNX_OK;
}

}  // extern "C"
