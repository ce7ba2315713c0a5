// CPU unit tests of the ParoAttention plugin's TensorRT-free logic (paroConfig.cpp): attribute parsing with
// malformed fields, serialization round trips, shape and format rules (perm_idx, per-head layouts), kernel
// parameters and the workspace layout. Built without TensorRT. Exits non-zero on the first failing check.
// Run by tests/test_native_plugin_logic.py and ctest.
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "attn_check.h"
#include "configTestSupport.h"
#include "core_plan.h"
#include "paroConfig.h"

using namespace attnx::plugin;
using namespace attnx::plugin::paroAttention;
using configtest::tensor;

namespace {

struct Fields {
    int32_t block = 64, qk_bits = 8, pv_bits = 8, q_group = 32, k_group = 64, smooth_k = 1;
    float scale = 0.125f;
    bool with_scale = true;
    std::vector<FieldView> extra;
    std::vector<FieldView> build() const {
        std::vector<FieldView> f{{"block", FieldType::kInt32, &block, 1},     {"qk_bits", FieldType::kInt32, &qk_bits, 1},
                                 {"pv_bits", FieldType::kInt32, &pv_bits, 1}, {"q_group", FieldType::kInt32, &q_group, 1},
                                 {"k_group", FieldType::kInt32, &k_group, 1}, {"smooth_k", FieldType::kInt32, &smooth_k, 1}};
        if (with_scale) f.push_back({"scale", FieldType::kFloat32, &scale, 1});
        f.insert(f.end(), extra.begin(), extra.end());
        return f;
    }
};

std::string parse(std::vector<FieldView> const& fields) {
    ParoConfig cfg;
    return parseFields(fields, cfg);
}

ParoConfig config(int32_t block = 64) {
    Fields f;
    f.block = block;
    ParoConfig cfg;
    parseFields(f.build(), cfg);
    return cfg;
}

// q/k/v [B, H, N, D], perm [H, N], count [cb, H, nb], index [ib, H, nb, M].
std::vector<TensorInfo> inputs(int64_t B, int64_t H, int64_t N, int64_t D, int64_t nb, int64_t M, int64_t cb = 1,
                               int64_t ib = 1) {
    return {tensor({B, H, N, D}), tensor({B, H, N, D}), tensor({B, H, N, D}), tensor({H, N}, DType::kInt32),
            tensor({cb, H, nb}, DType::kInt32), tensor({ib, H, nb, M}, DType::kInt32)};
}

void test_fields() {
    Fields f;
    ParoConfig cfg;
    CHECK(parseFields(f.build(), cfg).empty());
    CHECK(cfg.block == 64 && cfg.qk_bits == 8 && cfg.pv_bits == 8 && cfg.q_group == 32 && cfg.k_group == 64 &&
          cfg.smooth_k == 1 && cfg.has_scale && cfg.scale == 0.125f);
    std::string const version = "1", ns = "attn_export";
    f.extra = {{"plugin_version", FieldType::kChar, version.c_str(), 1},
               {"plugin_namespace", FieldType::kChar, ns.c_str(), static_cast<int32_t>(ns.size())}};
    CHECK(parse(f.build()).empty());
    for (int32_t qk : {16, 8, 4})
        for (int32_t pv : {16, 8, 4}) {
            f = Fields();
            f.qk_bits = qk;
            f.pv_bits = pv;
            f.with_scale = false;
            CHECK(parseFields(f.build(), cfg).empty());
            CHECK(cfg.qk_bits == qk && cfg.pv_bits == pv && !cfg.has_scale);
        }
}

void test_malformed_fields() {
    Fields f;
    f.qk_bits = 2;
    CHECK_ERROR(parse(f.build()), "'qk_bits'=2 must be 16 (no quantization), 8 or 4");
    f = Fields();
    f.pv_bits = 32;
    CHECK_ERROR(parse(f.build()), "'pv_bits'=32");
    f = Fields();
    f.block = 0;
    CHECK_ERROR(parse(f.build()), "'block'=0 must be positive");
    f = Fields();
    f.q_group = -1;
    CHECK_ERROR(parse(f.build()), "'q_group'=-1");
    f = Fields();
    f.k_group = 0;
    CHECK_ERROR(parse(f.build()), "'k_group'=0");
    f = Fields();
    f.smooth_k = 2;
    CHECK_ERROR(parse(f.build()), "smooth_k");
    f = Fields();
    f.scale = 0.f;
    CHECK_ERROR(parse(f.build()), "finite positive");
    f = Fields();
    int32_t const one = 1;
    f.extra = {{"prefix", FieldType::kInt32, &one, 1}};
    CHECK_ERROR(parse(f.build()), "unknown field 'prefix'; ParoAttention takes block, qk_bits, pv_bits, q_group, k_group, "
                                  "smooth_k, scale, plugin_version, plugin_namespace");
    Fields const all;
    std::vector<FieldView> const missing = all.build();
    for (size_t drop = 0; drop < 6; ++drop) {  // every field but scale is required
        std::vector<FieldView> fields;
        for (size_t i = 0; i < missing.size(); ++i)
            if (i != drop) fields.push_back(missing[i]);
        CHECK_ERROR(parse(fields), "is missing; ParoAttention requires it");
    }
    std::string const other = "other";
    f = Fields();
    f.extra = {{"plugin_namespace", FieldType::kChar, other.c_str(), 5}};
    CHECK_ERROR(parse(f.build()), "plugin_namespace");
}

void test_serialization() {
    std::mt19937 rng(5);
    int32_t const bits[3] = {16, 8, 4};
    for (int trial = 0; trial < 3000; ++trial) {
        Fields f;
        f.block = 1 + static_cast<int32_t>(rng() % 256);
        f.qk_bits = bits[rng() % 3];
        f.pv_bits = bits[rng() % 3];
        f.q_group = 1 + static_cast<int32_t>(rng() % 128);
        f.k_group = 1 + static_cast<int32_t>(rng() % 128);
        f.smooth_k = static_cast<int32_t>(rng() % 2);
        f.scale = 0.01f + static_cast<float>(rng() % 1000) / 997.f;
        f.with_scale = rng() % 3 != 0;
        ParoConfig first, second;
        CHECK(parseFields(f.build(), first).empty());
        std::vector<FieldView> const saved = serializeFields(first);
        CHECK(saved.size() == (f.with_scale ? 7u : 6u));
        for (FieldView const& field : saved) {
            int32_t const i = paroAttention::kDecl.find(field.name);
            CHECK(i >= 0 && field.type == paroAttention::kFields[i].type && field.length == 1);
        }
        CHECK(parseFields(saved, second).empty());
        CHECK(second.block == f.block && second.qk_bits == f.qk_bits && second.pv_bits == f.pv_bits &&
              second.q_group == f.q_group && second.k_group == f.k_group && second.smooth_k == f.smooth_k &&
              second.has_scale == f.with_scale && (!f.with_scale || second.scale == f.scale));
    }
}

void test_inputs() {
    ParoConfig const cfg = config(64);
    // CogVideoX: N = 226 + 13*30*45 = 17776 -> 278 blocks.
    auto in = inputs(2, 48, 17776, 64, 278, 90);
    CHECK(checkInputs(cfg, in.data(), 6).empty());
    in = inputs(2, 48, 17776, 64, 278, 90, 2, 2);
    CHECK(checkInputs(cfg, in.data(), 6).empty());
    CHECK_ERROR(checkInputs(cfg, in.data(), 5), "takes 6 inputs");
    in = inputs(2, 4, 200, 64, 4, 3);
    in[4] = tensor({1, 1, 4}, DType::kInt32);  // PARO layouts carry one row set per head
    CHECK_ERROR(checkInputs(cfg, in.data(), 6), "kv_count [1,1,4] has 1 heads; the attention has 4 (one layout per head)");
    in = inputs(2, 4, 200, 64, 3, 3);
    CHECK_ERROR(checkInputs(cfg, in.data(), 6), "has 3 query-block rows; the sequence needs 4");
    in = inputs(2, 4, 200, 64, 4, 3);
    in[3] = tensor({4, 199}, DType::kInt32);
    CHECK_ERROR(checkInputs(cfg, in.data(), 6), "perm_idx [4,199] must be [heads, N] = [4, 200]");
    in = inputs(2, 4, 200, 64, 4, 3);
    in[3] = tensor({4, 200}, DType::kFloat32);
    CHECK_ERROR(checkInputs(cfg, in.data(), 6), "perm_idx [4,200] must be int32");
    in = inputs(2, 4, 200, 64, 4, 3);
    in[1] = tensor({2, 4, 201, 64});
    CHECK_ERROR(checkInputs(cfg, in.data(), 6), "k [2,4,201,64] differs from q");
    in = inputs(2, 4, 200, 300, 4, 3);
    CHECK_ERROR(checkInputs(cfg, in.data(), 6), "head_dim=300");
    in = inputs(3, 4, 200, 64, 4, 3, 2);
    CHECK_ERROR(checkInputs(cfg, in.data(), 6), "leads with 2 batches");
    in = inputs(-1, 4, -1, 64, -1, 3, 1, -1);
    CHECK(checkInputs(cfg, in.data(), 6).empty());
    for (int64_t n = 1; n < 400; n += 13)
        for (int32_t block : {16, 64, 128}) {
            ParoConfig const c = config(block);
            int64_t const nb = (n + block - 1) / block;
            auto ok = inputs(1, 2, n, 32, nb, 2);
            CHECK(checkInputs(c, ok.data(), 6).empty());
            auto bad = inputs(1, 2, n, 32, nb + 1, 2);
            CHECK(!checkInputs(c, bad.data(), 6).empty());
        }
}

void test_formats() {
    for (DType t : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
        auto io = inputs(1, 2, 64, 32, 1, 1);
        for (int i : {0, 1, 2}) io[i].type = t;
        io.push_back(tensor({1, 2, 64, 32}, t));
        for (int pos = 0; pos < 7; ++pos) CHECK(supportsFormat(pos, io.data(), 6, 1));
        io[3].type = DType::kFloat16;
        CHECK(!supportsFormat(3, io.data(), 6, 1));  // perm_idx is int32
        io[3].type = DType::kInt32;
        io[6].type = t == DType::kBFloat16 ? DType::kFloat16 : DType::kBFloat16;
        CHECK(!supportsFormat(6, io.data(), 6, 1));  // out shares q's type
        io[6].type = t;
        io[2].linear = false;
        CHECK(!supportsFormat(2, io.data(), 6, 1));
    }
}

void test_kernel_params_and_workspace() {
    ParoConfig cfg = config(64);
    auto in = inputs(2, 3, 1000, 64, 16, 5, 2, 1);
    attnx_paro_params p = kernelParams(cfg, in.data());
    CHECK(p.batch == 2 && p.heads == 3 && p.seq == 1000 && p.head_dim == 64 && p.block == 64);
    CHECK(p.qk_bits == 8 && p.pv_bits == 8 && p.q_group == 32 && p.k_group == 64 && p.smooth_k == 1);
    CHECK(p.layout.rows == 16 && p.layout.max_blocks == 5 && p.layout.count_batch == 2 && p.layout.index_batch == 1 &&
          p.layout.count_heads == 3 && p.layout.index_heads == 3);
    CHECK(attnx::paro_problem(p).empty());
    // Workspace: Q, K and V operands in the input type, then the float scales, 256-byte aligned segments.
    attnx::ParoWorkspace w = attnx::paro_workspace(p);
    size_t const operand = 2 * 3 * 1000 * 64 * 2;
    CHECK(w.q == 0 && w.k == operand && w.v == 2 * operand && w.q_scale == 3 * operand);
    CHECK(w.k_scale == w.q_scale + attnx::align256(4 * 6 * 32) && w.k_mean == w.k_scale + attnx::align256(4 * 6 * 16));
    CHECK(w.v_scale == w.k_mean + attnx::align256(4 * 6 * 64) && w.k_sum_parts == w.v_scale + attnx::align256(4 * 6 * 64));
    // The channel statistics' partials: 1000 tokens in chunks of 256 -> 4 per (batch, head).
    CHECK(attnx::paro_stats_chunks(1000) == 4 && attnx::paro_stats_chunks(1024) == 4 && attnx::paro_stats_chunks(1025) == 5);
    CHECK(w.v_amax_parts == w.k_sum_parts + attnx::align256(4 * 6 * 4 * 64) &&
          w.total == w.v_amax_parts + attnx::align256(4 * 6 * 4 * 64));
    for (size_t at : {w.q, w.k, w.v, w.q_scale, w.k_scale, w.k_mean, w.v_scale, w.k_sum_parts, w.v_amax_parts, w.total})
        CHECK(at % 256 == 0);
    p.qk_bits = p.pv_bits = 16;
    CHECK(attnx::paro_workspace(p).total == 0);  // no quantization: the kernels gather the inputs
    p.qk_bits = 4;
    p.smooth_k = 0;
    w = attnx::paro_workspace(p);
    CHECK(w.total == 2 * operand + attnx::align256(4 * 6 * 32) + attnx::align256(4 * 6 * 16));
    attnx_paro_params bad = kernelParams(cfg, in.data());
    bad.layout.count_heads = 1;
    CHECK_ERROR(attnx::paro_problem(bad), "each must be heads=3");
    bad = kernelParams(cfg, in.data());
    bad.qk_bits = 5;
    CHECK_ERROR(attnx::paro_problem(bad), "qk_bits=5");
    bad = kernelParams(cfg, in.data());
    bad.smooth_k = 3;
    CHECK_ERROR(attnx::paro_problem(bad), "smooth_k=3");
    cfg.has_scale = false;
    CHECK(kernelParams(cfg, in.data()).scale == 0.125f);
}

// The path rule: the core needs fp16/bf16, head_dim 32/64/128, block 64, alignment, sm_80+ and the memory.
void test_paths() {
    attnx_paro_params p = kernelParams(config(64), inputs(1, 2, 300, 64, 5, 2).data());
    CHECK(attnx::paro_path(p, 9, 232448, true) == ATTNX_PATH_CORE);
    CHECK(attnx::paro_path(p, 8, 101376, true) == ATTNX_PATH_CORE);  // sm_86: 80 KB at most (head_dim 128)
    CHECK(attnx::paro_path(p, 9, 232448, false) == ATTNX_PATH_GENERIC);
    CHECK(attnx::paro_path(p, 7, 232448, true) == ATTNX_PATH_NONE);
    p.block = 128;
    CHECK(attnx::paro_path(p, 9, 232448, true) == ATTNX_PATH_GENERIC);
    p.block = 64;
    p.dtype = ATTNX_FLOAT32;
    CHECK(attnx::paro_path(p, 9, 232448, true) == ATTNX_PATH_GENERIC);
    p.dtype = ATTNX_BFLOAT16;
    for (int dim = 1; dim <= 256; ++dim) {
        p.head_dim = dim;
        CHECK((attnx::paro_path(p, 9, 232448, true) == ATTNX_PATH_CORE) == (dim == 32 || dim == 64 || dim == 128));
    }
    CHECK(attnx::core_smem_bytes(128) == 81952 && attnx::core_smem_bytes(128) <= 101376);
}

}  // namespace

int main() {
    test_fields();
    test_malformed_fields();
    test_serialization();
    test_inputs();
    test_formats();
    test_kernel_params_and_workspace();
    test_paths();
    return testharness::passed();
}
