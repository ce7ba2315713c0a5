// The fused-attention core (second generation), shared by neighborhood, block-sparse and PARO attention.
//
// FlashAttention-2 structure for sm_80+, written on CuTe: a block of 4 warps owns one query tile of one
// (batch, head): 64 queries (each warp owns 16 rows) or, where the policy asks for two row tiles, 128 queries
// (each warp owns 32 rows: rows w*16.. and 64 + w*16..), so that every K and V fragment a warp loads from shared
// memory feeds two MMAs and each K/V tile read from L2 serves 128 queries. Q is loaded once into registers
// (re-read per k-slice from shared memory where 32 rows of it would not fit beside the accumulators, and a kv
// tile then taken in two 32-key steps: core_split); K and V tiles of 64 keys
// stream through a cp.async ring of 2 stages (tile n+1 is in flight while tile n is computed) or, on sm_90 at
// head_dim <= 64, 3 (tiles n+1 and n+2: core_plan.h's core_stages); S = Q K^T and
// O += P V run on mma.sync (16x8x16, fp16/bf16 in, fp32 accumulate) with ldmatrix operand loads; scores,
// probabilities and the output accumulator never leave registers; the softmax is online and in base 2, its exp2
// one SFU instruction (exp2_ftz).
//
// What differs between the ops is a tile policy (attn_policies.cuh): which kv tiles a query tile visits and
// in what order, which of them need an element mask (interior tiles never do), the mask, and how rows are
// addressed (direct, or gathered through an index). PARO adds per-row/per-column logit scales (its QK
// quantization, done by a pre-pass into integer-valued operands) and per-tile P quantization.
// Integer-valued operands in fp16/bf16 multiply exactly and sum exactly in fp32 (|q|,|k|,|p|,|v| <= 127,
// 64-128 terms < 2^24). A policy whose QkElem is int8_t (PARO with qk_bits < 16: the pre-pass writes int8 Q and
// K) computes S = Q K^T on the s8 MMA (mma.sync m16n8k32, int32 accumulate, half the MMAs and ldmatrix of
// fp16): the same integers, converted to fp32 exactly (|dot| <= 127^2 * 128 < 2^24), so S is bit-identical.
// The simulators in attn_export.models.*_kernel_sim replay this algorithm on the CPU.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cute/tensor.hpp>
#include <type_traits>

#include "core_plan.h"
#include "na_index.h"
#include "paro_rules.h"

namespace attnx {
namespace core {

using namespace cute;

constexpr int kBlockM = 64;  // queries per row tile (4 warps x 16 rows); a query tile holds RowTiles of them
constexpr int kBlockN = 64;  // keys per kv tile
constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kDefaultStages = 2;  // K/V tiles of the cp.async ring (core_plan.h's core_stages picks 2 or 3)
constexpr float kLog2e = 1.4426950408889634f;

template <typename Elem>
struct ElemTraits;
template <>
struct ElemTraits<half_t> {
    using Mma = SM80_16x8x16_F32F16F16F32_TN;
    using Native = __half;
};
template <>
struct ElemTraits<bfloat16_t> {
    using Mma = SM80_16x8x16_F32BF16BF16F32_TN;
    using Native = __nv_bfloat16;
};
// Integer operands (PARO's quantized Q and K): one MMA covers 32 of the reduction dimension, int32 accumulator
// in the fp16 MMA's C layout (m16n8, SM80_16x8_Row; core_layout_check proves both against the PTX ISA).
template <>
struct ElemTraits<int8_t> {
    using Mma = SM80_16x8x32_S32S8S8S32_TN;
};

// Rows of a query tile of RowTiles row tiles (1: 64, 2: 128).
template <int RowTiles>
constexpr int block_rows() {
    static_assert(RowTiles == 1 || RowTiles == 2, "a query tile is one or two row tiles");
    return kBlockM * RowTiles;
}

// Tile geometry of one head_dim and query tile: swizzled shared-memory layouts (conflict-free ldmatrix and
// cp.async), the tiled MMA and the ldmatrix copy atoms.
// Elem int8_t: the tiles of the s8 MMA's operands (Q, K), 16 elements per 16-byte chunk.
template <typename Elem, int HeadDim, int RowTiles = 1, int Stages = kDefaultStages>
struct Geometry {
    static_assert(HeadDim == 32 || HeadDim == 64 || HeadDim == 128, "the core takes head_dim 32, 64 or 128");
    static constexpr int kChunkElems = 16 / int(sizeof(Elem));  // elements per 16-byte chunk (cp.async, ldmatrix row)
    static constexpr int kChunkBits = kChunkElems == 16 ? 4 : 3;
    // A swizzle atom row holds up to 8 chunks (128 bytes): 64 fp16 / 128 int8 elements, fewer for short rows.
    static constexpr int kAtomChunks = HeadDim / kChunkElems >= 8 ? 8 : HeadDim / kChunkElems;
    static constexpr int kRowChunk = kAtomChunks * kChunkElems;  // elements per swizzle atom row
    static constexpr int kSwizzleBits = kAtomChunks == 8 ? 3 : kAtomChunks == 4 ? 2 : 1;
    using AtomLayout = decltype(composition(Swizzle<kSwizzleBits, kChunkBits, 3>{},
                                            Layout<Shape<_8, Int<kRowChunk>>, Stride<Int<kRowChunk>, _1>>{}));
    template <int Rows>
    using RowsLayout = decltype(tile_to_shape(AtomLayout{}, Shape<Int<Rows>, Int<HeadDim>>{}));
    using TileLayout = RowsLayout<kBlockN>;                       // a K or V tile
    using QTileLayout = RowsLayout<block_rows<RowTiles>()>;       // the Q tile
    // V read as (head_dim, keys) for the B operand of P.V: the same memory, transposed view.
    using TileLayoutT = decltype(composition(TileLayout{}, make_layout(Shape<Int<HeadDim>, Int<kBlockN>>{}, GenRowMajor{})));
    static constexpr int kMmaK = 32 / int(sizeof(Elem));  // the MMA's reduction extent: 16 (fp16/bf16), 32 (s8)
    using TiledMma = TiledMMA<MMA_Atom<typename ElemTraits<Elem>::Mma>, Layout<Shape<Int<kWarps>, _1, _1>>,
                              Tile<Int<16 * kWarps>, _16, Int<kMmaK>>>;
    using LoadAtom = Copy_Atom<SM75_U32x4_LDSM_N, Elem>;
    using LoadAtomT = Copy_Atom<SM75_U16x8_LDSM_T, Elem>;  // fp16/bf16 only (V^T)
    static constexpr int kTileElems = kBlockN * HeadDim;
    static constexpr int kChunks = HeadDim / kChunkElems;  // 16-byte chunks per row
    static_assert(Stages == 2 || Stages == 3, "the ring holds 2 or 3 kv tiles");
    // Q tile (RowTiles slots) + Stages x (K tile + V tile) + the PARO tile-max exchange (an int8 Q or K tile uses
    // the first half of its slots).
    static constexpr size_t kSmemBytes =
        sizeof(Elem) * kTileElems * (RowTiles + 2 * Stages) + 2 * kWarps * sizeof(float);
};

// launch(std::integral_constant<int, S>{}) with S the ring's stages as core_plan.h's core_stages chose them: the
// 3-stage instance exists at head_dim <= 64 only, so head_dim 128 compiles one launch.
template <int HeadDim, typename Launch>
auto with_stages(int stages, Launch&& launch) {
    if constexpr (core_has_three_stages(HeadDim))
        if (stages == 3) return launch(std::integral_constant<int, 3>{});
    return launch(std::integral_constant<int, 2>{});
}

// The accumulator layout of S (m16n8 C fragments) read as the A operand of the next MMA (m16n8k16):
// ((2,2),M,N) -> ((2,2,2),M,N/2). Registers stay in place; only their indexing changes.
template <class Layout>
CUTE_HOST_DEVICE auto acc_as_a_operand(Layout l) {
    auto split = logical_divide(l, Shape<Underscore, Underscore, _2>{});  // ((2,2),M,(2,N/2))
    return make_layout(make_layout(get<0>(split), get<2, 0>(split)), get<1>(split), get<2, 1>(split));
}

// 16-byte global -> shared copy; `pred` false writes zeros (padding rows, keys outside the sequence).
__device__ __forceinline__ void copy_chunk(const void* src, void* dst, bool pred) {
    SM80_CP_ASYNC_CACHEGLOBAL_ZFILL<uint128_t>::copy(*static_cast<const uint128_t*>(src), *static_cast<uint128_t*>(dst),
                                                     pred);
}

// Which of its query rows (slots 0 .. 2 RowTiles - 1, slot_row's) register i of an S or O fragment belongs to.
// Fragments are ((2,2), RowTiles, N) (one 16-row MMA per warp and row tile): the second of the inner pair
// selects row or row + 8, the M mode the row tile. Static, so that per-row values stay in registers (a slot
// computed from the coordinates would index local memory).
template <int RowTiles = 1>
__host__ __device__ constexpr int row_slot(int i) { return ((i >> 1) & 1) | (((i >> 2) % RowTiles) << 1); }
// Steps per 64-key tile of the tile's S, softmax and P V: 2 (32 keys each) for 128-query tiles at head_dim 128,
// whose 64-key S (64 registers per thread) beside the output (128) spills 50 instructions (sm_90); in two steps
// S takes 32 registers and 21 spill instructions remain (benchmarks.md (k)); else 1.
constexpr int core_split(int row_tiles, int head_dim) { return row_tiles > 1 && head_dim == 128 ? 2 : 1; }

// The query row (within the query tile) of slot `slot` of thread `lane` of warp `warp`.
__host__ __device__ constexpr int slot_row(int warp, int lane, int slot) {
    return (slot >> 1) * kBlockM + warp * 16 + lane / 4 + 8 * (slot & 1);
}

// 2^x on the SFU alone: ex2.approx.ftz is one MUFU.EX2. exp2f is the same MUFU.EX2 wrapped in a range check and
// two predicated multiplies (4 instructions per element of S) only to return results below 2^-126 as subnormals
// instead of 0; for every input from -126 up (and NaN, -inf: 0) both are the same instruction, the same bits. A
// probability below 2^-126 is nothing beside the row's largest (about 1): it rounds to 0 in fp16 P and in
// PARO's quantized P (whose scale is at least 2^-30 / qmax), a row sum of 1 or more cannot hold it, and where it
// survives (bf16 P, an alpha rescaling acc_o) it moves an output by at most keys x 2^-126 x max|v| / l.
// FlashAttention's exp2 under --use_fast_math is this instruction.
__device__ __forceinline__ float exp2_ftz(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

__device__ __forceinline__ float quad_max(float x) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
    return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// Copies Rows rows of HeadDim elements of `a` (and, with `b`, of b) into swizzled tiles (GeoA's and GeoB's
// layouts). rows(r, off_a, off_b) gives the row's element offsets, -1 for a row that does not exist
// (zero-filled). Each thread walks its rows once for both tensors (the offsets of K and V rows are one index
// computation). The chunk grid is the wider row's: with int8 K and fp16 V a row of K has half the chunks of
// V's, and the threads of the other half copy only V (a per-thread constant, no per-chunk branch).
template <class GeoA, class GeoB, int Rows = kBlockN, typename A, typename B, class RowOffsets>
__device__ __forceinline__ void load_rows(const A* a, A* tile_a, const B* b, B* tile_b, RowOffsets&& rows) {
    typename GeoA::template RowsLayout<Rows> layout_a;
    typename GeoB::template RowsLayout<Rows> layout_b;
    constexpr int kChunks = GeoA::kChunks > GeoB::kChunks ? GeoA::kChunks : GeoB::kChunks;
    constexpr int kPerThread = Rows * kChunks / kThreads;
    static_assert(Rows * kChunks % kThreads == 0 && kThreads % kChunks == 0, "whole chunks per thread");
    const int tid = threadIdx.x;
    // Consecutive threads take consecutive chunks of a row: coalesced 16-byte reads.
    long long off_a = -1, off_b = -1;
    int cached_row = -1;
    if constexpr (GeoA::kChunks == GeoB::kChunks) {  // one chunk grid (fp16/bf16 K and V, or Q alone)
#pragma unroll
        for (int i = 0; i < kPerThread; ++i) {
            const int chunk = tid + i * kThreads;
            const int row = chunk / kChunks, col = (chunk % kChunks) * GeoA::kChunkElems;
            if (row != cached_row) {
                rows(row, off_a, off_b);
                cached_row = row;
            }
            copy_chunk(off_a >= 0 ? a + off_a + col : a, tile_a + layout_a(row, col), off_a >= 0);
            if (b) copy_chunk(off_b >= 0 ? b + off_b + col : b, tile_b + layout_b(row, col), off_b >= 0);
        }
    } else {
        const int chunk_col = tid % kChunks;  // the same column of chunks on every row this thread copies
        const bool copies_a = chunk_col < GeoA::kChunks, copies_b = b && chunk_col < GeoB::kChunks;
        const int col_a = chunk_col * GeoA::kChunkElems, col_b = chunk_col * GeoB::kChunkElems;
#pragma unroll
        for (int i = 0; i < kPerThread; ++i) {
            const int row = (tid + i * kThreads) / kChunks;
            if (row != cached_row) {
                rows(row, off_a, off_b);
                cached_row = row;
            }
            if (copies_a) copy_chunk(off_a >= 0 ? a + off_a + col_a : a, tile_a + layout_a(row, col_a), off_a >= 0);
            if (copies_b) copy_chunk(off_b >= 0 ? b + off_b + col_b : b, tile_b + layout_b(row, col_b), off_b >= 0);
        }
    }
}

// One query tile. Policy (attn_policies.cuh) provides, per block:
//   bool begin()                      false: an empty tile (nothing to do)
//   void stage(float* shared)         copies per-block tables into the dynamic shared memory past the core's
//                                     own (the neighborhood bias); visible after the loop's first barrier
//   static constexpr int kRowTiles    rows of a query tile: 1 (64) or 2 (128; the policy then must not keep
//                                     per-slot state beyond what set_rows gets)
//   void set_rows(const int (&)[2 * kRowTiles])  this thread's query rows, by slot (slot_row)
//   int kv_tiles()                    kv tiles to visit, in order 0..kv_tiles()-1
//   long long q_row(r), o_row(r)      element offsets of query row r in q and out, -1: no such row
//   Tile kv_tile(t)                   per-tile addressing state (NA: the box origin), computed once per load
//   void kv_row(tile, r, k_off, v_off)  element offsets of row r of that kv tile in k and v (-1: none)
//   void prepare_tile(t)              before tile t's barrier: per-tile shared tables (the neighborhood's slot
//                                     coordinates)
//   void set_tile(t)                  before tile t's logits
//   bool masked(t)                    tile t needs the element mask (false for interior tiles)
//   bool keep(slot, c)                the element mask of the current (masked) tile
//   float score_scale()               > 0, one value per call (after stage()): score x score_scale() is the
//                                     base-2 logit. The softmax scale where the logit is dot x scale (the core
//                                     then fuses that multiply into exp2's argument, one FFMA, as FlashAttention
//                                     does); 1 where the score is the logit itself (PARO's two QK scales, a bias)
//   float score(slot, c, dot)         the score of a kept element from its raw dot product (the dot itself, or
//                                     PARO's (dot x q scale) x k scale)
//   static constexpr bool kScaledDot  score() is the raw dot and score_scale() the softmax scale (block-sparse,
//                                     neighborhood unless biased): the core may fold the scale into exp2 (kFuseScale)
//   float finish(c)                   per-column output factor (PARO's V channel scale; else 1)
//   static constexpr bool kMayBias    a runtime bias may be present: then bool biased() says whether it is, and
//                                     float biased_score(slot, c, dot) is the logit with it (score_scale() is
//                                     then 1; every tile of a biased call takes the masked path, with the bias)
//   static constexpr bool kQuantP     P is quantized per tile (PARO pv_bits < 16) with qmax_p() levels
//   using QkElem                      the element type of q and k: Elem, or int8_t (S on the s8 MMA)
template <typename Elem, int HeadDim, class Policy, int Stages = kDefaultStages>
__global__ void __launch_bounds__(kThreads)
    attention_core_kernel(const __grid_constant__ typename Policy::Params params,
                          const typename Policy::QkElem* __restrict__ q, const typename Policy::QkElem* __restrict__ k,
                          const Elem* __restrict__ v, Elem* __restrict__ out) {
    constexpr int kRowTiles = Policy::kRowTiles;
    constexpr int kRows = block_rows<kRowTiles>();  // query rows of the tile
    constexpr int kSlots = 2 * kRowTiles;           // query rows per thread
    constexpr int kStages = Stages;                 // kv tiles in the cp.async ring
    using Geo = Geometry<Elem, HeadDim, kRowTiles, kStages>;
    using QkElem = typename Policy::QkElem;
    using QkGeo = Geometry<QkElem, HeadDim, kRowTiles, kStages>;  // Geo itself unless Q and K are int8
    static_assert(sizeof(QkElem) <= sizeof(Elem), "a Q or K tile fits the slot of an Elem tile");
#if defined(__CUDA_ARCH__)
    // 128-query tiles and the 3-stage ring run on sm_90 only (core_plan.h's bsa_row_tiles: ptxas spills the
    // former on sm_80/86; core_stages: the latter would cost blocks per SM there): elsewhere their instances are
    // a trap, not a kernel nobody launches. A 3-stage instance exists at head_dim <= 64 only.
    static_assert(kStages == 2 || core_has_three_stages(HeadDim), "core_plan.h's core_has_three_stages");
    if constexpr ((kRowTiles > 1 || kStages > 2) && __CUDA_ARCH__ / 100 != 9) {
        __trap();
        __builtin_unreachable();
    }
#endif
    extern __shared__ __align__(128) unsigned char smem_raw[];
    // Slots of Geo::kTileElems Elems each (an int8 tile uses the first half of its slot).
    Elem* slot_ptr = reinterpret_cast<Elem*>(smem_raw);
    QkElem* sQ_ptr = reinterpret_cast<QkElem*>(slot_ptr);
    // stage s of K at + s * kTileElems Elems
    QkElem* sK_ptr = reinterpret_cast<QkElem*>(slot_ptr + kRowTiles * Geo::kTileElems);
    Elem* sV_ptr = slot_ptr + (kRowTiles + kStages) * Geo::kTileElems;
    float* tile_max_exchange = reinterpret_cast<float*>(sV_ptr + kStages * Geo::kTileElems);  // [2][kWarps]
    static_assert(Geo::kSmemBytes % 16 == 0, "a staged table starts aligned past the core's shared memory");

    Policy policy(params);
    if (!policy.begin()) return;
    policy.stage(reinterpret_cast<float*>(smem_raw + Geo::kSmemBytes));
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int n_tiles = policy.kv_tiles();

    typename Geo::TiledMma tiled_mma;  // O += P V (and S = Q K^T unless Q and K are int8)
    auto thr_mma = tiled_mma.get_thread_slice(tid);
    typename QkGeo::TiledMma qk_mma;   // S = Q K^T: tiled_mma's type, or the s8 MMA (the same C layout)
    auto thr_qk = qk_mma.get_thread_slice(tid);
    Tensor sQ = make_tensor(make_smem_ptr(sQ_ptr), typename QkGeo::QTileLayout{});

    // Row coordinates of this thread's accumulator elements: (row, col) of every S and O register.
    // The kv tile's keys are processed in kSplit steps of kCols (core_split): S, the online-softmax step and P V
    // on 32 keys at a time where 64 would not fit in registers beside the output (128-query tiles, head_dim 128).
    constexpr int kSplit = core_split(kRowTiles, HeadDim);
    constexpr int kCols = kBlockN / kSplit;
    // Where score_scale() goes: into exp2's argument (one FFMA: the per-element multiply disappears) where ptxas turns
    // that into fewer instructions, measured on sm_90: block-sparse with one key step per tile, -4% to -9% per tile.
    // Elsewhere the score is scaled where it is made and the exponent is the plain subtraction, as before: the
    // neighborhood policy (folded: +0.5%, its registers reshuffle; unfolded it pays +2 instructions a tile for
    // score_scale()'s bias select), 128-query head_dim 128 tiles (two key steps: +5%) and PARO (no scale to fold;
    // fmaf(x, 1, -m) is not folded to a subtraction, and PARO's head_dim 32 3-stage kernel then took 130 registers, one
    // block per SM fewer than its 2-stage twin).
    constexpr bool kFuseScale = kSplit == 1 && Policy::kScaledDot && !Policy::kMayBias;
    const float score_scale = policy.score_scale();
    const float exp_scale = kFuseScale ? score_scale : 1.f;
    auto scaled = [&](float score) { return kFuseScale ? score : score * score_scale; };
    static_assert(kSplit == 1 || !Policy::kQuantP, "PARO's P scale is per 64-key tile: no split");
    Tensor cS = make_identity_tensor(Shape<Int<kRows>, Int<kCols>>{});
    Tensor tScS = thr_mma.partition_C(cS);  // (row, column within the step) of every S register
    Tensor cO = make_identity_tensor(Shape<Int<kRows>, Int<HeadDim>>{});
    Tensor tOcO = thr_mma.partition_C(cO);
    // Each thread holds 2 query rows per row tile: warp*16 + lane/4 and that + 8 (slot_row).
    bool row_valid[kSlots];
    {
        int rows[kSlots];
#pragma unroll
        for (int s = 0; s < kSlots; ++s) {
            rows[s] = slot_row(warp, lane, s);
            row_valid[s] = policy.q_row(rows[s]) >= 0;
        }
        policy.set_rows(rows);
    }

    auto issue_kv = [&](int t) {
        const int stage = t % kStages;
        const auto tile = policy.kv_tile(t);
        load_rows<QkGeo, Geo>(k, reinterpret_cast<QkElem*>(reinterpret_cast<Elem*>(sK_ptr) + stage * Geo::kTileElems), v,
                              sV_ptr + stage * Geo::kTileElems,
                              [&](int r, long long& k_off, long long& v_off) { policy.kv_row(tile, r, k_off, v_off); });
    };

    // Prologue: Q and kv tile 0 (group 0), kv tiles 1 .. kStages - 1 (groups 1 ..). A group may be empty; counts
    // stay uniform.
    // (A loop, not unrolled: one copy of the loader's index math instead of one per stage.)
    load_rows<QkGeo, QkGeo, kRows>(q, sQ_ptr, static_cast<const QkElem*>(nullptr), static_cast<QkElem*>(nullptr),
                            [&](int r, long long& q_off, long long&) { q_off = policy.q_row(r); });
#pragma unroll 1
    for (int t = 0; t < kStages; ++t) {
        if (t < n_tiles) issue_kv(t);
        cp_async_fence();
    }

    Tensor acc_o = partition_fragment_C(tiled_mma, Shape<Int<kRows>, Int<HeadDim>>{});
    static_assert(decltype(size<1>(acc_o))::value == kRowTiles, "row_slot: one 16-row MMA per warp and row tile");
    clear(acc_o);
    float row_max[kSlots], row_sum[kSlots];  // row_sum: this thread's partial sums; the quad's are added at the end
#pragma unroll
    for (int s = 0; s < kSlots; ++s) {
        row_max[s] = -INFINITY;
        row_sum[s] = 0.f;
    }
    float p_scale_prev = 1.f;       // PARO: the scale acc_o is expressed in (the last tile's P scale)

    auto smem_copy_a = make_tiled_copy_A(typename QkGeo::LoadAtom{}, qk_mma);
    auto smem_copy_b = make_tiled_copy_B(typename QkGeo::LoadAtom{}, qk_mma);
    auto smem_copy_bt = make_tiled_copy_B(typename Geo::LoadAtomT{}, tiled_mma);
    auto thr_copy_a = smem_copy_a.get_thread_slice(tid);
    auto thr_copy_b = smem_copy_b.get_thread_slice(tid);
    auto thr_copy_bt = smem_copy_bt.get_thread_slice(tid);

    // Q stays in registers for every kv tile (ptxas, sm_90, head_dim 128, 64 rows: no spill); with 32 rows per warp
    // at head_dim 128 its 64 registers cannot stay beside the output's 128, so it is re-read from shared memory
    // per k-slice, as FlashAttention-2 does (with the key steps of core_split ptxas still spills 21 instructions
    // there, docs/benchmarks.md (k); without them 50).
    constexpr bool kQInRegisters = !(kRowTiles > 1 && HeadDim == 128);
    Tensor tSrQ = thr_qk.partition_fragment_A(sQ);
    Tensor tSsQ = thr_copy_a.partition_S(sQ);
    Tensor tSrQ_view = thr_copy_a.retile_D(tSrQ);
    bool q_loaded = false;

    for (int t = 0; t < n_tiles; ++t) {
        policy.prepare_tile(t);
        cp_async_wait<kStages - 1>();  // all but the newest kStages - 1 groups: tile t (and Q) have landed
        __syncthreads();
        const int stage = t % kStages;
        QkElem* sK_stage = reinterpret_cast<QkElem*>(reinterpret_cast<Elem*>(sK_ptr) + stage * Geo::kTileElems);
        Tensor sK_tile = make_tensor(make_smem_ptr(sK_stage), typename QkGeo::TileLayout{});
        Tensor sVt_tile = make_tensor(make_smem_ptr(sV_ptr + stage * Geo::kTileElems), typename Geo::TileLayoutT{});
        if (kQInRegisters && !q_loaded) {
            copy(smem_copy_a, tSsQ, tSrQ_view);
            q_loaded = true;
        }
        bool biased = false;

        // The tile's keys in kSplit steps of kCols (kSplit 2: S, the softmax step and P V on 32 keys at a time).
#pragma unroll
        for (int h = 0; h < kSplit; ++h) {
            Tensor sK = local_tile(sK_tile, Shape<Int<kCols>, Int<HeadDim>>{}, make_coord(h, 0));
            Tensor sVt = local_tile(sVt_tile, Shape<Int<HeadDim>, Int<kCols>>{}, make_coord(0, h));

            // S = Q K^T, fp32 (or int32: the s8 MMA) in registers.
            Tensor acc_qk = partition_fragment_C(qk_mma, Shape<Int<kRows>, Int<kCols>>{});
            static_assert(decltype(size<1>(acc_qk))::value == kRowTiles,
                          "row_slot: one 16-row MMA per warp and row tile");
            clear(acc_qk);
            Tensor tSrK = thr_qk.partition_fragment_B(sK);
            Tensor tSsK = thr_copy_b.partition_S(sK);
            Tensor tSrK_view = thr_copy_b.retile_D(tSrK);
#pragma unroll
            for (int kk = 0; kk < size<2>(tSrK); ++kk) {
                if constexpr (!kQInRegisters) copy(smem_copy_a, tSsQ(_, _, kk), tSrQ_view(_, _, kk));
                copy(smem_copy_b, tSsK(_, _, kk), tSrK_view(_, _, kk));
                gemm(qk_mma, tSrQ(_, _, kk), tSrK(_, _, kk), acc_qk);
            }
            // The int32 dot products in fp32: exact (|dot| < 2^24), in the same registers' C layout as tScS's.
            Tensor acc_s = make_tensor_like<float>(acc_qk);
#pragma unroll
            for (int i = 0; i < size(acc_s); ++i) acc_s(i) = static_cast<float>(acc_qk(i));

            // Scores (base-2 logits / exp_scale); the element mask only where the policy asks for it (never on
            // interior tiles). Three loops, so that neither the interior tiles nor the masked tiles without a bias
            // carry the bias's per-element branch (its table index is valid for kept elements only).
            if (h == 0) {
                policy.set_tile(t);
                if constexpr (Policy::kMayBias) biased = policy.biased();
            }
            if (biased) {
                if constexpr (Policy::kMayBias) {
#pragma unroll
                    for (int i = 0; i < size(acc_s); ++i) {
                        const int slot = row_slot<kRowTiles>(i), c = h * kCols + get<1>(tScS(i));
                        acc_s(i) = policy.keep(slot, c) ? policy.biased_score(slot, c, acc_s(i)) : -INFINITY;
                    }
                }
            } else if (policy.masked(t)) {
#pragma unroll
                for (int i = 0; i < size(acc_s); ++i) {
                    const int slot = row_slot<kRowTiles>(i), c = h * kCols + get<1>(tScS(i));
                    acc_s(i) = policy.keep(slot, c) ? scaled(policy.score(slot, c, acc_s(i))) : -INFINITY;
                }
            } else {
#pragma unroll
                for (int i = 0; i < size(acc_s); ++i)
                    acc_s(i) = scaled(policy.score(row_slot<kRowTiles>(i), h * kCols + get<1>(tScS(i)), acc_s(i)));
            }

            // Online softmax: new row maxima (the 4 threads of a quad share a row), rescale, exponentiate. Maxima
            // are taken over scores and scaled once per row: RN(max x c) = max RN(x c) for c = exp_scale > 0;
            // exp2's argument is fma(score, c, -max), one rounding; unfolded it is score - max, as before.
            float tile_row_max[kSlots];
#pragma unroll
            for (int s = 0; s < kSlots; ++s) tile_row_max[s] = -INFINITY;
#pragma unroll
            for (int i = 0; i < size(acc_s); ++i) {
                const int slot = row_slot<kRowTiles>(i);
                tile_row_max[slot] = fmaxf(tile_row_max[slot], acc_s(i));
            }
            float alpha[kSlots], base[kSlots];
#pragma unroll
            for (int s = 0; s < kSlots; ++s) {
                const float tile_max = quad_max(tile_row_max[s]);
                const float m = fmaxf(row_max[s], kFuseScale ? tile_max * exp_scale : tile_max);
                base[s] = m == -INFINITY ? 0.f : m;  // a row with nothing kept so far
                alpha[s] = exp2_ftz(row_max[s] - base[s]);
                row_max[s] = m;
                row_sum[s] *= alpha[s];
            }
            float p_max = 0.f;
#pragma unroll
            for (int i = 0; i < size(acc_s); ++i) {
                const int slot = row_slot<kRowTiles>(i);
                const float p = exp2_ftz(kFuseScale ? fmaf(acc_s(i), exp_scale, -base[slot]) : acc_s(i) - base[slot]);
                row_sum[slot] += p;  // the denominator: unquantized probabilities
                if (row_valid[slot]) p_max = fmaxf(p_max, p);
                acc_s(i) = p;
            }

            float o_factor[kSlots];
#pragma unroll
            for (int s = 0; s < kSlots; ++s) o_factor[s] = alpha[s];
            Tensor rP = make_tensor_like<Elem>(acc_s);  // P as the A operand of P V (rounded to Elem, or quantized)
            if constexpr (Policy::kQuantP) {
                // One P scale per (query tile, kv tile): max over the tile's real rows, shared by the 4 warps.
                for (int off = 16; off > 0; off >>= 1) p_max = fmaxf(p_max, __shfl_xor_sync(0xffffffffu, p_max, off));
                float* exchange = tile_max_exchange + (t & 1) * kWarps;
                if (lane == 0) exchange[warp] = p_max;
                __syncthreads();
                float tile_max = exchange[0];
                for (int w = 1; w < kWarps; ++w) tile_max = fmaxf(tile_max, exchange[w]);
                const float qmax = policy.qmax_p();
                // Floored (paro_rules.h): the factor p_scale_prev / p_scale below stays <= 2^30, never inf.
                const float p_scale = paro::p_tile_scale(tile_max, qmax);
                // round(p / p_scale) as the reference rounds it, by one reciprocal per tile, with the division only
                // for a chunk of 8 elements one of whose products lies within 2^-14 of a half-integer (paro_rules.h:
                // rare, and exact either way). Per chunk, so that a chunk's fp32 values die as it is quantized instead
                // of all 32 staying live beside P for the fallback. The integers 0..qmax are exact in Elem.
                const float reciprocal = paro::p_tile_reciprocal(p_scale);
                constexpr int kChunk = 8;
                static_assert(decltype(size(acc_s))::value % kChunk == 0, "whole chunks");
#pragma unroll
                for (int c0 = 0; c0 < size(acc_s); c0 += kChunk) {
                    bool near = false;
#pragma unroll
                    for (int i = c0; i < c0 + kChunk; ++i)
                        rP(i) = static_cast<Elem>(paro::quantize_p_fast(acc_s(i), reciprocal, qmax, near));
                    if (near) {
#pragma unroll
                        for (int i = c0; i < c0 + kChunk; ++i)
                            rP(i) = static_cast<Elem>(paro::quantize_p_exact(acc_s(i), p_scale, qmax));
                    }
                }
                // acc_o holds O / p_scale_prev; after this tile it holds O / p_scale. A multiply by the reciprocal
                // instead of an IEEE division per row slot (16 instructions a tile at head_dim 64).
                const float rescale = p_scale_prev * reciprocal;
                for (int s = 0; s < kSlots; ++s) o_factor[s] = alpha[s] * rescale;
                p_scale_prev = p_scale;
            } else {
#pragma unroll
                for (int i = 0; i < size(acc_s); ++i) rP(i) = static_cast<Elem>(acc_s(i));
            }
#pragma unroll
            for (int i = 0; i < size(acc_o); ++i) acc_o(i) *= o_factor[row_slot<kRowTiles>(i)];

            // O += P V: P from registers as the A operand, V^T through ldmatrix.trans.
            Tensor tOrP = make_tensor(rP.data(), acc_as_a_operand(rP.layout()));
            Tensor tOrV = thr_mma.partition_fragment_B(sVt);
            Tensor tOsV = thr_copy_bt.partition_S(sVt);
            Tensor tOrV_view = thr_copy_bt.retile_D(tOrV);
#pragma unroll
            for (int kk = 0; kk < size<2>(tOrP); ++kk) {
                copy(smem_copy_bt, tOsV(_, _, kk), tOrV_view(_, _, kk));
                gemm(tiled_mma, tOrP(_, _, kk), tOrV(_, _, kk), acc_o);
            }
        }

        __syncthreads();  // every warp is done with this stage
        if (t + kStages < n_tiles) issue_kv(t + kStages);
        cp_async_fence();
    }
    cp_async_wait<0>();

    // Normalize and store: O = acc_o * p_scale / l (l summed over the quad); rows without keys give 0.
    float inv[kSlots];
    long long o_rows[kSlots];
#pragma unroll
    for (int s = 0; s < kSlots; ++s) {
        o_rows[s] = policy.o_row(slot_row(warp, lane, s));
        const float l = quad_sum(row_sum[s]);
        inv[s] = l > 0.f ? p_scale_prev / l : 0.f;
    }
#pragma unroll
    for (int i = 0; i < size(acc_o); i += 2) {  // (i, i+1): two adjacent columns of one row
        const int c = get<1>(tOcO(i)), slot = row_slot<kRowTiles>(i);
        if (o_rows[slot] < 0) continue;
        const float x0 = acc_o(i) * inv[slot] * policy.finish(c);
        const float x1 = acc_o(i + 1) * inv[slot] * policy.finish(c + 1);
        Elem* dst = out + o_rows[slot] + c;
        dst[0] = static_cast<Elem>(x0);
        dst[1] = static_cast<Elem>(x1);
    }
}

}  // namespace core
}  // namespace attnx
