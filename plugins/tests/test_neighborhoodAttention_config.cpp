// CPU unit tests of the NeighborhoodAttention plugin's TensorRT-free logic (naConfig.cpp):
// attribute parsing with malformed fields, serialization round trips, shape and format rules. Built with
// plugins/trt/common's TensorRT-free sources and no TensorRT include path.
// Exits non-zero on the first failing check and prints it. Run by tests/test_native_plugin_logic.py.
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "configTestSupport.h"
#include "core_plan.h"
#include "na_check.h"
#include "naConfig.h"

using namespace attnx::plugin;
using configtest::tensor;

namespace {

struct Fields {
    std::vector<int32_t> kernel{7, 7}, stride{1, 1}, dilation{1, 1}, causal{0, 0};
    float scale = 0.125f;
    bool with_scale = true;  // an ONNX node may omit scale
    std::vector<FieldView> extra;
    std::vector<FieldView> build() const {
        std::vector<FieldView> f{
            {"kernel_size", FieldType::kInt32, kernel.data(), static_cast<int32_t>(kernel.size())},
            {"stride", FieldType::kInt32, stride.data(), static_cast<int32_t>(stride.size())},
            {"dilation", FieldType::kInt32, dilation.data(), static_cast<int32_t>(dilation.size())},
            {"is_causal", FieldType::kInt32, causal.data(), static_cast<int32_t>(causal.size())},
        };
        if (with_scale) f.push_back({"scale", FieldType::kFloat32, &scale, 1});
        f.insert(f.end(), extra.begin(), extra.end());
        return f;
    }
};

std::string parse(std::vector<FieldView> const& fields) {
    NAConfig cfg;
    return parseFields(fields, cfg);
}

void test_valid_fields() {
    Fields f;
    f.kernel = {7, 5};
    f.stride = {2, 5};
    f.dilation = {1, 3};
    f.causal = {1, 0};
    NAConfig cfg;
    CHECK(parseFields(f.build(), cfg).empty());
    CHECK(cfg.rank == 2 && cfg.kernel_size[0] == 7 && cfg.kernel_size[1] == 5);
    CHECK(cfg.stride[0] == 2 && cfg.stride[1] == 5 && cfg.dilation[1] == 3 && cfg.is_causal[0] == 1);
    CHECK(cfg.scale == 0.125f);
    // The ONNX node's plugin_version / plugin_namespace arrive as strings and must match.
    std::string const version = "1", ns = "attn_export";
    f.extra = {{"plugin_version", FieldType::kChar, version.c_str(), 1},
               {"plugin_namespace", FieldType::kChar, ns.c_str(), static_cast<int32_t>(ns.size())}};
    CHECK(parse(f.build()).empty());
}

void test_defaults_and_broadcast() {
    int64_t const kernel[3] = {3, 5, 7};
    int64_t const one_stride = 2;
    std::vector<FieldView> fields{{"kernel_size", FieldType::kInt64, kernel, 3},
                                  {"stride", FieldType::kInt64, &one_stride, 1}};
    NAConfig cfg;
    CHECK(parseFields(fields, cfg).empty());
    CHECK(cfg.rank == 3 && cfg.kernel_size[2] == 7);
    CHECK(cfg.stride[0] == 2 && cfg.stride[2] == 2 && cfg.dilation[1] == 1 && cfg.is_causal[2] == 0);
    CHECK(!cfg.has_scale);  // default head_dim ** -0.5, resolved with the input shape
}

// A node without scale must survive serialization: the runtime phase parses what the build phase wrote
// (an engine built from such a node could not be deserialized when "absent" was written as scale 0).
void test_absent_scale_round_trip() {
    Fields f;
    f.with_scale = false;
    NAConfig first, second;
    CHECK(parseFields(f.build(), first).empty());
    CHECK(!first.has_scale);
    std::vector<FieldView> const saved = serializeFields(first);
    for (FieldView const& field : saved) CHECK(field.name != "scale");
    CHECK(parseFields(saved, second).empty());
    CHECK(!second.has_scale);
    // The default is resolved for the kernel from head_dim: 64 ** -0.5 = 0.125, 32 ** -0.5.
    CHECK(kernelParams(second, tensor({1, 16, 16, 2, 64}), false).scale == 0.125f);
    CHECK(std::fabs(kernelParams(second, tensor({1, 16, 16, 2, 32}), false).scale - 0.17677669f) < 1e-7f);
    // An explicit scale still wins and round-trips.
    f.with_scale = true;
    f.scale = 0.3f;
    CHECK(parseFields(f.build(), first).empty());
    CHECK(parseFields(serializeFields(first), second).empty());
    CHECK(second.has_scale && second.scale == 0.3f);
    CHECK(kernelParams(second, tensor({1, 16, 16, 2, 64}), false).scale == 0.3f);
    // A float64 scale that vanishes as float32 is refused instead of becoming "absent" or 0.
    double const tiny = 1e-60;
    int32_t const kernel[1] = {3};
    CHECK_ERROR(parse({{"kernel_size", FieldType::kInt32, kernel, 1}, {"scale", FieldType::kFloat64, &tiny, 1}}),
                "finite positive");
}

void test_malformed_fields() {
    CHECK_ERROR(parse({}), "kernel_size");
    Fields f;
    f.kernel = {3, 3, 3, 3};
    CHECK_ERROR(parse(f.build()), "1 to 3");
    f = Fields();
    f.stride = {8, 1};
    CHECK_ERROR(parse(f.build()), "stride=8 on axis 0");
    f = Fields();
    f.stride = {1, 0};
    CHECK_ERROR(parse(f.build()), "stride=0 on axis 1");
    f = Fields();
    f.kernel = {1, 7};
    CHECK_ERROR(parse(f.build()), "kernel_size=1 on axis 0");
    f = Fields();
    f.dilation = {0, 1};
    CHECK_ERROR(parse(f.build()), "dilation=0");
    f = Fields();
    f.causal = {0, 2};
    CHECK_ERROR(parse(f.build()), "is_causal=2");
    f = Fields();
    f.stride = {1, 1, 1};
    CHECK_ERROR(parse(f.build()), "field 'stride' has 3 values");
    f = Fields();
    f.scale = -1.f;
    CHECK_ERROR(parse(f.build()), "field 'scale'");
    f.scale = std::nanf("");
    CHECK_ERROR(parse(f.build()), "finite positive");

    float const wrong[2] = {7.f, 7.f};
    CHECK_ERROR(parse({{"kernel_size", FieldType::kFloat32, wrong, 2}}), "int32 or int64");
    int32_t const seven[2] = {7, 7};
    CHECK_ERROR(parse({{"kernel_size", FieldType::kInt32, seven, 2}, {"scale", FieldType::kInt32, seven, 1}}), "float32");
    CHECK_ERROR(parse({{"kernel_size", FieldType::kInt32, nullptr, 2}}), "kernel_size");
    CHECK_ERROR(parse({{"kernel_size", FieldType::kInt32, seven, 2}, {"window", FieldType::kInt32, seven, 2}}),
                "unknown field 'window'; NeighborhoodAttention takes kernel_size, stride, dilation, is_causal, scale, "
                "plugin_version, plugin_namespace");
    int64_t const huge[1] = {int64_t(1) << 40};
    CHECK_ERROR(parse({{"kernel_size", FieldType::kInt64, huge, 1}}), "outside int32");
    std::string const v2 = "2", other = "other";
    f = Fields();
    f.extra = {{"plugin_version", FieldType::kChar, v2.c_str(), 1}};
    CHECK_ERROR(parse(f.build()), "plugin_version");
    f.extra = {{"plugin_namespace", FieldType::kChar, other.c_str(), 5}};
    CHECK_ERROR(parse(f.build()), "plugin_namespace");
    f.extra = {{"plugin_namespace", FieldType::kInt32, seven, 1}};
    CHECK_ERROR(parse(f.build()), "must be a string");
}

// Serialization writes the declared fields: the table's names and types, nothing else.
void test_serialized_fields_follow_the_table() {
    Fields f;
    NAConfig cfg;
    CHECK(parseFields(f.build(), cfg).empty());
    std::vector<FieldView> const saved = serializeFields(cfg);
    CHECK(static_cast<int32_t>(saved.size()) == neighborhoodAttention::kDecl.nbFields);
    for (FieldView const& field : saved) {
        int32_t const i = neighborhoodAttention::kDecl.find(field.name);
        CHECK(i >= 0 && field.type == neighborhoodAttention::kFields[i].type);
        CHECK(field.length == (neighborhoodAttention::kFields[i].count == FieldCount::kOne ? 1 : cfg.rank));
    }
}

void test_serialization_round_trip() {
    std::mt19937 rng(7);
    for (int trial = 0; trial < 2000; ++trial) {
        Fields f;
        int const rank = 1 + static_cast<int>(rng() % 3);
        f.kernel.assign(rank, 0);
        f.stride.assign(rank, 0);
        f.dilation.assign(rank, 0);
        f.causal.assign(rank, 0);
        for (int a = 0; a < rank; ++a) {
            f.kernel[a] = 2 + static_cast<int32_t>(rng() % 30);
            f.stride[a] = 1 + static_cast<int32_t>(rng() % f.kernel[a]);
            f.dilation[a] = 1 + static_cast<int32_t>(rng() % 4);
            f.causal[a] = static_cast<int32_t>(rng() % 2);
        }
        f.scale = 0.01f + static_cast<float>(rng() % 1000) / 997.f;
        f.with_scale = rng() % 4 != 0;
        NAConfig first, second;
        CHECK(parseFields(f.build(), first).empty());
        CHECK(parseFields(serializeFields(first), second).empty());
        CHECK(second.rank == first.rank && second.has_scale == f.with_scale && second.scale == first.scale);
        for (int a = 0; a < rank; ++a)
            CHECK(second.kernel_size[a] == f.kernel[a] && second.stride[a] == f.stride[a] &&
                  second.dilation[a] == f.dilation[a] && second.is_causal[a] == f.causal[a]);
    }
}

NAConfig config2d(int32_t k = 7, int32_t d = 1, int32_t causal = 0) {
    Fields f;
    f.kernel = {k, k};
    f.dilation = {d, d};
    f.causal = {causal, 0};
    NAConfig cfg;
    parseFields(f.build(), cfg);
    return cfg;
}

void test_input_checks() {
    NAConfig const cfg = config2d();
    TensorInfo in[4] = {tensor({2, 16, 16, 4, 32}), tensor({2, 16, 16, 4, 32}), tensor({2, 16, 16, 4, 32}),
                        tensor({4, 13, 13})};
    CHECK(checkInputs(cfg, in, 3).empty());
    CHECK(checkInputs(cfg, in, 4).empty());
    CHECK_ERROR(checkInputs(cfg, in, 2), "takes 3 inputs");
    CHECK_ERROR(checkInputs(cfg, in, 5), "takes 3 inputs");
    TensorInfo bad[4] = {in[0], tensor({2, 16, 8, 4, 32}), in[2], in[3]};
    CHECK_ERROR(checkInputs(cfg, bad, 3), "k [2,16,8,4,32] differs from q");
    bad[1] = tensor({2, 16, 4, 32});
    CHECK_ERROR(checkInputs(cfg, bad, 3), "k has rank 4");
    TensorInfo small[3] = {tensor({1, 6, 16, 4, 32}), tensor({1, 6, 16, 4, 32}), tensor({1, 6, 16, 4, 32})};
    CHECK_ERROR(checkInputs(cfg, small, 3), "spatial axis 0 has length 6");
    CHECK_ERROR(checkInputs(config2d(3, 3), small, 3), "kernel_size*dilation=9");
    TensorInfo wide[3] = {tensor({1, 16, 16, 1, 512}), tensor({1, 16, 16, 1, 512}), tensor({1, 16, 16, 1, 512})};
    CHECK_ERROR(checkInputs(cfg, wide, 3), "head_dim=512");
    TensorInfo dyn[3] = {tensor({-1, -1, 16, 4, 32}), tensor({-1, -1, 16, 4, 32}), tensor({-1, -1, 16, 4, 32})};
    CHECK(checkInputs(cfg, dyn, 3).empty());  // unknown dims are checked again at configure time
    in[3] = tensor({4, 13, 12});
    CHECK_ERROR(checkInputs(cfg, in, 4), "must be 2*kernel_size-1=13");
    in[3] = tensor({3, 13, 13});
    CHECK_ERROR(checkInputs(cfg, in, 4), "has 3 heads but q has 4");
    in[3] = tensor({4, 13, 13});
    CHECK_ERROR(checkInputs(config2d(7, 1, 1), in, 4), "causal");
}

void test_formats() {
    for (DType t : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
        TensorInfo io[4] = {tensor({1, 8, 2, 8}, t), tensor({1, 8, 2, 8}, t), tensor({1, 8, 2, 8}, t), tensor({1, 8, 2, 8}, t)};
        for (int pos = 0; pos < 4; ++pos) CHECK(supportsFormat(pos, io, 3, 1));
        io[2].type = t == DType::kFloat32 ? DType::kFloat16 : DType::kFloat32;
        CHECK(!supportsFormat(2, io, 3, 1));  // v must share q's type
        io[2].type = t;
        io[3].linear = false;
        CHECK(!supportsFormat(3, io, 3, 1));
    }
    TensorInfo other[4] = {tensor({1, 8, 2, 8}, DType::kOther), tensor({1, 8, 2, 8}), tensor({1, 8, 2, 8}), tensor({1, 8, 2, 8})};
    CHECK(!supportsFormat(0, other, 3, 1));
    CHECK(!supportsFormat(4, other, 3, 1));
    CHECK(!supportsFormat(-1, other, 3, 1));
}

void test_kernel_params() {
    NAConfig cfg = config2d(5, 2);
    TensorInfo q = tensor({3, 20, 24, 4, 64}, DType::kBFloat16);
    attnx_na_params const p = kernelParams(cfg, q, false);
    CHECK(p.rank == 2 && p.batch == 3 && p.heads == 4 && p.head_dim == 64);
    CHECK(p.spatial[0] == 20 && p.spatial[1] == 24 && p.kernel_size[1] == 5 && p.dilation[0] == 2);
    CHECK(p.dtype == ATTNX_BFLOAT16 && p.has_rpb == 0 && p.scale == 0.125f);
    CHECK(attnx::na_problem(p).empty());
    attnx_na_params bad = p;
    bad.spatial[1] = 9;  // 5 * 2 > 9
    CHECK_ERROR(attnx::na_problem(bad), "on axis 1 exceeds the axis length 9");
}

// Which kernel takes a call (core_plan.h): the fused core for fp16/bf16 at head_dim 32/64/128 with aligned
// tensors; with a bias only when the head's table fits in shared memory next to the core's tiles.
void test_core_path_rules() {
    for (int dim = 1; dim <= 256; ++dim)
        for (int dtype : {ATTNX_FLOAT32, ATTNX_FLOAT16, ATTNX_BFLOAT16}) {
            bool const core = attnx::core_fits(dtype, dim, 9, 232448, true);
            CHECK(core == (dtype != ATTNX_FLOAT32 && (dim == 32 || dim == 64 || dim == 128)));
            CHECK(!attnx::core_fits(dtype, dim, 9, 232448, false) && !attnx::core_fits(dtype, dim, 7, 232448, true));
        }
    CHECK(attnx::core_fits(ATTNX_FLOAT16, 128, 8, 101376, true));  // sm_86/89/120: 80 KB fit
    CHECK(attnx::na_rpb_staged(13 * 13, 128, 101376));              // 2-D k7: 676 bytes
    CHECK(attnx::na_rpb_staged(4095, 128, 101376));                 // 1-D k2048: 16 KB
    CHECK(!attnx::na_rpb_staged(253LL * 253, 128, 232448));         // 2-D k127: 256 KB, the generic kernel
    CHECK(!attnx::na_rpb_staged(4700, 128, 101376) && attnx::na_rpb_staged(4700, 128, 232448));
}

}  // namespace

int main() {
    test_valid_fields();
    test_defaults_and_broadcast();
    test_absent_scale_round_trip();
    test_malformed_fields();
    test_serialized_fields_follow_the_table();
    test_serialization_round_trip();
    test_input_checks();
    test_formats();
    test_kernel_params();
    test_core_path_rules();
    return testharness::passed();
}
