// CPU test of the ParoAttention plugin inside the built library, through getCreators, with the real TensorRT
// headers but no TensorRT runtime: the creator's fields and refusals, serialization, types and formats
// (int32 perm_idx and layouts), configure-time shape checks, the workspace of the quantization pre-pass, and
// enqueue taking its shapes from its descriptors.
// Usage: test_paroAttention_glue path/to/libattnx_trt_plugins.so
#include "glueTestSupport.h"

using namespace nvinfer1;
using namespace gluetest;

int main(int argc, char** argv) {
    if (argc != 2) return 2;
    Finder finder;
    void* lib = openLibraryLoggingTo(argv[1], finder);

    IPluginCreatorV3One* creator = creatorNamed(lib, "ParoAttention");
    CHECK(std::strcmp(creator->getPluginVersion(), "1") == 0);
    CHECK(std::strcmp(creator->getPluginNamespace(), "attn_export") == 0);
    PluginFieldCollection const* names = creator->getFieldNames();
    CHECK(names->nbFields == 7);
    char const* const expected[7] = {"block", "qk_bits", "pv_bits", "q_group", "k_group", "smooth_k", "scale"};
    for (int32_t i = 0; i < 7; ++i) CHECK(std::strcmp(names->fields[i].name, expected[i]) == 0 && names->fields[i].length == 1);

    int32_t const block = 64, qkBits = 8, pvBits = 4, qGroup = 32, kGroup = 64, smooth = 1;
    float const scale = 0.125f;
    char const version[] = "1";
    std::vector<PluginField> fields{
        PluginField("block", &block, PluginFieldType::kINT32, 1),     PluginField("qk_bits", &qkBits, PluginFieldType::kINT32, 1),
        PluginField("pv_bits", &pvBits, PluginFieldType::kINT32, 1),  PluginField("q_group", &qGroup, PluginFieldType::kINT32, 1),
        PluginField("k_group", &kGroup, PluginFieldType::kINT32, 1),  PluginField("smooth_k", &smooth, PluginFieldType::kINT32, 1),
        PluginField("scale", &scale, PluginFieldType::kFLOAT32, 1),   PluginField("plugin_version", version, PluginFieldType::kCHAR, 1),
    };
    PluginFieldCollection fc{static_cast<int32_t>(fields.size()), fields.data()};
    IPluginV3* plugin = creator->createPlugin("paro0", &fc, TensorRTPhase::kBUILD);
    CHECK(plugin != nullptr);

    int32_t const three = 3;
    fields[1] = PluginField("qk_bits", &three, PluginFieldType::kINT32, 1);
    PluginFieldCollection bad{static_cast<int32_t>(fields.size()), fields.data()};
    CHECK(creator->createPlugin("paro_bad", &bad, TensorRTPhase::kBUILD) == nullptr);
    CHECK(finder.logger.last.find("paro_bad") != std::string::npos);
    CHECK(finder.logger.last.find("'qk_bits'=3 must be 16 (no quantization), 8 or 4") != std::string::npos);
    fields[1] = PluginField("qk_bits", &qkBits, PluginFieldType::kINT32, 1);

    auto* core = coreOf(plugin);
    auto* build = buildOf(plugin);
    auto* runtime = runtimeOf(plugin);
    CHECK(core && build && runtime);
    CHECK(std::strcmp(core->getPluginName(), "ParoAttention") == 0);

    PluginFieldCollection const* saved = runtime->getFieldsToSerialize();
    CHECK(saved && saved->nbFields == 7);
    IPluginV3* restored = creator->createPlugin("paro0", saved, TensorRTPhase::kRUNTIME);
    CHECK(restored != nullptr);
    auto* restoredRuntime = runtimeOf(restored);
    PluginFieldCollection const* again = restoredRuntime->getFieldsToSerialize();
    CHECK(again->nbFields == 7);
    for (int32_t i = 0; i < 7; ++i) {
        CHECK(std::strcmp(again->fields[i].name, saved->fields[i].name) == 0);
        CHECK(std::memcmp(again->fields[i].data, saved->fields[i].data, 4) == 0);
    }

    // q/k/v [2, 3, 300, 64], perm_idx [3, 300], kv_count [1, 3, 5], kv_index [2, 3, 5, 4] (nb = ceil(300 / 64)).
    DynamicPluginTensorDesc io[7] = {tensor({2, 3, 300, 64}, DataType::kBF16), tensor({2, 3, 300, 64}, DataType::kBF16),
                                     tensor({2, 3, 300, 64}, DataType::kBF16), tensor({3, 300}, DataType::kINT32),
                                     tensor({1, 3, 5}, DataType::kINT32),      tensor({2, 3, 5, 4}, DataType::kINT32),
                                     tensor({2, 3, 300, 64}, DataType::kBF16)};
    DataType outType = DataType::kFLOAT;
    DataType const inTypes[6] = {DataType::kBF16, DataType::kBF16, DataType::kBF16, DataType::kINT32, DataType::kINT32, DataType::kINT32};
    CHECK(build->getOutputDataTypes(&outType, 1, inTypes, 6) == 0 && outType == DataType::kBF16);
    for (int32_t pos = 0; pos < 7; ++pos) CHECK(build->supportsFormatCombination(pos, io, 6, 1));
    io[3].desc.type = DataType::kINT64;
    CHECK(!build->supportsFormatCombination(3, io, 6, 1));
    io[3].desc.type = DataType::kINT32;

    DynamicPluginTensorDesc out[1] = {io[6]};
    CHECK(build->configurePlugin(io, 6, out, 1) == 0);
    // INT8 QK and INT4 PV: Q, K, V operands (bf16, 2 x 3 x 300 x 64 each), the scales (3,584 bytes) and the
    // channel statistics' partials (2 chunks of 256 tokens x 6 heads x 64 channels, K sums and V maxima: 6,144).
    size_t const operand = 2 * 3 * 300 * 64 * 2;
    size_t const workspace = build->getWorkspaceSize(io, 6, out, 1);
    CHECK(workspace == 3 * operand + 3584 + 6144);
    io[3].min.d[1] = 299;
    CHECK(build->configurePlugin(io, 6, out, 1) == -1);
    CHECK(finder.logger.last.find("perm_idx [3,299] must be [heads, N]") != std::string::npos);
    io[3].min.d[1] = 300;

    PluginTensorDesc concrete[6] = {io[0].desc, io[1].desc, io[2].desc, io[3].desc, io[4].desc, io[5].desc};
    CHECK(runtime->onShapeChange(concrete, 6, &out[0].desc, 1) == 0);
    concrete[4].dims.d[1] = 1;  // PARO layouts are per head
    CHECK(runtime->onShapeChange(concrete, 6, &out[0].desc, 1) == -1);
    CHECK(finder.logger.last.find("one layout per head") != std::string::npos);
    concrete[4].dims.d[1] = 3;
    PluginTensorDesc call[6] = {concrete[0], concrete[1], concrete[2], concrete[3], concrete[4], concrete[5]};
    for (int i : {0, 1, 2}) call[i].dims.d[0] = 0;
    call[5].dims.d[0] = 1;
    void const* noInputs[6] = {nullptr, nullptr, nullptr, nullptr, nullptr, nullptr};
    void* noOutputs[1] = {nullptr};
    CHECK(runtime->enqueue(call, &out[0].desc, noInputs, noOutputs, nullptr, nullptr) == 0);  // empty batch
    for (int i : {0, 1, 2}) call[i].dims.d[0] = 2;
    call[5].dims.d[2] = 6;
    CHECK(runtime->enqueue(call, &out[0].desc, noInputs, noOutputs, nullptr, nullptr) == -1);
    CHECK(finder.logger.last.find("kv_index [1,3,6,4] has 6 query-block rows") != std::string::npos);

    IPluginV3* attached = runtime->attachToContext(nullptr);
    CHECK(attached != nullptr);
    delete attached;
    delete restored;
    delete plugin;
    return testharness::passed();
}
