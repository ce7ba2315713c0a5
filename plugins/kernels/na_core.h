// Internal to libattnx_kernels: the neighborhood path of the fused-attention core (na_core.cu), called by
// na_forward.cu's launcher for fp16/bf16 calls that core_plan.h's core_fits accepts. max_smem: the device's
// opt-in shared memory per block (a bias table is staged in shared memory when it fits).
#pragma once

#include <cuda_runtime_api.h>

#include "attnx_types.h"

namespace attnx {

attnx_status na_core_forward(const attnx_na_params& p, int device, size_t max_smem, const void* q, const void* k, const void* v,
                             const void* rpb, void* out, cudaStream_t stream);

}  // namespace attnx
