// Tile policies of the fused-attention core (attn_core.cuh): what makes neighborhood, block-sparse and
// PARO attention different, and nothing else. Each is a small per-block object built from a POD Params
// (a kernel argument); the interface is listed above attention_core_kernel.
#pragma once

#include <type_traits>

#include "attn_core.cuh"
#include "attnx_types.h"
#include "block_layout.h"
#include "core_plan.h"
#include "na_problem.h"
#include "paro_rules.h"

namespace attnx {
namespace core {

// The host's path rules (core_plan.h) size the same tiles and shared memory as the kernel.
static_assert(kBlockM == kCoreTile && kBlockN == kCoreTile, "core_plan.h's tile is the kernel's");
static_assert(Geometry<half_t, 32>::kSmemBytes == core_smem_bytes(32) && Geometry<half_t, 64>::kSmemBytes == core_smem_bytes(64) &&
                  Geometry<bfloat16_t, 128>::kSmemBytes == core_smem_bytes(128) &&
                  Geometry<half_t, 64, 2>::kSmemBytes == core_smem_bytes(64, 2) &&
                  Geometry<bfloat16_t, 128, 2>::kSmemBytes == core_smem_bytes(128, 2) &&
                  Geometry<half_t, 32, 1, 3>::kSmemBytes == core_smem_bytes(32, 1, 3) &&
                  Geometry<bfloat16_t, 64, 2, 3>::kSmemBytes == core_smem_bytes(64, 2, 3),
              "core_plan.h's shared memory is the kernel's");

// ---- neighborhood: a query tile is a box of one dilation group (na_index.h's tiles, 64 slots); it visits
// the kv boxes its windows span, row-major; a kv tile inside every window of the query tile is interior.
template <typename Elem>
struct NaPolicy {
    static constexpr bool kMayBias = true;  // the bias (rpb) is a runtime choice: one instantiation
    static constexpr bool kQuantP = false;
    static constexpr bool kScaledDot = true;
    static constexpr int kRowTiles = 1;     // a query tile is one 64-slot box (its per-slot windows: Block)
    using QkElem = Elem;
    struct Params {
        NaProblem pr;
        const Elem* rpb;  // [heads, 2k_0-1, 2k_1-1, 2k_2-1] of this launch's first head, or null; staged in
                          // the dynamic shared memory past the core's own (core_plan.h's na_rpb_staged)
    };

    const Params& p;
    // What every thread of the block shares lives in shared memory, not in 20 registers per thread: the
    // core's fragments leave the policy little room (255 registers at head_dim 128).
    struct Block {
        int group[kMaxRank], first[kMaxRank], glen[kMaxRank], kv_begin[kMaxRank], kv_end[kMaxRank];
        FastDivisor kv_tiles[kMaxRank];  // kv tiles per axis, as a divisor: tile_origin divides without an IDIV
        long long head_offset;
        int tile_tokens, n_tiles, empty;
        // With a bias: the current kv tile's per-slot part of the bias index (sum over axes of the key's
        // position x rpb_stride), written before the loop's barrier: the per-element bias reads it instead of
        // deriving it from the column, which the compiler would hoist out of the loop into ~100 live registers.
        int kv_bias[kBlockN];
        // Each query slot's window per axis ([begin, end), group coordinates): read only on tiles that are not
        // interior for the whole block, to build the element masks (12 registers per thread saved).
        int q_begin[kBlockM][kMaxRank], q_end[kBlockM][kMaxRank];
    };
    static_assert(sizeof(Block) <= kNaStaticSmem, "core_plan.h counts the policy's static shared memory");
    static __device__ Block& shared_block() {
        __shared__ Block block;
        return block;
    }
    __device__ const Block& s() const { return shared_block(); }
    int rows[2];  // this thread's two query slots
    int q_bias[2];  // the query's part of the bias index: sum (q_pos - k + 1) * rpb_stride
    bool cur_masked;
    uint64_t keep_mask[2];  // the current tile's element mask of each row (na_index.h's slot_keep_mask)
    const float* bias = nullptr;  // the head's bias table in shared memory, when staged

    __device__ explicit NaPolicy(const Params& params) : p(params) {}

    __device__ int bias_table() const { return static_cast<int>(p.pr.bias_table()); }  // staged: fits in an int

    // The bias is read once per element of every visited tile: the head's table is staged (as float) in the
    // shared memory the launch added for it. The core takes a bias only when its table fits there (else the
    // first-generation kernel runs): a read of global memory in the unrolled logit loop made ptxas fall back
    // to 32 registers and kilobytes of spills.
    __device__ void stage(float* shared) {
        if (!p.rpb) return;
        const int table = bias_table();
        const Elem* src = p.rpb + static_cast<long long>(blockIdx.y) * table;
        for (int i = threadIdx.x; i < table; i += kThreads) shared[i] = static_cast<float>(src[i]);
        bias = shared;
    }

    // Local coordinates of tile slot `slot` (axis 2 fastest); tile dims are powers of two (choose_tile_shape).
    __device__ void local(int slot, int* at) const {
        const int s1 = __ffs(p.pr.tile[1]) - 1, s2 = __ffs(p.pr.tile[2]) - 1;
        at[0] = slot >> (s1 + s2);
        at[1] = (slot >> s2) & (p.pr.tile[1] - 1);
        at[2] = slot & (p.pr.tile[2] - 1);
    }

    // Thread 0 derives the block's tile geometry once; the barrier publishes it (every thread then takes the
    // same early exit for an empty tile).
    __device__ bool begin() {
        Block& b = shared_block();
        if (threadIdx.x == 0) {
            int id = blockIdx.x;
            b.empty = 0;
            for (int a = kMaxRank - 1; a >= 0; --a) {
                const int per_axis = p.pr.d[a] * p.pr.tiles_per_group[a];
                const int t = id % per_axis;
                id /= per_axis;
                b.group[a] = t / p.pr.tiles_per_group[a];
                b.first[a] = (t % p.pr.tiles_per_group[a]) * p.pr.tile[a];
                b.glen[a] = group_length(p.pr.n[a], p.pr.d[a], b.group[a]);
                if (b.first[a] >= b.glen[a]) b.empty = 1;  // a shorter dilation group: this tile is empty
            }
            b.n_tiles = 1;
            for (int a = 0; a < kMaxRank && !b.empty; ++a) {
                const int last = min(b.first[a] + p.pr.tile[a], b.glen[a]) - 1;
                const Range r = tile_kv_range(b.first[a], last, b.glen[a], p.pr.k[a], p.pr.s[a], p.pr.causal[a] != 0);
                b.kv_begin[a] = r.begin;
                b.kv_end[a] = r.end;
                b.kv_tiles[a] = FastDivisor(ceil_div(r.end - r.begin, p.pr.tile[a]));
                b.n_tiles *= b.kv_tiles[a].divisor;
            }
            b.tile_tokens = p.pr.tile[0] * p.pr.tile[1] * p.pr.tile[2];
            b.head_offset = static_cast<long long>(blockIdx.z) * p.pr.batch_stride + static_cast<long long>(blockIdx.y) * p.pr.dim;
        }
        __syncthreads();
        return !b.empty;
    }
    __device__ int kv_tiles() const { return s().n_tiles; }

    // Element offset of tile slot `slot` at box origin `base`, or -1 past `limit` (per axis) or the tile.
    __device__ long long slot_offset(int slot, const int* base, const int* limit) const {
        if (slot >= s().tile_tokens) return -1;
        int at[kMaxRank];
        local(slot, at);
        long long offset = s().head_offset;
        for (int a = 0; a < kMaxRank; ++a) {
            const int pos = base[a] + at[a];
            if (pos >= limit[a]) return -1;
            offset += static_cast<long long>(s().group[a] + p.pr.d[a] * pos) * p.pr.token_stride[a];
        }
        return offset;
    }
    // The box origin of kv tile t < n_tiles (row-major over the block's kv tiles, axis 2 fastest). Two
    // multiply-high divisions (FastDivisor), not three integer divisions: what remains of t after axes 2 and 1 is
    // axis 0's index, below kv_tiles[0]. (The two saved registers keep sm_80's head_dim 32 kernel at 4 blocks.)
    __device__ void tile_origin(int t, int* origin) const {
        for (int a = kMaxRank - 1; a > 0; --a) {
            const int rest = s().kv_tiles[a].quotient(t);
            origin[a] = s().kv_begin[a] + (t - rest * s().kv_tiles[a].divisor) * p.pr.tile[a];
            t = rest;
        }
        origin[0] = s().kv_begin[0] + t * p.pr.tile[0];
    }
    __device__ long long q_row(int r) const { return slot_offset(r, s().first, s().glen); }
    __device__ long long o_row(int r) const { return q_row(r); }
    struct Tile {
        int origin[kMaxRank];
    };
    __device__ Tile kv_tile(int t) const {
        Tile tile;
        tile_origin(t, tile.origin);
        return tile;
    }
    __device__ void kv_row(const Tile& tile, int r, long long& k_off, long long& v_off) const {
        k_off = v_off = slot_offset(r, tile.origin, s().kv_end);
    }

    __device__ void set_rows(const int (&slot_rows)[2]) {
        rows[0] = slot_rows[0];
        rows[1] = slot_rows[1];
        for (int i = 0; i < 2; ++i) {
            int at[kMaxRank];
            local(rows[i], at);
            q_bias[i] = 0;
            for (int a = 0; a < kMaxRank; ++a) {
                const int glen = s().glen[a];
                const int pos = min(s().first[a] + at[a], glen - 1);  // a padding row takes a real row's window
                const Range w = window(pos, glen, p.pr.k[a], p.pr.s[a], p.pr.causal[a] != 0);
                shared_block().q_begin[rows[i]][a] = w.begin;  // the quad's 4 threads write the same values
                shared_block().q_end[rows[i]][a] = w.end;
                q_bias[i] += (pos - p.pr.k[a] + 1) * p.pr.rpb_stride[a];  // rpb_index(j, i, k) = j - i + k - 1
            }
        }
    }

    // Before the barrier of tile t (the previous tile's readers are past the end-of-tile barrier).
    __device__ void prepare_tile(int t) {
        const int c = threadIdx.x;
        if (!p.rpb || c >= kBlockN) return;
        int origin[kMaxRank], at[kMaxRank];
        tile_origin(t, origin);
        local(c, at);
        int bias_part = 0;
        for (int a = 0; a < kMaxRank; ++a) bias_part += (origin[a] + at[a]) * p.pr.rpb_stride[a];
        shared_block().kv_bias[c] = bias_part;
    }

    // The element mask of this thread's two rows as bits (a few integer operations per row, any window
    // size); a warp all of whose rows keep every slot skips the element path: the tile lies inside the
    // window of every query of the warp (exact, not only where the whole 64-query tile agrees).
    __device__ void set_tile(int t) {
        int origin[kMaxRank];
        tile_origin(t, origin);
        // First the block-wide rule (cheap, from shared memory): a kv tile inside every window of the whole
        // query tile (windows are monotone in the query index: the first and last query of each axis decide).
        const Block& b = s();
        bool interior = b.tile_tokens == kBlockN && !p.rpb;
        for (int a = 0; a < kMaxRank && interior; ++a)
            interior = kv_tile_interior(b.first[a], min(b.first[a] + p.pr.tile[a], b.glen[a]) - 1, origin[a],
                                        p.pr.tile[a], b.kv_end[a], b.glen[a], p.pr.k[a], p.pr.s[a], p.pr.causal[a] != 0);
        cur_masked = !interior;
        if (interior) return;  // block-uniform: the vote below sees whole warps
        for (int r = 0; r < 2; ++r)
            keep_mask[r] = slot_keep_mask(p.pr.tile, origin, b.kv_end, b.q_begin[rows[r]], b.q_end[rows[r]]);
        const bool full = (keep_mask[0] & keep_mask[1]) == ~0ull;
        cur_masked = !__all_sync(0xffffffffu, full) || p.rpb != nullptr;
    }
    __device__ bool masked(int) const { return cur_masked; }

    __device__ bool keep(int slot, int c) const { return (keep_mask[slot] >> c) & 1u; }

    __device__ float score_scale() const { return bias ? 1.f : p.pr.scale_log2; }
    __device__ float score(int, int, float dot) const { return dot; }
    __device__ bool biased() const { return bias != nullptr; }
    __device__ float biased_score(int slot, int c, float dot) const {  // kept elements only: the index is in the table
        return dot * p.pr.scale_log2 + bias[s().kv_bias[c] - q_bias[slot]] * kLog2e;
    }
    __device__ float finish(int) const { return 1.f; }
    __device__ float qmax_p() const { return 1.f; }
};

// ---- block-sparse: a query tile is 64 x RowTiles rows of one query block (block_q % (64 x RowTiles) == 0,
// core_plan.h's bsa_row_tiles); it visits its row's listed blocks as one virtual key sequence
// (block_layout.h's VirtualKeys) in 64-key tiles, in list order. Only tiles with a slot past the list's end or
// a key past seq_kv are masked; their element mask is built once per tile as 64 bits (two warp ballots of a
// key lookup each) before the tile's barrier, not by a key lookup (an integer division and a global load) per
// element while S is live.
template <typename Elem, int RowTiles = 1>
struct BsaPolicy {
    static constexpr bool kMayBias = false;
    static constexpr bool kQuantP = false;
    static constexpr bool kScaledDot = true;
    static constexpr int kRowTiles = RowTiles;
    using QkElem = Elem;
    struct Params {
        int heads, seq_q, seq_kv, dim, block_q;
        FastDivisor block_kv;  // made once on the host: a slot's block without an integer division per row
        attnx_block_layout layout;
        const int32_t* kv_count;
        const int32_t* kv_index;
        int batch0, head0;  // this launch's first batch and head in the layout (grid chunks)
        float scale_log2;
    };

    const Params& p;
    VirtualKeys keys;
    long long q_base, kv_base;
    int q_first, n_tiles;
    bool cur_masked;
    uint64_t keep_bits;  // the current masked tile's slots that hold a key

    __device__ explicit BsaPolicy(const Params& params) : p(params) {}
    __device__ void stage(float*) {}
    // Before tile t's barrier, for the tile's logits (S is not live yet). tile_masked is uniform over the block,
    // so whole warps take the ballots.
    __device__ void prepare_tile(int t) {
        cur_masked = keys.tile_masked(t, kBlockN);
        if (!cur_masked) return;
        const int lane = threadIdx.x & 31, first = t * kBlockN;
        const unsigned low = __ballot_sync(0xffffffffu, keys.key(first + lane) >= 0);
        const unsigned high = __ballot_sync(0xffffffffu, keys.key(first + 32 + lane) >= 0);
        keep_bits = (static_cast<uint64_t>(high) << 32) | low;
    }

    __device__ bool begin() {
        const int b = blockIdx.z, h = blockIdx.y;
        q_first = blockIdx.x * block_rows<RowTiles>();
        const BlockRow row = block_row(p.layout, p.kv_count, p.kv_index, p.batch0 + b, p.head0 + h, q_first / p.block_q,
                                       ceil_div(p.seq_kv, p.block_kv.divisor));
        keys = VirtualKeys{row, p.block_kv, p.seq_kv};
        n_tiles = keys.tiles(kBlockN);
        q_base = (static_cast<long long>(b) * p.heads + h) * p.seq_q * p.dim;
        kv_base = (static_cast<long long>(b) * p.heads + h) * p.seq_kv * p.dim;
        return true;
    }
    __device__ int kv_tiles() const { return n_tiles; }
    __device__ long long q_row(int r) const { return q_first + r < p.seq_q ? q_base + static_cast<long long>(q_first + r) * p.dim : -1; }
    __device__ long long o_row(int r) const { return q_row(r); }
    struct Tile {
        int first_slot;
    };
    __device__ Tile kv_tile(int t) const { return Tile{t * kBlockN}; }
    __device__ void kv_row(const Tile& tile, int r, long long& k_off, long long& v_off) const {
        const int key = keys.key(tile.first_slot + r);
        k_off = v_off = key < 0 ? -1 : kv_base + static_cast<long long>(key) * p.dim;
    }
    __device__ void set_rows(const int (&)[2 * RowTiles]) {}
    __device__ void set_tile(int) {}
    __device__ bool masked(int) const { return cur_masked; }
    __device__ bool keep(int, int c) const { return (keep_bits >> c) & 1u; }
    __device__ float score_scale() const { return p.scale_log2; }
    __device__ float score(int, int, float dot) const { return dot; }
    __device__ float finish(int) const { return 1.f; }
    __device__ float qmax_p() const { return 1.f; }
};

// ---- PARO: block-sparse over the permuted sequence with block == 64 (a query tile is one query block,
// a kv tile one listed block). Rows are gathered through perm_idx (q, k, v in the original order) or read
// directly from the pre-pass workspace (quantized operands, already in permuted order); O is scattered
// through perm_idx. QK scales per row and column group; P quantized per tile; V's channel scale at the end.
// Int8QK (qk_bits < 16): the pre-pass wrote Q and K as int8 and S = Q K^T runs on the s8 MMA.
template <typename Elem, bool QuantP, bool Int8QK = false>
struct ParoPolicy {
    static constexpr bool kMayBias = false;
    static constexpr bool kQuantP = QuantP;
    static constexpr bool kScaledDot = false;  // scores are the logits (two scales, two roundings)
    static constexpr int kRowTiles = 1;  // a query tile is one query block of 64 (its P scale is per block pair)
    using QkElem = typename std::conditional<Int8QK, int8_t, Elem>::type;
    struct Params {
        int heads, seq, dim;
        attnx_block_layout layout;
        const int32_t* kv_count;
        const int32_t* kv_index;
        const int32_t* perm;   // [heads, seq], this launch's first head
        int batch0, head0;
        int gather_qk, gather_v;  // 1: rows of the input through perm; 0: rows of the workspace (permuted)
        const float* q_scale;  // [B, H, ceil(seq / q_group)] or null (no QK quantization)
        const float* k_scale;  // [B, H, ceil(seq / k_group)] or null
        const float* v_scale;  // [B, H, dim] or null (no PV quantization)
        int q_group, k_group;
        float qmax_p;
        float scale_log2;
    };

    const Params& p;
    BlockRow row;
    const int32_t* perm;
    long long base;
    long long scale_row;  // (b * H + h) of the full problem, for the scale arrays
    int q_first, cur_block;
    float row_scale[2];

    __device__ explicit ParoPolicy(const Params& params) : p(params) {}
    __device__ void stage(float*) {}

    // The current kv tile's K scale per key slot, in shared memory: score() reads one float per element
    // instead of dividing the key index by k_group and loading the scale from global memory.
    static __device__ float* tile_k_scale() {
        __shared__ float scales[kBlockN];
        return scales;
    }
    // Before the barrier of tile t (the previous tile's readers are past the end-of-tile barrier). Without QK
    // quantization the scales are 1: score() has no per-element branch.
    __device__ void prepare_tile(int t) {
        const int c = threadIdx.x;
        if (c >= kBlockN) return;
        const int key = min(row.block(t) * kBlockN + c, p.seq - 1);  // past the end: masked, any scale will do
        tile_k_scale()[c] = p.k_scale ? p.k_scale[scale_row * ceil_div(p.seq, p.k_group) + key / p.k_group] : 1.f;
    }

    __device__ bool begin() {
        const int b = blockIdx.z, h = blockIdx.y;
        q_first = blockIdx.x * kBlockM;
        row = block_row(p.layout, p.kv_count, p.kv_index, p.batch0 + b, p.head0 + h, blockIdx.x, ceil_div(p.seq, kBlockN));
        perm = p.perm + static_cast<long long>(h) * p.seq;
        base = (static_cast<long long>(b) * p.heads + h) * p.seq * p.dim;
        scale_row = static_cast<long long>(p.batch0 + b) * p.heads + (p.head0 + h);
        return true;
    }
    __device__ int kv_tiles() const { return row.count; }
    __device__ long long at(int position, bool gather) const {
        return base + static_cast<long long>(gather ? paro::permuted(perm, position, p.seq) : position) * p.dim;
    }
    __device__ long long q_row(int r) const { return q_first + r < p.seq ? at(q_first + r, p.gather_qk) : -1; }
    __device__ long long o_row(int r) const { return q_first + r < p.seq ? at(q_first + r, true) : -1; }
    struct Tile {
        int first_key;
    };
    __device__ Tile kv_tile(int t) const { return Tile{row.block(t) * kBlockN}; }
    __device__ void kv_row(const Tile& tile, int r, long long& k_off, long long& v_off) const {
        const int key = tile.first_key + r;
        if (key >= p.seq) {
            k_off = v_off = -1;
            return;
        }
        const long long original = static_cast<long long>(paro::permuted(perm, key, p.seq)) * p.dim;  // one gather for both
        k_off = base + (p.gather_qk ? original : static_cast<long long>(key) * p.dim);
        v_off = base + (p.gather_v ? original : static_cast<long long>(key) * p.dim);
    }
    __device__ void set_rows(const int (&rows)[2]) {
        const int groups = ceil_div(p.seq, p.q_group);
        for (int s = 0; s < 2; ++s) {
            const int n = min(q_first + rows[s], p.seq - 1);
            row_scale[s] = p.scale_log2 * (p.q_scale ? p.q_scale[scale_row * groups + n / p.q_group] : 1.f);
        }
    }
    __device__ void set_tile(int t) { cur_block = row.block(t); }
    __device__ bool masked(int) const { return (cur_block + 1) * kBlockN > p.seq; }  // only the partial tail
    __device__ bool keep(int, int c) const { return cur_block * kBlockN + c < p.seq; }
    __device__ float score_scale() const { return 1.f; }  // the scores are the logits: two scales, two roundings
    __device__ float score(int slot, int c, float dot) const {
        float x = dot * row_scale[slot];
        return x * tile_k_scale()[c];  // the same two roundings as before: (dot * q scale) * k scale (or 1)
    }
    __device__ float finish(int c) const { return p.v_scale ? p.v_scale[scale_row * p.dim + c] : 1.f; }
    __device__ float qmax_p() const { return p.qmax_p; }
};

}  // namespace core
}  // namespace attnx
