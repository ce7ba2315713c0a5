// POD types of the attn-export kernel C ABI (no CUDA include: the TensorRT-free plugin logic and its
// CPU tests use them too).
#pragma once

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ATTNX_ABI_VERSION 2  // 2: block-sparse and PARO entry points
#define ATTNX_MAX_RANK 3

typedef enum attnx_dtype { ATTNX_FLOAT32 = 0, ATTNX_FLOAT16 = 1, ATTNX_BFLOAT16 = 2 } attnx_dtype;

typedef enum attnx_status {
    ATTNX_OK = 0,
    ATTNX_INVALID_ARGUMENT = 1,  // parameters outside the op's contract in docs/ops/ (see attnx_last_error)
    ATTNX_UNSUPPORTED = 2,       // valid, but no kernel handles it (e.g. head_dim > 256)
    ATTNX_CUDA_ERROR = 3,        // a CUDA call failed
} attnx_status;

// Which kernel a call runs. GENERIC: a CUDA-core kernel (any dtype and head_dim); CORE: the fused-attention
// core (mma.sync, cp.async pipeline, registers) with the op's tile policy: fp16/bf16, head_dim 32/64/128,
// 16-byte aligned rows. Value 1 was the first-generation WMMA neighborhood path, never launched since the core
// replaced it and removed: no call returns it.
typedef enum attnx_na_path {
    ATTNX_PATH_NONE = 0,
    ATTNX_PATH_GENERIC = 2,
    ATTNX_PATH_CORE = 3,
} attnx_na_path;
typedef attnx_na_path attnx_path;

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

// A padded-ELL block layout in device memory (docs/ops/block_sparse_attention.md): kv_count int32
// [count_batch, count_heads, rows] and kv_index int32 [index_batch, index_heads, rows, max_blocks]; a leading
// dim of 1 broadcasts over batch or heads, independently for the two tensors. Listed entries are clamped
// into range by the kernels (never an out-of-bounds read); a block listed twice in a row is undefined.
typedef struct attnx_block_layout {
    int32_t rows;  // query blocks: ceil(seq_q / block_q)
    int32_t max_blocks;
    int32_t count_batch, count_heads;
    int32_t index_batch, index_heads;
} attnx_block_layout;

// Block-sparse attention over [batch, heads, seq, head_dim] tensors (SDPA layout, contiguous): q
// [B, H, seq_q, D], k and v [B, H, seq_kv, D]. A row with no block gives zeros.
typedef struct attnx_bsa_params {
    int32_t batch;
    int32_t heads;
    int32_t seq_q;
    int32_t seq_kv;
    int32_t head_dim;
    int32_t block_q;
    int32_t block_kv;
    attnx_block_layout layout;
    float scale;   // softmax scale; <= 0 means head_dim ** -0.5
    int32_t dtype;  // attnx_dtype of q, k, v and out
} attnx_bsa_params;

// PARO attention (docs/ops/paro_attention.md) over [batch, heads, seq, head_dim] tensors; perm_idx int32
// [heads, seq] (entries read clamped into [0, seq): an invalid permutation gives an unspecified output, never an
// out-of-bounds access); the layout is over ceil(seq / block) blocks of the permuted sequence.
typedef struct attnx_paro_params {
    int32_t batch;
    int32_t heads;
    int32_t seq;
    int32_t head_dim;
    int32_t block;
    attnx_block_layout layout;
    int32_t qk_bits;  // 16 (no quantization), 8 or 4
    int32_t pv_bits;  // 16, 8 or 4
    int32_t q_group;  // permuted tokens per Q scale
    int32_t k_group;  // permuted tokens per K scale
    int32_t smooth_k;  // 0/1: subtract K's mean over all tokens before quantizing it
    float scale;
    int32_t dtype;
} attnx_paro_params;

#ifdef __cplusplus
}
#endif
