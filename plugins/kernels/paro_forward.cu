// C ABI of PARO attention: validation, the quantization pre-pass (paro_prepass.cuh) into the caller's
// workspace, then the fused core with the PARO tile policy (block == 64) or the generic kernel.
#include <string>
#include <type_traits>

#include "attn_check.h"
#include "attn_generic.cuh"
#include "attn_policies.cuh"
#include "attnx_abi.h"
#include "attnx_kernels.h"
#include "core_plan.h"
#include "launch_util.h"
#include "na_launch.h"  // for_each_grid_chunk
#include "paro_prepass.cuh"

namespace {

using attnx::fail;

float scale_of(const attnx_paro_params& p) { return p.scale > 0.f ? p.scale : 1.f / __builtin_sqrtf(float(p.head_dim)); }
float qmax(int bits) { return float((1 << (bits - 1)) - 1); }

// Where the attention kernels read their operands: the workspace (quantized, permuted) or the input.
struct Operands {
    const void *q, *k, *v;
    int gather_qk, gather_v;
    const float *q_scale, *k_scale, *v_scale;
};

// int8_qk: Q and K are written as int8 (the fused core's s8 MMA) instead of T (the generic kernel); the
// workspace is sized for T and the int8 values use the first part of each region.
template <typename T>
cudaError_t prepass(const attnx_paro_params& p, const void* q, const void* k, const void* v, const int32_t* perm,
                    bool int8_qk, unsigned char* ws, Operands& ops, cudaStream_t stream) {
    const attnx::ParoWorkspace w = attnx::paro_workspace(p);
    const bool qk = p.qk_bits < 16, pv = p.pv_bits < 16;
    ops = Operands{q, k, v, 1, 1, nullptr, nullptr, nullptr};
    if (!qk && !pv) return cudaSuccess;
    const int bh = p.batch * p.heads;
    const int grid_bh = bh < 65535 ? bh : 65535;
    float* k_mean = qk && p.smooth_k ? reinterpret_cast<float*>(ws + w.k_mean) : nullptr;
    float* v_scale = pv ? reinterpret_cast<float*>(ws + w.v_scale) : nullptr;
    if (k_mean || v_scale) {
        const int chunks = attnx::paro_stats_chunks(p.seq);
        float* k_parts = k_mean ? reinterpret_cast<float*>(ws + w.k_sum_parts) : nullptr;
        float* v_parts = v_scale ? reinterpret_cast<float*>(ws + w.v_amax_parts) : nullptr;
        attnx::paro::channel_partials_kernel<T><<<dim3(chunks, grid_bh), attnx::paro::kThreads, 0, stream>>>(
            bh, p.seq, p.head_dim, chunks, static_cast<const T*>(k), static_cast<const T*>(v), k_parts, v_parts);
        const long long cells = static_cast<long long>(bh) * p.head_dim;
        const long long blocks = (cells + attnx::paro::kThreads - 1) / attnx::paro::kThreads;
        attnx::paro::channel_finish_kernel<T><<<static_cast<unsigned>(blocks < 4096 ? blocks : 4096), attnx::paro::kThreads, 0, stream>>>(
            bh, p.seq, p.head_dim, chunks, k_parts, v_parts, k_mean, v_scale, qmax(p.pv_bits));
    }
    if (qk) {
        float* q_scale = reinterpret_cast<float*>(ws + w.q_scale);
        float* k_scale = reinterpret_cast<float*>(ws + w.k_scale);
        auto quantize = [&](auto* qw, auto* kw) {
            using D = typename std::remove_pointer<decltype(qw)>::type;
            attnx::paro::quantize_groups_kernel<T, D><<<dim3(attnx::ceil_div(p.seq, p.q_group), grid_bh), attnx::paro::kThreads, 0, stream>>>(
                p.heads, p.seq, p.head_dim, p.q_group, perm, static_cast<const T*>(q), nullptr, qmax(p.qk_bits), qw, q_scale, bh);
            attnx::paro::quantize_groups_kernel<T, D><<<dim3(attnx::ceil_div(p.seq, p.k_group), grid_bh), attnx::paro::kThreads, 0, stream>>>(
                p.heads, p.seq, p.head_dim, p.k_group, perm, static_cast<const T*>(k), k_mean, qmax(p.qk_bits), kw, k_scale, bh);
            ops.q = qw;
            ops.k = kw;
        };
        bool written = false;
        if constexpr (!std::is_same<T, float>::value) {  // fp32 never takes the core: no int8 instance for it
            if (int8_qk) {
                quantize(reinterpret_cast<int8_t*>(ws + w.q), reinterpret_cast<int8_t*>(ws + w.k));
                written = true;
            }
        }
        if (!written) quantize(reinterpret_cast<T*>(ws + w.q), reinterpret_cast<T*>(ws + w.k));
        ops.gather_qk = 0;
        ops.q_scale = q_scale;
        ops.k_scale = k_scale;
    }
    if (pv) {
        T* vw = reinterpret_cast<T*>(ws + w.v);
        const long long elems = static_cast<long long>(p.seq) * p.head_dim;
        const int blocks = static_cast<int>((elems + attnx::paro::kThreads - 1) / attnx::paro::kThreads);
        attnx::paro::quantize_channels_kernel<T><<<dim3(blocks < 4096 ? blocks : 4096, grid_bh), attnx::paro::kThreads, 0, stream>>>(
            p.heads, p.seq, p.head_dim, perm, static_cast<const T*>(v), v_scale, qmax(p.pv_bits), vw, bh);
        ops.v = vw;
        ops.gather_v = 0;
        ops.v_scale = v_scale;
    }
    return cudaGetLastError();
}

template <typename Elem, int HD, bool QuantP, bool Int8QK, int Stages>
cudaError_t launch_core(const attnx_paro_params& p, const attnx::Device& dev, const Operands& ops, const int32_t* perm,
                        const int32_t* kv_count, const int32_t* kv_index, void* out, cudaStream_t stream) {
    using Policy = attnx::core::ParoPolicy<Elem, QuantP, Int8QK>;
    using QkElem = typename Policy::QkElem;
    constexpr auto kernel = attnx::core::attention_core_kernel<Elem, HD, Policy, Stages>;
    const size_t smem = attnx::core::Geometry<Elem, HD, 1, Stages>::kSmemBytes;
    cudaError_t status = cudaSuccess;
    attnx::for_each_grid_chunk(p.batch, p.heads, [&](int b0, int batches, int h0, int heads) {
        if (status != cudaSuccess) return;
        typename Policy::Params params{p.heads, p.seq, p.head_dim, p.layout, kv_count, kv_index,
                                       perm + static_cast<long long>(h0) * p.seq, b0, h0, ops.gather_qk, ops.gather_v,
                                       ops.q_scale, ops.k_scale, ops.v_scale, p.q_group, p.k_group,
                                       QuantP ? qmax(p.pv_bits) : 1.f, scale_of(p) * attnx::core::kLog2e};
        const long long off = (static_cast<long long>(b0) * p.heads + h0) * p.seq * p.head_dim;
        const dim3 grid(p.layout.rows, heads, batches);
        status = attnx::launch_with_smem<kernel>(dev.id, smem, [&] {
            kernel<<<grid, attnx::core::kThreads, smem, stream>>>(
                params, static_cast<const QkElem*>(ops.q) + off, static_cast<const QkElem*>(ops.k) + off,
                static_cast<const Elem*>(ops.v) + off, static_cast<Elem*>(out) + off);
            return cudaGetLastError();
        });
    });
    return status;
}

// The ring's stages as core_plan.h's core_stages picks them (launch_util.h's ring_stages).
template <typename Elem, int HD, bool QuantP, bool Int8QK>
cudaError_t dispatch_stages(const attnx_paro_params& p, const attnx::Device& dev, const Operands& ops, const int32_t* perm,
                            const int32_t* c, const int32_t* i, void* out, cudaStream_t s) {
    return attnx::core::with_stages<HD>(attnx::ring_stages(dev, HD, 1), [&](auto stages) {
        return launch_core<Elem, HD, QuantP, Int8QK, decltype(stages)::value>(p, dev, ops, perm, c, i, out, s);
    });
}

template <typename Elem, bool QuantP, bool Int8QK>
cudaError_t dispatch_core(const attnx_paro_params& p, const attnx::Device& dev, const Operands& ops, const int32_t* perm,
                          const int32_t* c, const int32_t* i, void* out, cudaStream_t s) {
    switch (p.head_dim) {
        case 32: return dispatch_stages<Elem, 32, QuantP, Int8QK>(p, dev, ops, perm, c, i, out, s);
        case 64: return dispatch_stages<Elem, 64, QuantP, Int8QK>(p, dev, ops, perm, c, i, out, s);
        default: return dispatch_stages<Elem, 128, QuantP, Int8QK>(p, dev, ops, perm, c, i, out, s);
    }
}

// QK quantized: int8 Q and K (written so by the pre-pass), S on the s8 MMA.
template <typename Elem>
cudaError_t dispatch_core(const attnx_paro_params& p, const attnx::Device& dev, const Operands& ops, const int32_t* perm,
                          const int32_t* c, const int32_t* i, void* out, cudaStream_t s) {
    const bool quant_p = p.pv_bits < 16, int8_qk = p.qk_bits < 16;
    if (int8_qk)
        return quant_p ? dispatch_core<Elem, true, true>(p, dev, ops, perm, c, i, out, s)
                       : dispatch_core<Elem, false, true>(p, dev, ops, perm, c, i, out, s);
    return quant_p ? dispatch_core<Elem, true, false>(p, dev, ops, perm, c, i, out, s)
                   : dispatch_core<Elem, false, false>(p, dev, ops, perm, c, i, out, s);
}

template <typename T>
cudaError_t launch_generic(const attnx_paro_params& p, const attnx::Device& dev, const Operands& ops,
                           const int32_t* perm, const int32_t* kv_count, const int32_t* kv_index, void* out,
                           cudaStream_t stream) {
    constexpr auto kernel = attnx::generic::blocked_rows_kernel<T>;
    const bool quant_p = p.pv_bits < 16;
    const size_t smem = attnx::generic_smem_bytes(p.layout.max_blocks, quant_p);
    cudaError_t status = cudaSuccess;
    attnx::for_each_grid_chunk(p.batch, p.heads, [&](int b0, int batches, int h0, int heads) {
        if (status != cudaSuccess) return;
        attnx::generic::Params params{p.heads, p.seq, p.seq, p.head_dim, p.block, p.block, p.layout, kv_count, kv_index,
                                      b0, h0, perm + static_cast<long long>(h0) * p.seq, ops.gather_qk, ops.gather_v,
                                      ops.q_scale, ops.k_scale, ops.v_scale, p.q_group, p.k_group,
                                      quant_p ? qmax(p.pv_bits) : 0.f, scale_of(p)};
        const long long off = (static_cast<long long>(b0) * p.heads + h0) * p.seq * p.head_dim;
        const dim3 grid(p.layout.rows, heads, batches);
        status = attnx::launch_with_smem<kernel>(dev.id, smem, [&] {
            kernel<<<grid, attnx::generic::kThreads, smem, stream>>>(
                params, static_cast<const T*>(ops.q) + off, static_cast<const T*>(ops.k) + off,
                static_cast<const T*>(ops.v) + off, static_cast<T*>(out) + off);
            return cudaGetLastError();
        });
    });
    return status;
}

template <typename T, typename Elem>
cudaError_t run(const attnx_paro_params& p, const attnx::Device& dev, bool core, const void* q, const void* k,
                const void* v, const int32_t* perm, const int32_t* c, const int32_t* i, void* out, void* ws,
                cudaStream_t s) {
    Operands ops;
    core = core && !std::is_same<T, float>::value;
    cudaError_t err = prepass<T>(p, q, k, v, perm, core, static_cast<unsigned char*>(ws), ops, s);
    if (err != cudaSuccess) return err;
    if constexpr (!std::is_same<T, float>::value) {
        if (core) return dispatch_core<Elem>(p, dev, ops, perm, c, i, out, s);
    }
    return launch_generic<T>(p, dev, ops, perm, c, i, out, s);
}

}  // namespace

extern "C" {

attnx_status attnx_paro_validate(const attnx_paro_params* params) {
    if (!params) return fail(ATTNX_INVALID_ARGUMENT, "params is null");
    const std::string problem = attnx::paro_problem(*params);
    if (!problem.empty()) return fail(ATTNX_INVALID_ARGUMENT, problem);
    std::string unsupported = attnx::head_dim_unsupported(params->head_dim);
    if (unsupported.empty() && params->pv_bits < 16 && params->block != attnx::kCoreTile &&
        attnx::generic_smem_bytes(params->layout.max_blocks, true) > 48 * 1024)
        unsupported = "max_blocks=" + std::to_string(params->layout.max_blocks) + " with block=" +
                      std::to_string(params->block) + " and quantized P exceeds the generic kernel's shared memory";
    if (!unsupported.empty()) return fail(ATTNX_UNSUPPORTED, unsupported);
    attnx::clear_error();
    return ATTNX_OK;
}

size_t attnx_paro_workspace_size(const attnx_paro_params* params) {
    return params && attnx::paro_problem(*params).empty() ? attnx::paro_workspace(*params).total : 0;
}

attnx_path attnx_paro_select_path(const attnx_paro_params* params) {
    attnx::Device dev;
    if (attnx_paro_validate(params) != ATTNX_OK || !attnx::current_device(dev)) return ATTNX_PATH_NONE;
    return attnx::paro_path(*params, dev.major, dev.max_smem, true);
}

attnx_status attnx_paro_forward(const attnx_paro_params* params, const void* q, const void* k, const void* v,
                                const int32_t* perm_idx, const int32_t* kv_count, const int32_t* kv_index, void* out,
                                void* workspace, size_t workspace_size, cudaStream_t stream) {
    const attnx_status status = attnx_paro_validate(params);
    if (status != ATTNX_OK) return status;
    const attnx_paro_params& p = *params;
    if (p.batch == 0 || p.seq == 0) return ATTNX_OK;
    if (!q || !k || !v || !out || !perm_idx || !kv_count || !kv_index)
        return fail(ATTNX_INVALID_ARGUMENT, "q, k, v, perm_idx, kv_count, kv_index and out must be device pointers");
    const size_t needed = attnx::paro_workspace(p).total;
    if (needed && (!workspace || workspace_size < needed))
        return fail(ATTNX_INVALID_ARGUMENT, "the workspace has " + std::to_string(workspace_size) + " bytes; this call needs " +
                                                std::to_string(needed) + " (attnx_paro_workspace_size)");
    attnx::Device dev;
    if (!attnx::current_device(dev)) return fail(ATTNX_CUDA_ERROR, "no current CUDA device");
    if (dev.major < 8) return fail(ATTNX_UNSUPPORTED, "the kernels need compute capability 8.0 or newer");
    const bool aligned = attnx::aligned16(q) && attnx::aligned16(k) && attnx::aligned16(v) && attnx::aligned16(out) &&
                         attnx::aligned16(workspace);
    const bool core = attnx::paro_path(p, dev.major, dev.max_smem, aligned) == ATTNX_PATH_CORE;
    cudaError_t err;
    if (p.layout.max_blocks == 0) {  // no row lists a block (an invalid plan): zeros, as the generic kernel gives
        err = cudaMemsetAsync(out, 0, size_t(p.batch) * p.heads * p.seq * p.head_dim * attnx::bytes_of(p.dtype), stream);
    } else {
        switch (p.dtype) {
            case ATTNX_FLOAT16:
                err = run<__half, cute::half_t>(p, dev, core, q, k, v, perm_idx, kv_count, kv_index, out, workspace, stream);
                break;
            case ATTNX_BFLOAT16:
                err = run<__nv_bfloat16, cute::bfloat16_t>(p, dev, core, q, k, v, perm_idx, kv_count, kv_index, out,
                                                           workspace, stream);
                break;
            default:
                err = run<float, float>(p, dev, false, q, k, v, perm_idx, kv_count, kv_index, out, workspace, stream);
                break;
        }
    }
    if (err != cudaSuccess) return fail(ATTNX_CUDA_ERROR, std::string("PARO launch: ") + cudaGetErrorString(err));
    return ATTNX_OK;
}

}  // extern "C"
