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

// A row's listed blocks read as one virtual key sequence of count * block_kv slots, cut into tiles of
// `tile` slots: slot v is key block(v / block_kv) * block_kv + v % block_kv, a real key when below seq_kv.
// Any block_kv works with any tile; only tiles that hold a slot past the row's end or a key past seq_kv
// need an element mask.
struct VirtualKeys {
    BlockRow row;
    int block_kv;
    int seq_kv;
    ATTNX_HD int slots() const { return row.count * block_kv; }
    ATTNX_HD int tiles(int tile) const { return ceil_div(slots(), tile); }
    // The key at virtual slot v, or -1 (past the row's end, or in the partial last block past seq_kv).
    ATTNX_HD int key(int v) const {
        if (v >= slots()) return -1;
        const int k = row.block(v / block_kv) * block_kv + v % block_kv;
        return k < seq_kv ? k : -1;
    }
    // Whether tile t holds a slot without a key (exactly): past the list's end, or in the part of the partial
    // tail block that lies at or past seq_kv.
    ATTNX_HD bool tile_masked(int t, int tile) const {
        const int first = t * tile, last = first + tile - 1;
        if (last >= slots()) return true;
        if (seq_kv % block_kv == 0) return false;
        const int tail = ceil_div(seq_kv, block_kv) - 1;
        for (int s = first / block_kv; s <= last / block_kv; ++s) {
            const int last_in_block = (last < (s + 1) * block_kv - 1 ? last : (s + 1) * block_kv - 1) - s * block_kv;
            if (row.block(s) == tail && tail * block_kv + last_in_block >= seq_kv) return true;
        }
        return false;
    }
};

}  // namespace attnx
