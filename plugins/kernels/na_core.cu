// The neighborhood path of the fused-attention core (attn_core.cuh with attn_policies.cuh's NaPolicy), in
// its own unit: it needs CUTLASS/CuTe, the first-generation kernels in na_forward.cu do not (and compile fast).
#include <string>

#include "attn_policies.cuh"
#include "attnx_abi.h"
#include "core_plan.h"
#include "launch_util.h"
#include "na_core.h"
#include "na_launch.h"  // for_each_grid_chunk

namespace {

using attnx::fail;

template <typename Elem, int HD, int Stages>
attnx_status launch_core(const attnx_na_params& p, const attnx::NaProblem& problem, int device, size_t smem, const void* q,
                         const void* k, const void* v, const void* rpb, void* out, cudaStream_t stream) {
    using Policy = attnx::core::NaPolicy<Elem>;
    constexpr auto kernel = attnx::core::attention_core_kernel<Elem, HD, Policy, Stages>;
    const long long table = problem.bias_table();
    cudaError_t status = cudaSuccess;
    attnx::for_each_grid_chunk(p.batch, p.heads, [&](int b0, int batches, int h0, int heads) {
        if (status != cudaSuccess) return;
        const long long offset = b0 * problem.batch_stride + static_cast<long long>(h0) * p.head_dim;
        const typename Policy::Params params{problem, rpb ? static_cast<const Elem*>(rpb) + h0 * table : nullptr};
        const dim3 grid(problem.query_tiles(), heads, batches);
        status = attnx::launch_with_smem<kernel>(device, smem, [&] {
            kernel<<<grid, attnx::core::kThreads, smem, stream>>>(
                params, static_cast<const Elem*>(q) + offset, static_cast<const Elem*>(k) + offset,
                static_cast<const Elem*>(v) + offset, static_cast<Elem*>(out) + offset);
            return cudaGetLastError();
        });
    });
    if (status != cudaSuccess) return fail(ATTNX_CUDA_ERROR, std::string("kernel launch: ") + cudaGetErrorString(status));
    return ATTNX_OK;
}

// The ring's stages as core_plan.h's core_stages picks them (launch_util.h's ring_stages), counting the policy's
// static shared memory. With a bias 2: its staged table (na_forward.cu sends one here only when it fits next to
// the 2-stage tiles) can make shared memory, not registers, the limit on blocks per SM, where a third stage would
// cost a block (a 3-D k=13 table at head_dim 64: 2 blocks -> 1).
template <typename Elem, int HD>
attnx_status dispatch_stages(const attnx_na_params& p, const attnx::Device& dev, const void* q, const void* k,
                             const void* v, const void* rpb, void* out, cudaStream_t stream) {
    const attnx::NaProblem problem = attnx::make_problem(p, attnx::core::kBlockN);
    const size_t table_bytes = rpb ? sizeof(float) * problem.bias_table() : 0;
    const int stages = rpb ? 2 : attnx::ring_stages(dev, HD, 1, attnx::kNaStaticSmem);
    return attnx::core::with_stages<HD>(stages, [&](auto s) -> attnx_status {
        const size_t smem = attnx::core::Geometry<Elem, HD, 1, decltype(s)::value>::kSmemBytes + table_bytes;
        if (smem + attnx::kNaStaticSmem > static_cast<size_t>(dev.max_smem))
            return fail(ATTNX_UNSUPPORTED, "the core's tiles and the bias table do not fit in shared memory");
        return launch_core<Elem, HD, decltype(s)::value>(p, problem, dev.id, smem, q, k, v, rpb, out, stream);
    });
}

template <typename Elem>
attnx_status dispatch_core(const attnx_na_params& p, const attnx::Device& dev, const void* q, const void* k, const void* v,
                           const void* rpb, void* out, cudaStream_t stream) {
    switch (p.head_dim) {
        case 32: return dispatch_stages<Elem, 32>(p, dev, q, k, v, rpb, out, stream);
        case 64: return dispatch_stages<Elem, 64>(p, dev, q, k, v, rpb, out, stream);
        default: return dispatch_stages<Elem, 128>(p, dev, q, k, v, rpb, out, stream);
    }
}

}  // namespace

namespace attnx {

attnx_status na_core_forward(const attnx_na_params& p, const Device& dev, const void* q, const void* k, const void* v,
                             const void* rpb, void* out, cudaStream_t stream) {
    return p.dtype == ATTNX_FLOAT16 ? dispatch_core<cute::half_t>(p, dev, q, k, v, rpb, out, stream)
                                    : dispatch_core<cute::bfloat16_t>(p, dev, q, k, v, rpb, out, stream);
}

}  // namespace attnx
