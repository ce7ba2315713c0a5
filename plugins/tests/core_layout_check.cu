// Host check of the fused core's register-level plumbing (plugins/kernels/attn_core.cuh), on CuTe's own
// layouts, for every thread of the block, fp16 and bf16, head_dim 32/64/128 -- what a GPU run would only show
// as wrong numbers:
//   - row_slot(i): the S and O registers of slot 0/1 hold rows warp*16 + lane/4 and that + 8;
//   - registers i, i+1 (i even) hold adjacent columns of one row (the output stores pairs);
//   - acc_as_a_operand: S's registers read as P's A operand hold exactly the (row, key) that P.V needs;
//   - the ldmatrix copies fill the Q/K/V^T fragments with the elements the MMA expects;
//   - the swizzled tile layout is a bijection with 8-element contiguous chunks (cp.async 16 bytes), and the
//     transposed V view is the same memory.
// Built with nvcc (host code only) against the CUTLASS headers; prints "N checks passed" or the first failure.
// Run by tests/test_native_core_layout.py.
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "attn_core.cuh"
#include "testHarness.h"

using namespace cute;
using namespace attnx::core;

template <typename Elem, int HD>
void check_geometry() {
    using Geo = Geometry<Elem, HD>;
    typename Geo::TiledMma mma;
    typename Geo::TileLayout tile;
    typename Geo::TileLayoutT tile_t;
    // The tile layout: a bijection onto [0, 64 * HD); 16-byte chunks contiguous; V^T the same memory.
    std::vector<int> seen(kBlockN * HD, 0);
    for (int r = 0; r < kBlockN; ++r)
        for (int c = 0; c < HD; ++c) {
            const int at = tile(r, c);
            CHECK_MSG(at >= 0 && at < kBlockN * HD && !seen[at], "HD %d (%d,%d) -> %d", HD, r, c, at);
            seen[at] = 1;
            CHECK_MSG(tile(r, c) == tile(r, c - c % 8) + c % 8, "HD %d chunk of (%d,%d)", HD, r, c);
            CHECK_MSG(tile_t(c, r) == at, "HD %d V^T view (%d,%d)", HD, c, r);
        }
    Tensor cS = make_identity_tensor(Shape<Int<kBlockM>, Int<kBlockN>>{});
    Tensor cO = make_identity_tensor(Shape<Int<kBlockM>, Int<HD>>{});
    Tensor cQ = make_identity_tensor(Shape<Int<kBlockM>, Int<HD>>{});   // Q (m, d): the A operand of Q K^T
    Tensor cK = make_identity_tensor(Shape<Int<kBlockN>, Int<HD>>{});   // K (n, d): the B operand
    Tensor cVt = make_identity_tensor(Shape<Int<HD>, Int<kBlockN>>{});  // V^T (d, n): the B operand of P V
    Tensor cP = make_identity_tensor(Shape<Int<kBlockM>, Int<kBlockN>>{});  // P (m, n): the A operand
    auto copy_a = make_tiled_copy_A(typename Geo::LoadAtom{}, mma);
    auto copy_b = make_tiled_copy_B(typename Geo::LoadAtom{}, mma);
    auto copy_bt = make_tiled_copy_B(typename Geo::LoadAtomT{}, mma);
    for (int tid = 0; tid < kThreads; ++tid) {
        const int warp = tid / 32, lane = tid % 32;
        auto thr = mma.get_thread_slice(tid);
        Tensor tS = thr.partition_C(cS);
        Tensor tO = thr.partition_C(cO);
        for (int i = 0; i < size(tS); ++i) {
            CHECK_MSG(get<0>(tS(i)) == warp * 16 + lane / 4 + 8 * row_slot(i), "S row of thread %d reg %d", tid, i);
            if (i % 2 == 0)
                CHECK_MSG(get<0>(tS(i + 1)) == get<0>(tS(i)) && get<1>(tS(i + 1)) == get<1>(tS(i)) + 1, "S pair %d", i);
        }
        for (int i = 0; i < size(tO); ++i) {
            CHECK_MSG(get<0>(tO(i)) == warp * 16 + lane / 4 + 8 * row_slot(i), "O row of thread %d reg %d", tid, i);
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
        (void)lane;
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
    check_copy(copy_b, [&](int tid) { return mma.get_thread_slice(tid).partition_B(cK); }, cK, false, "K");
    check_copy(copy_bt, [&](int tid) { return mma.get_thread_slice(tid).partition_B(cVt); }, cVt, true, "V^T");
    {
    }
}

int main() {
    check_geometry<half_t, 32>();
    check_geometry<half_t, 64>();
    check_geometry<half_t, 128>();
    check_geometry<bfloat16_t, 64>();
    check_geometry<bfloat16_t, 128>();
    return testharness::passed();
}
