// CPU unit tests of the TensorRT-free code every plugin shares (plugins/trt/common/pluginFields.*,
// tensorInfo.*): the field readers, the declaration-driven parse (identity, unknown and missing fields)
// and dimsText. Run by tests/test_native_plugin_logic.py and ctest.
#include <string>
#include <vector>

#include "pluginFields.h"
#include "tensorInfo.h"
#include "testHarness.h"

using namespace attnx::plugin;

namespace {

constexpr FieldSpec kFields[] = {
    {"window", FieldType::kInt32, FieldCount::kRank, true},
    {"gain", FieldType::kFloat32, FieldCount::kOne, false},
};
constexpr PluginDecl kDecl = declare("Toy", "3", kFields);
static_assert(kDecl.nbFields == 2 && sameName(kDecl.fields[1].name, "gain") && !sameName("gain", "gai"), "");
static_assert(sameName(fieldTypeName(FieldType::kFloat32), "float32") && sameName(fieldTypeName(FieldType::kChar), "char"),
              "the registry's names");

void test_readers() {
    int32_t out[3] = {0, 0, 0};
    int32_t const one = 4;
    CHECK(readInts({"w", FieldType::kInt32, &one, 1}, 3, out).empty());
    CHECK(out[0] == 4 && out[2] == 4);  // broadcast
    int64_t const three[3] = {1, 2, 3};
    CHECK(readInts({"w", FieldType::kInt64, three, 3}, 3, out).empty());
    CHECK(out[0] == 1 && out[2] == 3);
    CHECK_ERROR(readInts({"w", FieldType::kInt64, three, 2}, 3, out), "field 'w' has 2 values; give 1 or one per spatial axis (3)");
    int64_t const huge = int64_t(1) << 40;
    CHECK_ERROR(readInts({"w", FieldType::kInt64, &huge, 1}, 1, out), "outside int32");
    float const f = 0.5f;
    CHECK_ERROR(readInts({"w", FieldType::kFloat32, &f, 1}, 1, out), "int32 or int64");
    CHECK_ERROR(readInts({"w", FieldType::kInt32, nullptr, 1}, 1, out), "field 'w'");

    double value = 0;
    CHECK(readFloat({"g", FieldType::kFloat32, &f, 1}, value).empty() && value == 0.5);
    double const d = 0.25;
    CHECK(readFloat({"g", FieldType::kFloat64, &d, 1}, value).empty() && value == 0.25);
    CHECK_ERROR(readFloat({"g", FieldType::kInt32, &one, 1}, value), "one float32 or float64 value");
    CHECK_ERROR(readFloat({"g", FieldType::kFloat32, &f, 2}, value), "one float32 or float64 value");

    std::string text;
    char const padded[4] = {'a', 'b', '\0', 'x'};
    CHECK(readString({"s", FieldType::kChar, padded, 4}, text).empty() && text == "ab");
    CHECK(readString({"s", FieldType::kChar, nullptr, 0}, text).empty() && text.empty());
    CHECK_ERROR(readString({"s", FieldType::kInt32, &one, 1}, text), "must be a string");
}

std::string parseToy(std::vector<FieldView> const& fields, std::vector<int32_t>* read = nullptr) {
    return parseDeclared(kDecl, fields, [&](int32_t index, FieldView const&) -> std::string {
        if (read) read->push_back(index);
        return "";
    });
}

void test_parse_declared() {
    int32_t const w = 3;
    float const g = 1.f;
    std::vector<int32_t> read;
    CHECK(parseToy({{"gain", FieldType::kFloat32, &g, 1}, {"window", FieldType::kInt32, &w, 1}}, &read).empty());
    CHECK(read == std::vector<int32_t>({1, 0}));  // every table field reaches the plugin's reader, by index
    CHECK_ERROR(parseToy({{"gain", FieldType::kFloat32, &g, 1}}), "field 'window' is missing; Toy requires it");
    CHECK_ERROR(parseToy({{"window", FieldType::kInt32, &w, 1}, {"size", FieldType::kInt32, &w, 1}}),
                "unknown field 'size'; Toy takes window, gain, plugin_version, plugin_namespace");
    // The reader's problem is returned as it is.
    std::string const problem = parseDeclared(kDecl, {{"window", FieldType::kInt32, &w, 1}},
                                              [](int32_t, FieldView const&) { return std::string("bad window"); });
    CHECK(problem == "bad window");
    // plugin_version / plugin_namespace: checked against the declaration and kPluginNamespace.
    std::string const v3 = "3", v1 = "1", ns = kPluginNamespace, other = "other";
    CHECK(parseToy({{"window", FieldType::kInt32, &w, 1}, {"plugin_version", FieldType::kChar, v3.c_str(), 1},
                    {"plugin_namespace", FieldType::kChar, ns.c_str(), static_cast<int32_t>(ns.size())}})
              .empty());
    CHECK_ERROR(parseToy({{"window", FieldType::kInt32, &w, 1}, {"plugin_version", FieldType::kChar, v1.c_str(), 1}}),
                "field 'plugin_version' is '1' but this library provides '3'");
    CHECK_ERROR(parseToy({{"window", FieldType::kInt32, &w, 1}, {"plugin_namespace", FieldType::kChar, other.c_str(), 5}}),
                "field 'plugin_namespace' is 'other' but this library provides 'attn_export'");
    CHECK(std::string(kPluginNamespace) == "attn_export");
    CHECK(kDecl.find("gain") == 1 && kDecl.find("plugin_version") == -1);
    CHECK(fieldOf(kFields[1], &g, 1).name == "gain" && fieldOf(kFields[1], &g, 1).type == FieldType::kFloat32);
}

void test_dims_text() {
    TensorInfo t{DType::kFloat16, true, 3, {2, -1, 7}};
    CHECK(dimsText(t) == "[2,-1,7]");
    CHECK(!isKnownDim(t.dims[1]) && isKnownDim(t.dims[0]));
}

// The block-layout rules both block-sparse plugins share (one home: tensorInfo.h).
void test_block_layout() {
    TensorInfo const q{DType::kFloat16, true, 4, {2, 4, 130, 64}};
    TensorInfo count{DType::kInt32, true, 3, {1, 4, 3}}, index{DType::kInt32, true, 4, {2, 1, 3, 5}};
    CHECK(layoutProblem(q, count, index, 64, "Sq", "block_q", false).empty());  // 3 rows = ceil(130 / 64)
    CHECK_ERROR(layoutProblem(q, count, index, 32, "Sq", "block_q", false),
                "kv_count [1,4,3] has 3 query-block rows; the sequence needs 5 (rows = ceil(Sq / block_q=32))");
    CHECK_ERROR(layoutProblem(q, count, index, 64, "N", "block", true),
                "kv_index [2,1,3,5] has 1 heads; the attention has 4 (one layout per head)");
    TensorInfo dynamic = q;
    dynamic.dims[2] = -1;  // rows not known at build time: not checked
    CHECK(layoutProblem(dynamic, count, index, 32, "Sq", "block_q", false).empty());
    index.type = DType::kFloat32;
    CHECK_ERROR(layoutProblem(q, count, index, 64, "Sq", "block_q", false), "kv_count and kv_index must be int32");
    attnx_block_layout const l = layoutParams(count, index);
    CHECK(l.rows == 3 && l.max_blocks == 5 && l.count_batch == 1 && l.count_heads == 4 && l.index_batch == 2 &&
          l.index_heads == 1);
}

}  // namespace

int main() {
    test_readers();
    test_parse_declared();
    test_dims_text();
    test_block_layout();
    return testharness::passed();
}
