// Padded-ELL block layouts (docs/ops/block_sparse_attention.md) as the kernels read them: the listed kv blocks
// of one query-block row, with kv_count / kv_index broadcast over batch and heads independently. Host + device
// (nvcc and g++); the simulators (models/bsa_kernel_sim.py, models/paro_kernel_sim.py) mirror it.
#pragma once

#include <stdint.h>

#include "attnx_types.h"
#include "na_index.h"  // ATTNX_HD, ceil_div

namespace attnx {

// One row of a layout: `count` listed blocks at `index[0..count)`, clamped into [0, n_blocks) on read so
// that a wrong layout can never address memory outside k and v (the ONNX function clamps the same way).
struct BlockRow {
    const int32_t* index;
    int count;
    int n_blocks;
    ATTNX_HD int block(int slot) const {
        const int b = index[slot];
        return b < 0 ? 0 : (b >= n_blocks ? n_blocks - 1 : b);
    }
};

// Row `row` of batch b and head h; n_blocks: kv blocks of the sequence (ceil(seq_kv / block_kv)).
ATTNX_HD BlockRow block_row(const attnx_block_layout& l, const int32_t* kv_count, const int32_t* kv_index, int b,
                            int h, int row, int n_blocks) {
    const long long cb = l.count_batch == 1 ? 0 : b, ch = l.count_heads == 1 ? 0 : h;
    const long long ib = l.index_batch == 1 ? 0 : b, ih = l.index_heads == 1 ? 0 : h;
    int count = kv_count[(cb * l.count_heads + ch) * l.rows + row];
    count = count < 0 ? 0 : (count > l.max_blocks ? l.max_blocks : count);
    const int32_t* index = kv_index + ((ib * l.index_heads + ih) * l.rows + row) * static_cast<long long>(l.max_blocks);
    return BlockRow{index, count, n_blocks};
}

// n / d for 0 <= n < 2^31 and a divisor 1 <= d < 2^31 (the caller's contract: d = 0 divides by zero here) fixed per
// launch or per block, by a multiply-high, an add and a shift (Granlund & Montgomery's round-up method, as CUTLASS's
// FastDivmod; not used here because the host tools build without CUTLASS). A division by a runtime int is ~20
// instructions on a GPU (I2F, MUFU.RCP, fix-ups); the block-sparse kernels divide a slot by block_kv for every row
// they load, the neighborhood core a kv tile's index by its box's tiles per axis (attn_policies.cuh). With l =
// ceil(log2 d) and m = floor(2^32 (2^l - d) / d) + 1, n / d = (mulhi(m, n) + n) >> l for every 32-bit n; n < 2^31
// keeps the add within 32 bits. tests/test_native_block_layout.py checks it against Python's // on the host, up to
// 2^31 - 1.
struct FastDivisor {
    int divisor;
    uint32_t multiplier;
    int shift;
    FastDivisor() = default;
    ATTNX_HD explicit FastDivisor(int d) : divisor(d), multiplier(0), shift(0) {
        while ((1ll << shift) < d) ++shift;
        multiplier = static_cast<uint32_t>((1ull << 32) * ((1ull << shift) - static_cast<unsigned long long>(d)) /
                                           static_cast<unsigned long long>(d) + 1);
    }
    ATTNX_HD int quotient(int n) const {
        const uint32_t u = static_cast<uint32_t>(n);
#ifdef __CUDA_ARCH__
        const uint32_t high = __umulhi(u, multiplier);
#else
        const uint32_t high = static_cast<uint32_t>((static_cast<uint64_t>(u) * multiplier) >> 32);
#endif
        return static_cast<int>((high + u) >> shift);
    }
};

// A row's listed blocks read as one virtual key sequence of count * block_kv slots, cut into tiles of
// `tile` slots: slot v is key block(v / block_kv) * block_kv + v % block_kv, a real key when below seq_kv.
// Any block_kv works with any tile; only tiles that hold a slot past the row's end or a key past seq_kv
// need an element mask.
struct VirtualKeys {
    BlockRow row;
    FastDivisor by_block;  // block_kv
    int seq_kv;
    ATTNX_HD int block_kv() const { return by_block.divisor; }
    ATTNX_HD int slots() const { return row.count * block_kv(); }
    ATTNX_HD int tiles(int tile) const { return ceil_div(slots(), tile); }
    // The key at virtual slot v, or -1 (past the row's end, or in the partial last block past seq_kv).
    ATTNX_HD int key(int v) const {
        if (v >= slots()) return -1;
        const int block = by_block.quotient(v);
        const int k = row.block(block) * block_kv() + (v - block * block_kv());
        return k < seq_kv ? k : -1;
    }
    // Whether tile t holds a slot without a key (exactly): past the list's end, or in the part of the partial
    // tail block that lies at or past seq_kv.
    ATTNX_HD bool tile_masked(int t, int tile) const {
        const int first = t * tile, last = first + tile - 1;
        if (last >= slots()) return true;
        const int whole = by_block.quotient(seq_kv);
        if (whole * block_kv() == seq_kv) return false;
        const int tail = whole;  // the partial block's index, ceil(seq_kv / block_kv) - 1
        const int size = block_kv();
        for (int s = by_block.quotient(first); s <= by_block.quotient(last); ++s) {
            const int last_in_block = (last < (s + 1) * size - 1 ? last : (s + 1) * size - 1) - s * size;
            if (row.block(s) == tail && tail * size + last_in_block >= seq_kv) return true;
        }
        return false;
    }
};

}  // namespace attnx
