// CPU unit tests of the BlockSparseAttention plugin's TensorRT-free logic (bsaConfig.cpp): attribute parsing
// with malformed fields, serialization round trips, shape and format rules (layout broadcasting), kernel
// parameters. Built without TensorRT. Exits non-zero on the first failing check and prints it.
// Run by tests/test_native_plugin_logic.py and ctest.
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "attn_check.h"
#include "bsaConfig.h"
#include "configTestSupport.h"
#include "core_plan.h"

using namespace attnx::plugin;
using namespace attnx::plugin::blockSparseAttention;
using configtest::tensor;

namespace {

struct Fields {
    int32_t block_q = 64, block_kv = 32;
    float scale = 0.125f;
    bool with_scale = true;
    std::vector<FieldView> extra;
    std::vector<FieldView> build() const {
        std::vector<FieldView> f{{"block_q", FieldType::kInt32, &block_q, 1}, {"block_kv", FieldType::kInt32, &block_kv, 1}};
        if (with_scale) f.push_back({"scale", FieldType::kFloat32, &scale, 1});
        f.insert(f.end(), extra.begin(), extra.end());
        return f;
    }
};

std::string parse(std::vector<FieldView> const& fields) {
    BSAConfig cfg;
    return parseFields(fields, cfg);
}

BSAConfig config(int32_t bq = 64, int32_t bkv = 32) {
    Fields f;
    f.block_q = bq;
    f.block_kv = bkv;
    BSAConfig cfg;
    parseFields(f.build(), cfg);
    return cfg;
}

// q [B, H, Sq, D], k/v [B, H, Skv, D], count [cb, ch, nQB], index [ib, ih, nQB, M].
std::vector<TensorInfo> inputs(int64_t B, int64_t H, int64_t sq, int64_t skv, int64_t D, int64_t rows, int64_t M,
                               int64_t cb = 1, int64_t ch = 1, int64_t ib = 1, int64_t ih = 1) {
    return {tensor({B, H, sq, D}), tensor({B, H, skv, D}), tensor({B, H, skv, D}),
            tensor({cb, ch, rows}, DType::kInt32), tensor({ib, ih, rows, M}, DType::kInt32)};
}

void test_fields() {
    Fields f;
    BSAConfig cfg;
    CHECK(parseFields(f.build(), cfg).empty());
    CHECK(cfg.block_q == 64 && cfg.block_kv == 32 && cfg.has_scale && cfg.scale == 0.125f);
    std::string const version = "1", ns = "attn_export";
    f.extra = {{"plugin_version", FieldType::kChar, version.c_str(), 1},
               {"plugin_namespace", FieldType::kChar, ns.c_str(), static_cast<int32_t>(ns.size())}};
    CHECK(parse(f.build()).empty());
    int64_t const wide[2] = {128, 64};
    CHECK(parseFields({{"block_q", FieldType::kInt64, &wide[0], 1}, {"block_kv", FieldType::kInt64, &wide[1], 1}}, cfg).empty());
    CHECK(cfg.block_q == 128 && cfg.block_kv == 64 && !cfg.has_scale);
}

void test_malformed_fields() {
    CHECK_ERROR(parse({}), "field 'block_q' is missing");
    Fields f;
    f.block_q = 0;
    CHECK_ERROR(parse(f.build()), "'block_q'=0 must be positive");
    f = Fields();
    f.block_kv = -4;
    CHECK_ERROR(parse(f.build()), "'block_kv'=-4 must be positive");
    f = Fields();
    f.scale = -1.f;
    CHECK_ERROR(parse(f.build()), "finite positive");
    f.scale = std::nanf("");
    CHECK_ERROR(parse(f.build()), "finite positive");
    int32_t const two[2] = {64, 64};
    CHECK_ERROR(parse({{"block_q", FieldType::kInt32, two, 2}, {"block_kv", FieldType::kInt32, two, 1}}), "one value");
    float const wrong = 64.f;
    CHECK_ERROR(parse({{"block_q", FieldType::kFloat32, &wrong, 1}, {"block_kv", FieldType::kInt32, two, 1}}), "int32 or int64");
    CHECK_ERROR(parse({{"block_q", FieldType::kInt32, two, 1}, {"block", FieldType::kInt32, two, 1}}),
                "unknown field 'block'; BlockSparseAttention takes block_q, block_kv, scale, plugin_version, plugin_namespace");
    CHECK_ERROR(parse({{"block_q", FieldType::kInt32, two, 1}}), "field 'block_kv' is missing");
    int64_t const huge = int64_t(1) << 40;
    CHECK_ERROR(parse({{"block_q", FieldType::kInt64, &huge, 1}, {"block_kv", FieldType::kInt32, two, 1}}), "outside int32");
    std::string const v2 = "2";
    f = Fields();
    f.extra = {{"plugin_version", FieldType::kChar, v2.c_str(), 1}};
    CHECK_ERROR(parse(f.build()), "plugin_version");
    double const tiny = 1e-60;
    CHECK_ERROR(parse({{"block_q", FieldType::kInt32, two, 1}, {"block_kv", FieldType::kInt32, two, 1},
                       {"scale", FieldType::kFloat64, &tiny, 1}}), "finite positive");
}

void test_serialization() {
    std::mt19937 rng(3);
    for (int trial = 0; trial < 3000; ++trial) {
        Fields f;
        f.block_q = 1 + static_cast<int32_t>(rng() % 512);
        f.block_kv = 1 + static_cast<int32_t>(rng() % 512);
        f.scale = 0.01f + static_cast<float>(rng() % 1000) / 997.f;
        f.with_scale = rng() % 3 != 0;
        BSAConfig first, second;
        CHECK(parseFields(f.build(), first).empty());
        std::vector<FieldView> const saved = serializeFields(first);
        CHECK(saved.size() == (f.with_scale ? 3u : 2u));
        for (FieldView const& field : saved) {
            int32_t const i = blockSparseAttention::kDecl.find(field.name);
            CHECK(i >= 0 && field.type == blockSparseAttention::kFields[i].type && field.length == 1);
        }
        CHECK(parseFields(saved, second).empty());
        CHECK(second.block_q == f.block_q && second.block_kv == f.block_kv && second.has_scale == f.with_scale);
        CHECK(!f.with_scale || second.scale == f.scale);
    }
}

void test_inputs() {
    BSAConfig const cfg = config(64, 32);
    // Sq = 200 -> 4 query blocks; Skv may differ from Sq.
    auto in = inputs(2, 4, 200, 300, 64, 4, 7);
    CHECK(checkInputs(cfg, in.data(), 5).empty());
    in = inputs(2, 4, 200, 300, 64, 4, 7, 2, 4, 1, 4);  // count per batch and head, index per head
    CHECK(checkInputs(cfg, in.data(), 5).empty());
    CHECK_ERROR(checkInputs(cfg, in.data(), 4), "takes 5 inputs");
    in = inputs(2, 4, 200, 300, 64, 5, 7);
    CHECK_ERROR(checkInputs(cfg, in.data(), 5), "kv_count [1,1,5] has 5 query-block rows; the sequence needs 4");
    in = inputs(2, 4, 200, 300, 64, 4, 7, 3);
    CHECK_ERROR(checkInputs(cfg, in.data(), 5), "kv_count [3,1,4] leads with 3 batches");
    in = inputs(2, 4, 200, 300, 64, 4, 7, 1, 1, 1, 2);
    CHECK_ERROR(checkInputs(cfg, in.data(), 5), "kv_index [1,2,4,7] has 2 heads");
    in = inputs(2, 4, 200, 300, 64, 4, 7);
    in[3].type = DType::kFloat32;
    CHECK_ERROR(checkInputs(cfg, in.data(), 5), "int32");
    in = inputs(2, 4, 200, 300, 64, 4, 7);
    in[4] = tensor({1, 1, 4}, DType::kInt32);
    CHECK_ERROR(checkInputs(cfg, in.data(), 5), "kv_index [1,1,4] must have rank 4");
    in = inputs(2, 4, 200, 300, 64, 4, 7);
    in[2] = tensor({2, 4, 299, 64});
    CHECK_ERROR(checkInputs(cfg, in.data(), 5), "v [2,4,299,64] differs from k");
    in = inputs(2, 4, 200, 300, 64, 4, 7);
    in[1] = in[2] = tensor({2, 4, 300, 32});
    CHECK_ERROR(checkInputs(cfg, in.data(), 5), "must share batch, heads and head_dim");
    in = inputs(2, 4, 200, 300, 512, 4, 7);
    CHECK_ERROR(checkInputs(cfg, in.data(), 5), "head_dim=512");
    in = inputs(2, 4, 200, 300, 64, 4, 7);
    in[0] = tensor({2, 4, 64});
    CHECK_ERROR(checkInputs(cfg, in.data(), 5), "q [2,4,64] must have rank 4");
    // Dynamic dims: unknown values pass here and are checked again at configure time.
    in = inputs(-1, 4, -1, -1, 64, -1, 7, 1, 1, -1, 4);
    CHECK(checkInputs(cfg, in.data(), 5).empty());
    // Every (Sq, block_q) pair: rows must be ceil(Sq / block_q).
    for (int64_t sq = 1; sq < 300; sq += 7)
        for (int32_t bq : {1, 16, 64, 100, 128}) {
            BSAConfig const c = config(bq, 64);
            int64_t const rows = (sq + bq - 1) / bq;
            auto ok = inputs(1, 2, sq, 128, 32, rows, 3);
            CHECK(checkInputs(c, ok.data(), 5).empty());
            auto bad = inputs(1, 2, sq, 128, 32, rows + 1, 3);
            CHECK(!checkInputs(c, bad.data(), 5).empty());
        }
}

void test_formats() {
    for (DType t : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
        auto io = inputs(1, 2, 64, 64, 32, 1, 1);
        for (int i : {0, 1, 2}) io[i].type = t;
        io.push_back(tensor({1, 2, 64, 32}, t));
        for (int pos = 0; pos < 6; ++pos) CHECK(supportsFormat(pos, io.data(), 5, 1));
        io[3].type = DType::kInt32;
        io[1].type = t == DType::kFloat32 ? DType::kFloat16 : DType::kFloat32;
        CHECK(!supportsFormat(1, io.data(), 5, 1));  // k must share q's type
        io[1].type = t;
        io[4].type = t;
        CHECK(!supportsFormat(4, io.data(), 5, 1));  // the layout is int32
        io[4].type = DType::kInt32;
        io[5].linear = false;
        CHECK(!supportsFormat(5, io.data(), 5, 1));
    }
    auto io = inputs(1, 2, 64, 64, 32, 1, 1);
    io.push_back(tensor({1, 2, 64, 32}));
    io[0].type = DType::kInt32;
    CHECK(!supportsFormat(0, io.data(), 5, 1));
    CHECK(!supportsFormat(6, io.data(), 5, 1));
    CHECK(!supportsFormat(0, io.data(), 4, 1));
}

void test_kernel_params() {
    BSAConfig cfg = config(64, 32);
    auto in = inputs(3, 4, 200, 300, 64, 4, 7, 3, 1, 1, 4);
    attnx_bsa_params const p = kernelParams(cfg, in.data());
    CHECK(p.batch == 3 && p.heads == 4 && p.seq_q == 200 && p.seq_kv == 300 && p.head_dim == 64);
    CHECK(p.block_q == 64 && p.block_kv == 32 && p.scale == 0.125f && p.dtype == ATTNX_FLOAT16);
    CHECK(p.layout.rows == 4 && p.layout.max_blocks == 7 && p.layout.count_batch == 3 && p.layout.count_heads == 1 &&
          p.layout.index_batch == 1 && p.layout.index_heads == 4);
    CHECK(attnx::bsa_problem(p).empty());
    attnx_bsa_params bad = p;
    bad.layout.rows = 5;
    CHECK_ERROR(attnx::bsa_problem(bad), "the sequence needs 4");
    bad = p;
    bad.layout.count_heads = 2;
    CHECK_ERROR(attnx::bsa_problem(bad), "each must be 1 or heads=4");
    bad = p;
    bad.dtype = 7;
    CHECK_ERROR(attnx::bsa_problem(bad), "dtype=7");
    cfg.has_scale = false;
    CHECK(kernelParams(cfg, in.data()).scale == 0.125f);  // 64 ** -0.5
}

// The path rules: the core takes whole 64-query tiles of a query block; 128-query tiles on sm_90 where query
// blocks hold whole ones and the Q tile fits.
void test_paths() {
    attnx_bsa_params p{};
    p.dtype = ATTNX_FLOAT16;
    p.head_dim = 64;
    p.block_q = 128;
    CHECK(attnx::bsa_path(p, 9, 232448, true) == ATTNX_PATH_CORE);
    CHECK(attnx::bsa_row_tiles(p, 9, 232448) == 2);
    CHECK(attnx::core_smem_bytes(64, 2) == 49184 && attnx::core_smem_bytes(32, 2) == 24608);
    CHECK(attnx::bsa_row_tiles(p, 9, 49183) == 1);  // the larger Q tile does not fit: 64-query tiles
    p.head_dim = 128;
    CHECK(attnx::bsa_path(p, 9, 232448, true) == ATTNX_PATH_CORE && attnx::bsa_row_tiles(p, 9, 232448) == 2);
    CHECK(attnx::core_smem_bytes(128, 2) == 98336);
    CHECK(attnx::bsa_row_tiles(p, 9, 98336) == 2 && attnx::bsa_row_tiles(p, 9, 98335) == 1);
    CHECK(attnx::bsa_row_tiles(p, 8, 232448) == 1 && attnx::bsa_row_tiles(p, 10, 232448) == 1);  // sm_90 only
    p.head_dim = 32;
    for (int block_q : {64, 128, 192, 256, 320, 96}) {
        p.block_q = block_q;
        CHECK((attnx::bsa_path(p, 9, 232448, true) == ATTNX_PATH_CORE) == (block_q % 64 == 0));
        CHECK(attnx::bsa_row_tiles(p, 9, 232448) == (block_q % 128 == 0 ? 2 : 1));
    }
    p.dtype = ATTNX_FLOAT32;
    CHECK(attnx::bsa_path(p, 9, 232448, true) == ATTNX_PATH_GENERIC);
    CHECK(attnx::bsa_path(p, 7, 232448, true) == ATTNX_PATH_NONE);
}

// The ring's stages (core_plan.h's core_stages): 3 on sm_90 at head_dim <= 64 where they fit, else 2.
void test_stages() {
    CHECK(attnx::core_smem_bytes(64, 1, 3) == 57376 && attnx::core_smem_bytes(32, 2, 3) == 32800);
    CHECK(attnx::core_smem_bytes(64, 1, 2) == attnx::core_smem_bytes(64));  // 2 stages is the default
    for (int dim : {32, 64})
        for (int row_tiles : {1, 2}) {
            CHECK(attnx::core_stages(dim, row_tiles, 9, 232448) == 3);
            CHECK(attnx::core_stages(dim, row_tiles, 8, 232448) == 2 && attnx::core_stages(dim, row_tiles, 10, 232448) == 2);
            const size_t three = attnx::core_smem_bytes(dim, row_tiles, 3);
            CHECK(attnx::core_stages(dim, row_tiles, 9, three) == 3 && attnx::core_stages(dim, row_tiles, 9, three - 1) == 2);
            CHECK(attnx::core_stages(dim, row_tiles, 9, three + 100, 101) == 2);  // the block's other shared memory counts
        }
    CHECK(attnx::core_stages(128, 1, 9, 232448) == 2 && attnx::core_stages(128, 2, 9, 232448) == 2);
    CHECK(!attnx::core_has_three_stages(128) && attnx::core_has_three_stages(64));
}

}  // namespace

int main() {
    test_paths();
    test_stages();
    test_fields();
    test_malformed_fields();
    test_serialization();
    test_inputs();
    test_formats();
    test_kernel_params();
    return testharness::passed();
}
