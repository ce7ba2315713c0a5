// Host check of the fused core's register-level plumbing (plugins/kernels/attn_core.cuh), on CuTe's own
// layouts, for every thread of the block, fp16 and bf16, head_dim 32/64/128, query tiles of 64 and 128 rows
// (1 and 2 row tiles) -- what a GPU run would only show as wrong numbers:
//   - row_slot<RowTiles>(i): the S and O registers of slot s hold row slot_row(warp, lane, s): warp*16 +
//     lane/4 (+ 8 for odd slots, + 64 for the second row tile);
//   - registers i, i+1 (i even) hold adjacent columns of one row (the output stores pairs);
//   - the key steps of core_split (128-query tiles at head_dim 128: 32 keys at a time): each step's K and V^T
//     sub-tiles address the same shared memory as the full tile at the step's keys, and the step's S, P and
//     ldmatrix fragments are the full tile's at those keys;
//   - acc_as_a_operand: S's registers read as P's A operand hold exactly the (row, key) that P.V needs;
//   - the ldmatrix copies fill the Q/K/V^T fragments with the elements the MMA expects;
//   - the swizzled tile layout is a bijection with 8-element contiguous chunks (cp.async 16 bytes), and the
//     transposed V view is the same memory;
//   - the s8 path (PARO's int8 Q and K, mma.sync m16n8k32): CuTe's A/B/C fragments of the s8 TiledMma against
//     the PTX ISA's m16n8k32 .s8 fragment layout written out independently below, its C layout equal to the
//     fp16 one (the kernel reads S's coordinates, row_slot and the P operand from the fp16 MMA), and an
//     emulation of the kernel's ldmatrix loads from the swizzled int8 tiles followed by the PTX-defined MMA
//     on random non-zero int8 Q and K: every S register must hold the exact integer dot product.
// Built with nvcc (host code only) against the CUTLASS headers; prints "N checks passed" or the first failure.
// Run by tests/test_native_core_layout.py.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "attn_core.cuh"
#include "testHarness.h"

using namespace cute;
using namespace attnx::core;

template <typename Elem, int HD, int RowTiles = 1>
void check_geometry() {
    using Geo = Geometry<Elem, HD, RowTiles>;
    constexpr int kRows = block_rows<RowTiles>();
    constexpr int kSplit = core_split(RowTiles, HD);
    constexpr int kCols = kBlockN / kSplit;  // keys per step
    typename Geo::TiledMma mma;
    typename Geo::TileLayout tile;
    typename Geo::TileLayoutT tile_t;
    typename Geo::QTileLayout q_tile;
    // A tile layout of `rows` rows: a bijection onto [0, rows * HD) with contiguous 16-byte (8-element) chunks.
    auto check_tile = [&](auto const& layout, int rows, char const* what) {
        std::vector<int> seen(rows * HD, 0);
        for (int r = 0; r < rows; ++r)
            for (int c = 0; c < HD; ++c) {
                const int at = layout(r, c);
                CHECK_MSG(at >= 0 && at < rows * HD && !seen[at], "HD %d %s (%d,%d) -> %d", HD, what, r, c, at);
                seen[at] = 1;
                CHECK_MSG(layout(r, c) == layout(r, c - c % 8) + c % 8, "HD %d %s chunk of (%d,%d)", HD, what, r, c);
            }
    };
    check_tile(tile, kBlockN, "K/V tile");
    check_tile(q_tile, kRows, "Q tile");  // the kernel's Q slots
    for (int r = 0; r < kBlockN; ++r)  // V^T: the same memory, transposed
        for (int c = 0; c < HD; ++c) CHECK_MSG(tile_t(c, r) == tile(r, c), "HD %d V^T view (%d,%d)", HD, c, r);
    // A step's sub-tiles (the kernel's local_tile of the stage's K and V^T tiles) address the full tile's memory.
    std::vector<int> offsets(kBlockN * HD);
    for (int i = 0; i < kBlockN * HD; ++i) offsets[i] = i;
    Tensor k_full = make_tensor(offsets.data(), tile);
    Tensor vt_full = make_tensor(offsets.data(), tile_t);
    for (int h = 0; h < kSplit; ++h) {
        Tensor k_step = local_tile(k_full, Shape<Int<kCols>, Int<HD>>{}, make_coord(h, 0));
        Tensor vt_step = local_tile(vt_full, Shape<Int<HD>, Int<kCols>>{}, make_coord(0, h));
        for (int r = 0; r < kCols; ++r)
            for (int c = 0; c < HD; ++c) {
                CHECK_MSG(k_step(r, c) == k_full(h * kCols + r, c), "HD %d step %d K (%d,%d)", HD, h, r, c);
                CHECK_MSG(vt_step(c, r) == vt_full(c, h * kCols + r), "HD %d step %d V^T (%d,%d)", HD, h, c, r);
            }
    }
    Tensor cS = make_identity_tensor(Shape<Int<kRows>, Int<kCols>>{});  // a step's S (column within the step)
    Tensor cO = make_identity_tensor(Shape<Int<kRows>, Int<HD>>{});
    Tensor cQ = make_identity_tensor(Shape<Int<kRows>, Int<HD>>{});     // Q (m, d): the A operand of Q K^T
    Tensor cK = make_identity_tensor(Shape<Int<kBlockN>, Int<HD>>{});   // K (n, d): the B operand
    Tensor cVt = make_identity_tensor(Shape<Int<HD>, Int<kBlockN>>{});  // V^T (d, n): the B operand of P V
    Tensor cP = make_identity_tensor(Shape<Int<kRows>, Int<kCols>>{});  // a step's P (m, n): the A operand
    auto copy_a = make_tiled_copy_A(typename Geo::LoadAtom{}, mma);
    auto copy_b = make_tiled_copy_B(typename Geo::LoadAtom{}, mma);
    auto copy_bt = make_tiled_copy_B(typename Geo::LoadAtomT{}, mma);
    for (int tid = 0; tid < kThreads; ++tid) {
        const int warp = tid / 32, lane = tid % 32;
        auto thr = mma.get_thread_slice(tid);
        Tensor tS = thr.partition_C(cS);
        Tensor tO = thr.partition_C(cO);
        CHECK_MSG(size<1>(tS) == RowTiles && size<1>(tO) == RowTiles, "one 16-row MMA per warp and row tile");
        for (int i = 0; i < size(tS); ++i) {
            CHECK_MSG(get<0>(tS(i)) == slot_row(warp, lane, row_slot<RowTiles>(i)), "S row of thread %d reg %d", tid, i);
            if (i % 2 == 0)
                CHECK_MSG(get<0>(tS(i + 1)) == get<0>(tS(i)) && get<1>(tS(i + 1)) == get<1>(tS(i)) + 1, "S pair %d", i);
        }
        for (int i = 0; i < size(tO); ++i) {
            CHECK_MSG(get<0>(tO(i)) == slot_row(warp, lane, row_slot<RowTiles>(i)), "O row of thread %d reg %d", tid, i);
            if (i % 2 == 0)
                CHECK_MSG(get<0>(tO(i + 1)) == get<0>(tO(i)) && get<1>(tO(i + 1)) == get<1>(tO(i)) + 1, "O pair %d", i);
        }
        // S's registers, re-indexed as the A operand, are P's elements at the A operand's coordinates.
        Tensor as_a = make_tensor(tS.data(), acc_as_a_operand(tS.layout()));
        Tensor want_a = thr.partition_A(cP);
        CHECK_MSG(size(as_a) == size(want_a), "thread %d: %d vs %d A registers", tid, int(size(as_a)),
                  int(size(want_a)));
        for (int j = 0; j < size(as_a); ++j)
            CHECK_MSG(as_a(j) == want_a(j), "thread %d A register %d: S (%d,%d), P needs (%d,%d)", tid, j,
                      int(get<0>(as_a(j))), int(get<1>(as_a(j))), int(get<0>(want_a(j))), int(get<1>(want_a(j))));
    }
    // ldmatrix is collective: thread t gives the address of row t % 8 of 8 x 8 matrix t / 8 (its 8 source
    // values) and receives, of each matrix m, row t / 4, columns 2 (t % 4) + {0, 1} (x4), or with .trans row
    // 2 (t % 4) + {0, 1}, column t / 4. Replayed per warp and per copy call: the value that lands in each
    // destination register must be the element the MMA reads from that register.
    auto check_copy = [&](auto& tiled_copy, auto mma_part, auto const& coords, bool trans, char const* what) {
        for (int warp = 0; warp < kWarps; ++warp) {
            std::vector<std::vector<std::pair<int, int>>> src(32);  // [lane][call * 8 + v]
            int calls = 0;
            for (int lane = 0; lane < 32; ++lane) {
                auto thr_copy = tiled_copy.get_thread_slice(warp * 32 + lane);
                Tensor s = thr_copy.partition_S(coords);
                Tensor s2 = group_modes<1, decltype(rank(s))::value>(s);
                CHECK_MSG(size<0>(s2) == 8, "%s: 8 source values per thread and call", what);
                calls = size<1>(s2);
                for (int c = 0; c < calls; ++c)
                    for (int v = 0; v < 8; ++v) src[lane].push_back({int(get<0>(s2(v, c))), int(get<1>(s2(v, c)))});
            }
            for (int lane = 0; lane < 32; ++lane) {
                const int tid = warp * 32 + lane;
                auto thr_copy = tiled_copy.get_thread_slice(tid);
                Tensor frag_coords = mma_part(tid);  // the MMA's coordinate of each fragment register
                Tensor regs = make_tensor<int>(make_layout(frag_coords.shape()));
                std::vector<int> index_of(size(regs));
                for (int idx = 0; idx < size(regs); ++idx) {
                    regs(idx) = regs.layout()(idx);
                    index_of[regs.layout()(idx)] = idx;
                }
                Tensor view = thr_copy.retile_D(regs);
                Tensor v2 = group_modes<1, decltype(rank(view))::value>(view);
                CHECK_MSG(size<0>(v2) == 8 && size<1>(v2) == calls, "%s: 8 destination values per thread and call",
                          what);
                for (int c = 0; c < calls; ++c)
                    for (int k = 0; k < 8; ++k) {
                        const int m = k / 2, h = k % 2;
                        const int from_lane = trans ? 8 * m + 2 * (lane % 4) + h : 8 * m + lane / 4;
                        const int from_v = trans ? lane / 4 : 2 * (lane % 4) + h;
                        const auto got = src[from_lane][c * 8 + from_v];
                        auto want = frag_coords(index_of[v2(k, c)]);
                        CHECK_MSG(got.first == int(get<0>(want)) && got.second == int(get<1>(want)),
                                  "%s thread %d call %d value %d: ldmatrix brings (%d,%d), the MMA reads (%d,%d)", what,
                                  tid, c, k, got.first, got.second, int(get<0>(want)), int(get<1>(want)));
                    }
            }
        }
    };
    check_copy(copy_a, [&](int tid) { return mma.get_thread_slice(tid).partition_A(cQ); }, cQ, false, "Q");
    for (int h = 0; h < kSplit; ++h) {  // each step's keys of the K and V^T tiles, as the kernel slices them
        Tensor cK_step = local_tile(cK, Shape<Int<kCols>, Int<HD>>{}, make_coord(h, 0));
        Tensor cVt_step = local_tile(cVt, Shape<Int<HD>, Int<kCols>>{}, make_coord(0, h));
        check_copy(copy_b, [&](int tid) { return mma.get_thread_slice(tid).partition_B(cK_step); }, cK_step, false, "K");
        check_copy(copy_bt, [&](int tid) { return mma.get_thread_slice(tid).partition_B(cVt_step); }, cVt_step, true,
                   "V^T");
    }
    {
    }
}

// PTX ISA, "Matrix Fragments for mma.m16n8k32" (.s8): element i of a lane's fragment as (row, col) of A (16 x 32,
// 16 elements), B (32 x 8, 8 elements) and the s32 accumulator C (16 x 8, 4 elements); groupID = lane >> 2,
// threadID_in_group = lane % 4. Written from the ISA's formulas, not from CuTe's traits.
struct RowCol {
    int r, c;
};
RowCol ptx_s8_a(int lane, int i) {
    const int g = lane >> 2, t = lane & 3;
    // row: groupID for a0..a3 and a8..a11, groupID + 8 otherwise; col: 4 t + (i & 3), + 16 for a8..a15
    return {g + ((i >> 2) & 1) * 8, t * 4 + (i & 3) + (i >= 8 ? 16 : 0)};
}
RowCol ptx_s8_b(int lane, int i) {
    const int g = lane >> 2, t = lane & 3;
    return {t * 4 + (i & 3) + (i >= 4 ? 16 : 0), g};  // row (k): 4 t + (i & 3), + 16 for b4..b7; col: groupID
}
RowCol ptx_s32_c(int lane, int i) {
    const int g = lane >> 2, t = lane & 3;
    return {g + (i >= 2 ? 8 : 0), t * 2 + (i & 1)};
}

// The s8 path of the core at one head_dim. `wrong_a` (the self-test): the emulated MMA reads A with two columns
// swapped, and the product check must then fail somewhere (returns the mismatches instead of checking).
template <int HD>
long check_s8(bool wrong_a = false) {
    using QkGeo = Geometry<int8_t, HD>;
    using Geo = Geometry<half_t, HD>;
    typename QkGeo::TiledMma mma;
    typename Geo::TiledMma mma16;
    typename QkGeo::TileLayout tile;
    if (!wrong_a) {
        // The int8 tile layout: a bijection onto [0, 64 * HD); 16-element (16-byte) chunks contiguous.
        std::vector<int> seen(kBlockN * HD, 0);
        for (int r = 0; r < kBlockN; ++r)
            for (int c = 0; c < HD; ++c) {
                const int at = tile(r, c);
                CHECK_MSG(at >= 0 && at < kBlockN * HD && !seen[at], "s8 HD %d (%d,%d) -> %d", HD, r, c, at);
                seen[at] = 1;
                CHECK_MSG(tile(r, c) == tile(r, c - c % 16) + c % 16 && tile(r, c - c % 16) % 16 == 0,
                          "s8 HD %d chunk of (%d,%d)", HD, r, c);
            }
        CHECK(QkGeo::kChunks * QkGeo::kChunkElems == HD && QkGeo::kMmaK == 32 && Geo::kMmaK == 16);
    }
    Tensor cS = make_identity_tensor(Shape<Int<kBlockM>, Int<kBlockN>>{});
    Tensor cQ = make_identity_tensor(Shape<Int<kBlockM>, Int<HD>>{});
    Tensor cK = make_identity_tensor(Shape<Int<kBlockN>, Int<HD>>{});
    constexpr int kSlices = HD / 32, kAtomsN = kBlockN / 8;
    // Fragment coordinates: CuTe's partition of the s8 TiledMma against the PTX layout, per thread.
    if (!wrong_a)
        for (int tid = 0; tid < kThreads; ++tid) {
            const int warp = tid / 32, lane = tid % 32;
            auto thr = mma.get_thread_slice(tid);
            Tensor tA = thr.partition_A(cQ);
            Tensor tB = thr.partition_B(cK);
            Tensor tC = thr.partition_C(cS);
            Tensor tC16 = mma16.get_thread_slice(tid).partition_C(cS);
            CHECK(size<0>(tA) == 16 && size<1>(tA) == 1 && size<2>(tA) == kSlices);
            CHECK(size<0>(tB) == 8 && size<1>(tB) == kAtomsN && size<2>(tB) == kSlices);
            CHECK(size<0>(tC) == 4 && size<1>(tC) == 1 && size<2>(tC) == kAtomsN && size(tC) == size(tC16));
            for (int i = 0; i < size(tC); ++i)
                CHECK_MSG(tC(i) == tC16(i), "thread %d S register %d: s8 C (%d,%d), fp16 C (%d,%d)", tid, i,
                          int(get<0>(tC(i))), int(get<1>(tC(i))), int(get<0>(tC16(i))), int(get<1>(tC16(i))));
            for (int kk = 0; kk < kSlices; ++kk)
                for (int i = 0; i < 16; ++i) {
                    const RowCol a = ptx_s8_a(lane, i);
                    CHECK_MSG(get<0>(tA(i, 0, kk)) == warp * 16 + a.r && get<1>(tA(i, 0, kk)) == kk * 32 + a.c,
                              "thread %d A slice %d element %d", tid, kk, i);
                }
            for (int n = 0; n < kAtomsN; ++n) {
                const int n0 = get<1>(tC(0, 0, n)) - ptx_s32_c(lane, 0).c;  // the atom's first key
                CHECK_MSG(n0 % 8 == 0, "thread %d atom %d starts at key %d", tid, n, n0);
                for (int i = 0; i < 4; ++i) {
                    const RowCol c = ptx_s32_c(lane, i);
                    CHECK_MSG(get<0>(tC(i, 0, n)) == warp * 16 + c.r && get<1>(tC(i, 0, n)) == n0 + c.c,
                              "thread %d C atom %d element %d", tid, n, i);
                }
                for (int kk = 0; kk < kSlices; ++kk)
                    for (int i = 0; i < 8; ++i) {
                        const RowCol b = ptx_s8_b(lane, i);
                        CHECK_MSG(get<0>(tB(i, n, kk)) == n0 + b.c && get<1>(tB(i, n, kk)) == kk * 32 + b.r,
                                  "thread %d B atom %d slice %d element %d", tid, n, kk, i);
                    }
            }
        }

    // Values: random non-zero int8 Q and K (as the pre-pass writes them, |x| <= 127).
    std::mt19937 rng(29 + HD);
    std::uniform_int_distribution<int> dist(1, 127), sign(0, 1);
    std::vector<int> Q(kBlockM * HD), K(kBlockN * HD);
    for (int& x : Q) x = dist(rng) * (sign(rng) ? 1 : -1);
    for (int& x : K) x = dist(rng) * (sign(rng) ? 1 : -1);
    // ldmatrix (x4, b16 granules) replayed per warp: lane t gives the address of row t % 8 of 8 x 16-byte matrix
    // t / 8 and receives, of each matrix m, the 32-bit word t % 4 of row t / 4 (int8 elements 4 (t % 4) + 0..3).
    // Returns each thread's fragment registers (compact layout offsets) with the values they receive.
    auto load = [&](auto& tiled_copy, auto mma_part, auto const& coords, std::vector<int> const& M) {
        std::vector<std::vector<int>> regs(kThreads);
        for (int warp = 0; warp < kWarps; ++warp) {
            std::vector<std::vector<int>> src(32);  // [lane][call * 16 + v]: the value at each source element
            int calls = 0;
            for (int lane = 0; lane < 32; ++lane) {
                Tensor s = tiled_copy.get_thread_slice(warp * 32 + lane).partition_S(coords);
                Tensor s2 = group_modes<1, decltype(rank(s))::value>(s);
                if (!wrong_a) CHECK_MSG(size<0>(s2) == 16, "s8 HD %d: 16 source bytes per thread and call", HD);
                calls = size<1>(s2);
                for (int c = 0; c < calls; ++c) {
                    const int first = tile(get<0>(s2(0, c)), get<1>(s2(0, c)));
                    for (int v = 0; v < 16; ++v) {
                        const int r = get<0>(s2(v, c)), col = get<1>(s2(v, c));
                        // ldmatrix reads 16 contiguous, 16-byte aligned bytes of the swizzled tile per row address
                        if (!wrong_a)
                            CHECK_MSG(first % 16 == 0 && tile(r, col) == first + v, "s8 HD %d lane %d call %d byte %d",
                                      HD, lane, c, v);
                        src[lane].push_back(M[r * HD + col]);
                    }
                }
            }
            for (int lane = 0; lane < 32; ++lane) {
                const int tid = warp * 32 + lane;
                Tensor frag = mma_part(tid);
                Tensor offsets = make_tensor<int>(make_layout(frag.shape()));
                for (int idx = 0; idx < size(offsets); ++idx) offsets(idx) = offsets.layout()(idx);
                regs[tid].assign(size(offsets), 0);
                Tensor v2 = group_modes<1, decltype(rank(tiled_copy.get_thread_slice(tid).retile_D(offsets)))::value>(
                    tiled_copy.get_thread_slice(tid).retile_D(offsets));
                if (!wrong_a) CHECK_MSG(size<0>(v2) == 16 && size<1>(v2) == calls, "s8 HD %d: 16 destination bytes", HD);
                for (int c = 0; c < calls; ++c)
                    for (int k = 0; k < 16; ++k) {
                        const int m = k / 4, h = k % 4;
                        regs[tid][v2(k, c)] = src[8 * m + lane / 4][c * 16 + 4 * (lane % 4) + h];
                    }
            }
        }
        return regs;
    };
    auto copy_a = make_tiled_copy_A(typename QkGeo::LoadAtom{}, mma);
    auto copy_b = make_tiled_copy_B(typename QkGeo::LoadAtom{}, mma);
    auto part_a = [&](int tid) { return mma.get_thread_slice(tid).partition_A(cQ); };
    auto part_b = [&](int tid) { return mma.get_thread_slice(tid).partition_B(cK); };
    const auto rq = load(copy_a, part_a, cQ, Q);
    const auto rk = load(copy_b, part_b, cK, K);
    // The MMAs of the kernel's loop (gemm over atoms n and slices kk), each as the PTX ISA defines it on the
    // lanes' registers: A's element i is byte i % 4 of register i / 4, in the fragment's value order.
    std::vector<std::vector<long long>> acc(kThreads, std::vector<long long>(4 * kAtomsN, 0));
    auto layout_a = make_layout(shape(part_a(0)));
    auto layout_b = make_layout(shape(part_b(0)));
    auto layout_c = make_layout(shape(mma.get_thread_slice(0).partition_C(cS)));
    for (int warp = 0; warp < kWarps; ++warp)
        for (int n = 0; n < kAtomsN; ++n)
            for (int kk = 0; kk < kSlices; ++kk) {
                int A[16][32], B[32][8], fill_a[16][32] = {}, fill_b[32][8] = {};
                for (int lane = 0; lane < 32; ++lane) {
                    for (int i = 0; i < 16; ++i) {
                        RowCol a = ptx_s8_a(lane, i);
                        if (wrong_a && (a.c == 0 || a.c == 1)) a.c ^= 1;
                        A[a.r][a.c] = rq[warp * 32 + lane][layout_a(i, 0, kk)];
                        ++fill_a[a.r][a.c];
                    }
                    for (int i = 0; i < 8; ++i) {
                        const RowCol b = ptx_s8_b(lane, i);
                        B[b.r][b.c] = rk[warp * 32 + lane][layout_b(i, n, kk)];
                        ++fill_b[b.r][b.c];
                    }
                }
                for (int r = 0; r < 32; ++r)
                    for (int c = 0; c < 32; ++c) {
                        if (r < 16) CHECK_MSG(fill_a[r][c] == 1, "s8 A element (%d,%d) held %d times", r, c, fill_a[r][c]);
                        if (c < 8) CHECK_MSG(fill_b[r][c] == 1, "s8 B element (%d,%d) held %d times", r, c, fill_b[r][c]);
                    }
                for (int lane = 0; lane < 32; ++lane)
                    for (int i = 0; i < 4; ++i) {
                        const RowCol c = ptx_s32_c(lane, i);
                        long long d = 0;
                        for (int x = 0; x < 32; ++x) d += static_cast<long long>(A[c.r][x]) * B[x][c.c];
                        acc[warp * 32 + lane][layout_c(i, 0, n)] += d;
                    }
            }
    // Every S register, at the coordinate the kernel reads for it (the fp16 MMA's partition_C), holds Q K^T.
    long mismatches = 0;
    for (int tid = 0; tid < kThreads; ++tid) {
        Tensor tS = mma16.get_thread_slice(tid).partition_C(cS);
        for (int i = 0; i < size(tS); ++i) {
            const int r = get<0>(tS(i)), c = get<1>(tS(i));
            long long want = 0;
            for (int d = 0; d < HD; ++d) want += static_cast<long long>(Q[r * HD + d]) * K[c * HD + d];
            const long long got = acc[tid][layout_c(i)];
            CHECK(std::llabs(got) < (1ll << 24));  // the fp32 conversion of the kernel is exact
            if (got != want) {
                ++mismatches;
                if (!wrong_a)
                    CHECK_MSG(false, "s8 HD %d thread %d S register %d (%d,%d): %lld, Q K^T is %lld", HD, tid, i, r, c,
                              got, want);
            }
        }
    }
    return mismatches;
}

int main() {
    check_geometry<half_t, 32>();
    check_geometry<half_t, 64>();
    check_geometry<half_t, 128>();
    check_geometry<bfloat16_t, 64>();
    check_geometry<bfloat16_t, 128>();
    check_geometry<half_t, 32, 2>();  // block-sparse's 128-query tiles
    check_geometry<half_t, 64, 2>();
    check_geometry<half_t, 128, 2>();
    check_geometry<bfloat16_t, 128, 2>();
    check_s8<32>();
    check_s8<64>();
    check_s8<128>();
    // The emulation can fail: A read with two of its columns swapped gives wrong dot products.
    CHECK(check_s8<64>(true) > 0);
    return testharness::passed();
}
