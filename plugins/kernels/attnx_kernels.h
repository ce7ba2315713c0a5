// C ABI of the attn-export CUDA kernels. Callers pass a POD parameter struct, raw device pointers, a
// CUDA stream and a caller-owned workspace whose size they query first. No TensorRT, no torch.
#pragma once

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#include "attnx_types.h"

#ifdef __cplusplus
extern "C" {
#endif

#define ATTNX_API __attribute__((visibility("default")))

ATTNX_API int32_t attnx_abi_version(void);

// Checks params against docs/ops/neighborhood_attention.md (Semantics); on failure returns
// ATTNX_INVALID_ARGUMENT and the reason is in attnx_last_error().
ATTNX_API attnx_status attnx_na_validate(const attnx_na_params* params);

// Bytes of device workspace attnx_na_forward needs (the fused kernel currently needs none).
ATTNX_API size_t attnx_na_workspace_size(const attnx_na_params* params);

// The kernel attnx_na_forward would run for params on the current device; ATTNX_PATH_NONE if none.
ATTNX_API attnx_na_path attnx_na_select_path(const attnx_na_params* params);

// out = NA(q, k, v). Asynchronous on `stream`; returns after the launch.
ATTNX_API attnx_status attnx_na_forward(const attnx_na_params* params, const void* q, const void* k, const void* v,
                              const void* rpb, void* out, void* workspace, size_t workspace_size,
                              cudaStream_t stream);

// Block-sparse attention (docs/ops/block_sparse_attention.md): the same four calls. kv_count / kv_index are the
// int32 layout tensors in device memory, shaped as params->layout says. No workspace.
ATTNX_API attnx_status attnx_bsa_validate(const attnx_bsa_params* params);
ATTNX_API size_t attnx_bsa_workspace_size(const attnx_bsa_params* params);
ATTNX_API attnx_path attnx_bsa_select_path(const attnx_bsa_params* params);
ATTNX_API attnx_status attnx_bsa_forward(const attnx_bsa_params* params, const void* q, const void* k, const void* v,
                                         const int32_t* kv_count, const int32_t* kv_index, void* out, void* workspace,
                                         size_t workspace_size, cudaStream_t stream);

// PARO attention (docs/ops/paro_attention.md). perm_idx int32 [heads, seq] in device memory. The workspace
// holds the quantization pre-pass's operands and scales (0 bytes without quantization).
ATTNX_API attnx_status attnx_paro_validate(const attnx_paro_params* params);
ATTNX_API size_t attnx_paro_workspace_size(const attnx_paro_params* params);
ATTNX_API attnx_path attnx_paro_select_path(const attnx_paro_params* params);
ATTNX_API attnx_status attnx_paro_forward(const attnx_paro_params* params, const void* q, const void* k, const void* v,
                                          const int32_t* perm_idx, const int32_t* kv_count, const int32_t* kv_index,
                                          void* out, void* workspace, size_t workspace_size, cudaStream_t stream);

// The reason for the last non-OK status on this thread ("" if none).
ATTNX_API const char* attnx_last_error(void);

#ifdef __cplusplus
}
#endif
