// CPU test of the NeighborhoodAttention plugin inside the built library, through getCreators, with the
// real TensorRT headers but no TensorRT runtime: the creator validates fields and logs why it refuses,
// plugins serialize and rebuild (with and without scale), format/type rules, configure-time shape
// checks, and enqueue taking its shapes from its descriptors.
// Usage: test_neighborhoodAttention_glue path/to/libattnx_trt_plugins.so
#include <sys/mman.h>
#include <unistd.h>

#include "glueTestSupport.h"

using namespace nvinfer1;
using namespace gluetest;

int main(int argc, char** argv) {
    if (argc != 2) return 2;
    Finder finder;
    void* lib = openLibraryLoggingTo(argv[1], finder);

    IPluginCreatorV3One* creator = creatorNamed(lib, "NeighborhoodAttention");
    CHECK(std::strcmp(creator->getPluginVersion(), "1") == 0);
    CHECK(std::strcmp(creator->getPluginNamespace(), "attn_export") == 0);
    PluginFieldCollection const* names = creator->getFieldNames();
    CHECK(names->nbFields == 5);
    CHECK(std::strcmp(names->fields[0].name, "kernel_size") == 0 && names->fields[0].type == PluginFieldType::kINT32 &&
          names->fields[0].length == 0);  // one per spatial axis
    CHECK(std::strcmp(names->fields[4].name, "scale") == 0 && names->fields[4].type == PluginFieldType::kFLOAT32 &&
          names->fields[4].length == 1);

    // Fields as the TensorRT ONNX parser delivers the node's attributes (INTS -> int32).
    int32_t const kernel[2] = {7, 5}, stride[2] = {1, 5}, dilation[2] = {2, 1}, causal[2] = {0, 0};
    float const scale = 0.2f;
    char const version[] = "1";
    std::vector<PluginField> fields{
        PluginField("kernel_size", kernel, PluginFieldType::kINT32, 2),
        PluginField("stride", stride, PluginFieldType::kINT32, 2),
        PluginField("dilation", dilation, PluginFieldType::kINT32, 2),
        PluginField("is_causal", causal, PluginFieldType::kINT32, 2),
        PluginField("scale", &scale, PluginFieldType::kFLOAT32, 1),
        PluginField("plugin_version", version, PluginFieldType::kCHAR, 1),
    };
    PluginFieldCollection fc{static_cast<int32_t>(fields.size()), fields.data()};
    IPluginV3* plugin = creator->createPlugin("na0", &fc, TensorRTPhase::kBUILD);
    CHECK(plugin != nullptr);

    // Malformed fields: nullptr and a logged reason naming the node and the field, never a crash.
    int32_t const badStride[2] = {9, 1};
    fields[1] = PluginField("stride", badStride, PluginFieldType::kINT32, 2);
    PluginFieldCollection bad{static_cast<int32_t>(fields.size()), fields.data()};
    CHECK(creator->createPlugin("na_bad", &bad, TensorRTPhase::kBUILD) == nullptr);
    CHECK(finder.logger.last.find("na_bad") != std::string::npos);
    CHECK(finder.logger.last.find("stride=9 on axis 0") != std::string::npos);
    CHECK(creator->createPlugin("empty", nullptr, TensorRTPhase::kBUILD) == nullptr);
    CHECK(finder.logger.last.find("kernel_size") != std::string::npos);

    // A node without scale (default head_dim ** -0.5): its engine must deserialize, i.e. the runtime
    // phase must accept what the build phase serialized.
    std::vector<PluginField> noScale{fields[0], PluginField("stride", stride, PluginFieldType::kINT32, 2)};
    PluginFieldCollection noScaleFc{static_cast<int32_t>(noScale.size()), noScale.data()};
    IPluginV3* scaleless = creator->createPlugin("na_default_scale", &noScaleFc, TensorRTPhase::kBUILD);
    CHECK(scaleless != nullptr);
    auto* scalelessRuntime = runtimeOf(scaleless);
    PluginFieldCollection const* scalelessSaved = scalelessRuntime->getFieldsToSerialize();
    CHECK(scalelessSaved != nullptr);
    for (int32_t i = 0; i < scalelessSaved->nbFields; ++i) CHECK(std::strcmp(scalelessSaved->fields[i].name, "scale") != 0);
    IPluginV3* scalelessRestored = creator->createPlugin("na_default_scale", scalelessSaved, TensorRTPhase::kRUNTIME);
    CHECK(scalelessRestored != nullptr);
    delete scalelessRestored;
    delete scaleless;

    auto* core = coreOf(plugin);
    auto* build = buildOf(plugin);
    auto* runtime = runtimeOf(plugin);
    CHECK(core && build && runtime);
    CHECK(std::strcmp(core->getPluginName(), "NeighborhoodAttention") == 0);
    CHECK(build->getNbOutputs() == 1);

    // Serialization: the runtime phase rebuilds an identical plugin from getFieldsToSerialize.
    PluginFieldCollection const* saved = runtime->getFieldsToSerialize();
    CHECK(saved && saved->nbFields == 5);
    IPluginV3* restored = creator->createPlugin("na0", saved, TensorRTPhase::kRUNTIME);
    CHECK(restored != nullptr);
    auto* restoredRuntime = runtimeOf(restored);
    PluginFieldCollection const* again = restoredRuntime->getFieldsToSerialize();
    CHECK(again->nbFields == saved->nbFields);
    for (int32_t i = 0; i < again->nbFields; ++i) {
        CHECK(std::strcmp(again->fields[i].name, saved->fields[i].name) == 0);
        CHECK(again->fields[i].length == saved->fields[i].length && again->fields[i].type == saved->fields[i].type);
        size_t const bytes = again->fields[i].type == PluginFieldType::kFLOAT32 ? 4 : 4 * again->fields[i].length;
        CHECK(std::memcmp(again->fields[i].data, saved->fields[i].data, bytes) == 0);
    }

    // Types and formats: fp16 in, fp16 out; int8 refused; mixed types refused.
    DataType outType = DataType::kFLOAT;
    DataType const inTypes[3] = {DataType::kBF16, DataType::kBF16, DataType::kBF16};
    CHECK(build->getOutputDataTypes(&outType, 1, inTypes, 3) == 0 && outType == DataType::kBF16);
    DynamicPluginTensorDesc io[4] = {tensor({2, 20, 24, 4, 64}), tensor({2, 20, 24, 4, 64}), tensor({2, 20, 24, 4, 64}),
                                     tensor({2, 20, 24, 4, 64})};
    for (int32_t pos = 0; pos < 4; ++pos) CHECK(build->supportsFormatCombination(pos, io, 3, 1));
    io[1].desc.type = DataType::kFLOAT;
    CHECK(!build->supportsFormatCombination(1, io, 3, 1));
    io[0].desc.type = DataType::kINT8;
    CHECK(!build->supportsFormatCombination(0, io, 3, 1));
    // TensorRT defines only inOut[0..pos] when it asks about pos: descriptors past pos sit in an
    // unreadable page here, so reading one crashes the test.
    long const page = sysconf(_SC_PAGESIZE);
    size_t const span = ((4 * sizeof(DynamicPluginTensorDesc)) / page + 1) * page;
    auto* region = static_cast<unsigned char*>(mmap(nullptr, span + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    CHECK(region != MAP_FAILED);
    CHECK(mprotect(region + span, page, PROT_NONE) == 0);
    for (int32_t pos = 0; pos < 4; ++pos) {
        auto* guarded = reinterpret_cast<DynamicPluginTensorDesc*>(region + span) - (pos + 1);
        for (int32_t i = 0; i <= pos; ++i) guarded[i] = tensor({2, 20, 24, 4, 64});
        CHECK(build->supportsFormatCombination(pos, guarded, 3, 1));
    }
    munmap(region, span + page);

    // Configure-time shape checks on the profile's min and max (dilation 2 * kernel 7 = 14 rows).
    DynamicPluginTensorDesc in[3] = {tensor({2, 20, 24, 4, 64}), tensor({2, 20, 24, 4, 64}), tensor({2, 20, 24, 4, 64})};
    DynamicPluginTensorDesc out[1] = {tensor({2, 20, 24, 4, 64})};
    CHECK(build->configurePlugin(in, 3, out, 1) == 0);
    for (auto& t : in) t.min.d[1] = 12;
    CHECK(build->configurePlugin(in, 3, out, 1) == -1);
    CHECK(finder.logger.last.find("spatial axis 0 has length 12") != std::string::npos);
    CHECK(build->getWorkspaceSize(in, 3, out, 1) == 0);

    // Runtime shapes: a valid shape configures the kernel call; a wrong one is refused with a reason.
    PluginTensorDesc concrete[3] = {in[0].desc, in[1].desc, in[2].desc};
    CHECK(runtime->onShapeChange(concrete, 3, &out[0].desc, 1) == 0);
    concrete[2].dims.d[2] = 23;
    CHECK(runtime->onShapeChange(concrete, 3, &out[0].desc, 1) == -1);
    CHECK(finder.logger.last.find("v [2,20,23,4,64] differs from q") != std::string::npos);

    // enqueue takes the shapes of its own descriptors, not those of the last onShapeChange: an empty
    // batch launches nothing (no device needed), a shape the op cannot take is refused with the reason.
    concrete[2].dims.d[2] = 24;
    CHECK(runtime->onShapeChange(concrete, 3, &out[0].desc, 1) == 0);
    PluginTensorDesc call[3] = {concrete[0], concrete[1], concrete[2]};
    for (auto& t : call) t.dims.d[0] = 0;
    void const* noInputs[3] = {nullptr, nullptr, nullptr};
    void* noOutputs[1] = {nullptr};
    CHECK(runtime->enqueue(call, &out[0].desc, noInputs, noOutputs, nullptr, nullptr) == 0);
    for (auto& t : call) {
        t.dims.d[0] = 2;
        t.dims.d[1] = 12;  // 12 rows < kernel 7 * dilation 2
    }
    CHECK(runtime->enqueue(call, &out[0].desc, noInputs, noOutputs, nullptr, nullptr) == -1);
    CHECK(finder.logger.last.find("spatial axis 0 has length 12") != std::string::npos);

    IPluginV3* attached = runtime->attachToContext(nullptr);
    CHECK(attached != nullptr);
    delete attached;
    delete restored;
    delete plugin;
    return testharness::passed();
}
