// Internal to libattnx_kernels: the neighborhood path of the fused-attention core (na_core.cu), called by
// na_forward.cu's launcher for fp16/bf16 calls that core_plan.h's core_fits accepts, on the device `dev` (its
// opt-in shared memory per block decides whether a bias table is staged in shared memory, and with its
// architecture the ring's stages).
#pragma once

#include <cuda_runtime_api.h>

#include "attnx_types.h"
#include "launch_util.h"

namespace attnx {

attnx_status na_core_forward(const attnx_na_params& p, const Device& dev, const void* q, const void* k, const void* v,
                             const void* rpb, void* out, cudaStream_t stream);

}  // namespace attnx
