// CPU test of the BlockSparseAttention plugin inside the built library, through getCreators, with the real
// TensorRT headers but no TensorRT runtime: the creator's fields and refusals, serialization with and without
// scale, types and formats (int32 layouts), configure-time shape checks on the profile, and enqueue taking its
// shapes from its descriptors.
// Usage: test_blockSparseAttention_glue path/to/libattnx_trt_plugins.so
#include "glueTestSupport.h"

using namespace nvinfer1;
using namespace gluetest;

int main(int argc, char** argv) {
    if (argc != 2) return 2;
    Finder finder;
    void* lib = openLibraryLoggingTo(argv[1], finder);

    IPluginCreatorV3One* creator = creatorNamed(lib, "BlockSparseAttention");
    CHECK(std::strcmp(creator->getPluginVersion(), "1") == 0);
    CHECK(std::strcmp(creator->getPluginNamespace(), "attn_export") == 0);
    PluginFieldCollection const* names = creator->getFieldNames();
    CHECK(names->nbFields == 3);
    CHECK(std::strcmp(names->fields[0].name, "block_q") == 0 && names->fields[0].type == PluginFieldType::kINT32 &&
          names->fields[0].length == 1);
    CHECK(std::strcmp(names->fields[2].name, "scale") == 0 && names->fields[2].type == PluginFieldType::kFLOAT32);

    // Fields as the TensorRT ONNX parser delivers the exporter's node (INT -> int32, plugin_* strings).
    int32_t const blockQ = 64, blockKv = 32;
    float const scale = 0.125f;
    char const version[] = "1", ns[] = "attn_export";
    std::vector<PluginField> fields{
        PluginField("block_q", &blockQ, PluginFieldType::kINT32, 1),
        PluginField("block_kv", &blockKv, PluginFieldType::kINT32, 1),
        PluginField("scale", &scale, PluginFieldType::kFLOAT32, 1),
        PluginField("plugin_version", version, PluginFieldType::kCHAR, 1),
        PluginField("plugin_namespace", ns, PluginFieldType::kCHAR, 11),
    };
    PluginFieldCollection fc{static_cast<int32_t>(fields.size()), fields.data()};
    IPluginV3* plugin = creator->createPlugin("bsa0", &fc, TensorRTPhase::kBUILD);
    CHECK(plugin != nullptr);

    int32_t const zero = 0;
    fields[1] = PluginField("block_kv", &zero, PluginFieldType::kINT32, 1);
    PluginFieldCollection bad{static_cast<int32_t>(fields.size()), fields.data()};
    CHECK(creator->createPlugin("bsa_bad", &bad, TensorRTPhase::kBUILD) == nullptr);
    CHECK(finder.logger.last.find("bsa_bad") != std::string::npos);
    CHECK(finder.logger.last.find("'block_kv'=0 must be positive") != std::string::npos);
    CHECK(creator->createPlugin("empty", nullptr, TensorRTPhase::kBUILD) == nullptr);
    CHECK(finder.logger.last.find("block_q") != std::string::npos);

    // No scale: the engine must deserialize what the build phase serialized (scale stays absent).
    std::vector<PluginField> noScale{PluginField("block_q", &blockQ, PluginFieldType::kINT32, 1),
                                     PluginField("block_kv", &blockKv, PluginFieldType::kINT32, 1)};
    PluginFieldCollection noScaleFc{2, noScale.data()};
    IPluginV3* scaleless = creator->createPlugin("bsa_default", &noScaleFc, TensorRTPhase::kBUILD);
    CHECK(scaleless != nullptr);
    auto* scalelessRuntime = runtimeOf(scaleless);
    PluginFieldCollection const* scalelessSaved = scalelessRuntime->getFieldsToSerialize();
    CHECK(scalelessSaved != nullptr && scalelessSaved->nbFields == 2);
    IPluginV3* scalelessRestored = creator->createPlugin("bsa_default", scalelessSaved, TensorRTPhase::kRUNTIME);
    CHECK(scalelessRestored != nullptr);
    delete scalelessRestored;
    delete scaleless;

    auto* core = coreOf(plugin);
    auto* build = buildOf(plugin);
    auto* runtime = runtimeOf(plugin);
    CHECK(core && build && runtime);
    CHECK(std::strcmp(core->getPluginName(), "BlockSparseAttention") == 0);
    CHECK(std::strcmp(core->getPluginNamespace(), "attn_export") == 0);
    CHECK(build->getNbOutputs() == 1);

    PluginFieldCollection const* saved = runtime->getFieldsToSerialize();
    CHECK(saved && saved->nbFields == 3);
    IPluginV3* restored = creator->createPlugin("bsa0", saved, TensorRTPhase::kRUNTIME);
    CHECK(restored != nullptr);
    auto* restoredRuntime = runtimeOf(restored);
    PluginFieldCollection const* again = restoredRuntime->getFieldsToSerialize();
    CHECK(again->nbFields == saved->nbFields);
    for (int32_t i = 0; i < again->nbFields; ++i) {
        CHECK(std::strcmp(again->fields[i].name, saved->fields[i].name) == 0);
        CHECK(again->fields[i].length == saved->fields[i].length && again->fields[i].type == saved->fields[i].type);
        CHECK(std::memcmp(again->fields[i].data, saved->fields[i].data, 4) == 0);
    }

    // Types: q's type out; int32 layouts; int8 activations refused.
    DataType outType = DataType::kFLOAT;
    DataType const inTypes[5] = {DataType::kHALF, DataType::kHALF, DataType::kHALF, DataType::kINT32, DataType::kINT32};
    CHECK(build->getOutputDataTypes(&outType, 1, inTypes, 5) == 0 && outType == DataType::kHALF);
    // q [2, 4, 200, 64], k/v [2, 4, 300, 64], kv_count [1, 4, 4], kv_index [2, 1, 4, 6] (nQB = ceil(200 / 64)).
    DynamicPluginTensorDesc io[6] = {tensor({2, 4, 200, 64}), tensor({2, 4, 300, 64}), tensor({2, 4, 300, 64}),
                                     tensor({1, 4, 4}, DataType::kINT32), tensor({2, 1, 4, 6}, DataType::kINT32),
                                     tensor({2, 4, 200, 64})};
    for (int32_t pos = 0; pos < 6; ++pos) CHECK(build->supportsFormatCombination(pos, io, 5, 1));
    io[3].desc.type = DataType::kHALF;
    CHECK(!build->supportsFormatCombination(3, io, 5, 1));
    io[3].desc.type = DataType::kINT32;
    io[0].desc.type = DataType::kINT8;
    CHECK(!build->supportsFormatCombination(0, io, 5, 1));
    io[0].desc.type = DataType::kHALF;

    // Configure-time checks on the profile's min and max: a wrong row count is refused with its reason.
    DynamicPluginTensorDesc out[1] = {io[5]};
    CHECK(build->configurePlugin(io, 5, out, 1) == 0);
    io[3].max.d[2] = 5;
    CHECK(build->configurePlugin(io, 5, out, 1) == -1);
    CHECK(finder.logger.last.find("kv_count [1,4,5] has 5 query-block rows; the sequence needs 4") != std::string::npos);
    io[3].max.d[2] = 4;
    CHECK(build->getWorkspaceSize(io, 5, out, 1) == 0);

    // Runtime shapes: valid ones pass validation; enqueue of an empty batch launches nothing (no device);
    // a bad layout shape is refused before any launch.
    PluginTensorDesc concrete[5] = {io[0].desc, io[1].desc, io[2].desc, io[3].desc, io[4].desc};
    CHECK(runtime->onShapeChange(concrete, 5, &out[0].desc, 1) == 0);
    concrete[4].dims.d[1] = 3;
    CHECK(runtime->onShapeChange(concrete, 5, &out[0].desc, 1) == -1);
    CHECK(finder.logger.last.find("kv_index [2,3,4,6] has 3 heads") != std::string::npos);
    concrete[4].dims.d[1] = 1;
    PluginTensorDesc call[5] = {concrete[0], concrete[1], concrete[2], concrete[3], concrete[4]};
    for (int i : {0, 1, 2}) call[i].dims.d[0] = 0;
    call[4].dims.d[0] = 1;
    void const* noInputs[5] = {nullptr, nullptr, nullptr, nullptr, nullptr};
    void* noOutputs[1] = {nullptr};
    CHECK(runtime->enqueue(call, &out[0].desc, noInputs, noOutputs, nullptr, nullptr) == 0);
    call[0].dims.d[2] = 400;  // 7 query blocks, the layout has 4 rows
    for (int i : {0, 1, 2}) call[i].dims.d[0] = 2;
    CHECK(runtime->enqueue(call, &out[0].desc, noInputs, noOutputs, nullptr, nullptr) == -1);
    CHECK(finder.logger.last.find("the sequence needs 7") != std::string::npos);

    IPluginV3* attached = runtime->attachToContext(nullptr);
    CHECK(attached != nullptr);
    delete attached;
    delete restored;
    delete plugin;
    return testharness::passed();
}
