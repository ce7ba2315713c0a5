// CPU test of the built plugin library through its only exports (getCreators, setLoggerFinder), with
// the real TensorRT headers but no TensorRT runtime: the creator validates fields and logs why it
// refuses, plugins serialize and rebuild, format/type rules and configure-time shape checks hold.
// Usage: test_plugin_glue path/to/libattnx_trt_plugins.so
#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "NvInferRuntime.h"

using namespace nvinfer1;

namespace {

int g_checks = 0;
void check(bool ok, char const* what, int line) {
    ++g_checks;
    if (!ok) {
        std::fprintf(stderr, "FAILED (line %d): %s\n", line, what);
        std::exit(1);
    }
}
#define CHECK(cond) check((cond), #cond, __LINE__)

class CapturingLogger : public ILogger {
public:
    std::string last;
    void log(Severity severity, char const* msg) noexcept override {
        if (severity <= Severity::kWARNING) last = msg;
    }
};

class Finder : public ILoggerFinder {
public:
    CapturingLogger logger;
    ILogger* findLogger() override { return &logger; }
};

DynamicPluginTensorDesc tensor(std::vector<int64_t> dims, DataType type = DataType::kHALF) {
    DynamicPluginTensorDesc d{};
    d.desc.type = type;
    d.desc.format = TensorFormat::kLINEAR;
    d.desc.dims.nbDims = static_cast<int32_t>(dims.size());
    for (size_t i = 0; i < dims.size(); ++i) d.desc.dims.d[i] = dims[i];
    d.min = d.opt = d.max = d.desc.dims;
    return d;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) return 2;
    void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        std::fprintf(stderr, "dlopen: %s\n", dlerror());
        return 1;
    }
    using GetCreators = IPluginCreatorInterface* const* (*)(int32_t&);
    using SetFinder = void (*)(ILoggerFinder*);
    auto getCreators = reinterpret_cast<GetCreators>(dlsym(lib, "getCreators"));
    auto setLoggerFinder = reinterpret_cast<SetFinder>(dlsym(lib, "setLoggerFinder"));
    CHECK(getCreators && setLoggerFinder);
    CHECK(dlsym(lib, "attnx_na_forward") == nullptr);  // the kernels are linked in, not exported
    Finder finder;
    setLoggerFinder(&finder);

    int32_t count = 0;
    IPluginCreatorInterface* const* creators = getCreators(count);
    CHECK(count == 1);
    CHECK(std::strcmp(creators[0]->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") == 0);
    auto* creator = static_cast<IPluginCreatorV3One*>(creators[0]);
    CHECK(std::strcmp(creator->getPluginName(), "NeighborhoodAttention") == 0);
    CHECK(std::strcmp(creator->getPluginVersion(), "1") == 0);
    CHECK(std::strcmp(creator->getPluginNamespace(), "attn_export") == 0);
    CHECK(creator->getFieldNames()->nbFields == 5);

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

    auto* core = static_cast<IPluginV3OneCore*>(plugin->getCapabilityInterface(PluginCapabilityType::kCORE));
    auto* build = static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
    auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    CHECK(core && build && runtime);
    CHECK(std::strcmp(core->getPluginName(), "NeighborhoodAttention") == 0);
    CHECK(build->getNbOutputs() == 1);

    // Serialization: the runtime phase rebuilds an identical plugin from getFieldsToSerialize.
    PluginFieldCollection const* saved = runtime->getFieldsToSerialize();
    CHECK(saved && saved->nbFields == 5);
    IPluginV3* restored = creator->createPlugin("na0", saved, TensorRTPhase::kRUNTIME);
    CHECK(restored != nullptr);
    auto* restoredRuntime = static_cast<IPluginV3OneRuntime*>(restored->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
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

    IPluginV3* attached = runtime->attachToContext(nullptr);
    CHECK(attached != nullptr);
    delete attached;
    delete restored;
    delete plugin;
    std::printf("%d checks passed\n", g_checks);
    return 0;
}
