// POD types of the attn-export kernel C ABI (no CUDA include: the TensorRT-free plugin logic and its
// CPU tests use them too).
#pragma once

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ATTNX_ABI_VERSION 1
#define ATTNX_MAX_RANK 3

typedef enum attnx_dtype { ATTNX_FLOAT32 = 0, ATTNX_FLOAT16 = 1, ATTNX_BFLOAT16 = 2 } attnx_dtype;

typedef enum attnx_status {
    ATTNX_OK = 0,
    ATTNX_INVALID_ARGUMENT = 1,  // parameters outside DESIGN.md section 5 (see attnx_last_error)
    ATTNX_UNSUPPORTED = 2,       // valid, but no kernel handles it (e.g. head_dim > 256)
    ATTNX_CUDA_ERROR = 3,        // a CUDA call failed
} attnx_status;

// Which kernel a call runs: tensor-core (fp16/bf16, head_dim 32/64/128) or the generic CUDA-core path.
typedef enum attnx_na_path { ATTNX_PATH_NONE = 0, ATTNX_PATH_TENSOR_CORE = 1, ATTNX_PATH_GENERIC = 2 } attnx_na_path;

// Neighborhood attention over [batch, *spatial, heads, head_dim] tensors (NATTEN layout, contiguous).
// rpb, when present, is [heads, 2k_0-1, ...] of the same dtype. Arrays hold `rank` used entries.
typedef struct attnx_na_params {
    int32_t rank;
    int32_t batch;
    int32_t heads;
    int32_t head_dim;
    int32_t spatial[ATTNX_MAX_RANK];
    int32_t kernel_size[ATTNX_MAX_RANK];
    int32_t stride[ATTNX_MAX_RANK];
    int32_t dilation[ATTNX_MAX_RANK];
    int32_t is_causal[ATTNX_MAX_RANK];
    float scale;  // softmax scale; <= 0 means head_dim ** -0.5
    int32_t dtype;  // attnx_dtype of q, k, v, rpb and out
    int32_t has_rpb;
} attnx_na_params;

#ifdef __cplusplus
}
#endif
