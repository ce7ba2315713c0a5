// Internal to libattnx_kernels: the neighborhood path of the fused-attention core (na_core.cu), called by
// na_forward.cu's launcher for fp16/bf16 calls that core_plan.h's core_fits accepts.
#pragma once

#include <cuda_runtime_api.h>

#include "attnx_types.h"

namespace attnx {

attnx_status na_core_forward(const attnx_na_params& p, int device, const void* q, const void* k, const void* v,
                             const void* rpb, void* out, cudaStream_t stream);

}  // namespace attnx
