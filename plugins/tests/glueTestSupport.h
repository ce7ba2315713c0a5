// Shared by the glue tests (CPU programs with the real TensorRT headers but no TensorRT runtime that
// dlopen libattnx_trt_plugins.so): a capturing logger, tensor descriptors, creator lookup, the plugin's
// capability interfaces; the checks are testHarness.h's.
#pragma once

#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "NvInferRuntime.h"
#include "testHarness.h"

namespace gluetest {

class CapturingLogger : public nvinfer1::ILogger {
public:
    std::string last;
    void log(Severity severity, char const* msg) noexcept override {
        if (severity <= Severity::kWARNING) last = msg;
    }
};

class Finder : public nvinfer1::ILoggerFinder {
public:
    CapturingLogger logger;
    nvinfer1::ILogger* findLogger() override { return &logger; }
};

inline nvinfer1::DynamicPluginTensorDesc tensor(std::vector<int64_t> dims,
                                                nvinfer1::DataType type = nvinfer1::DataType::kHALF) {
    nvinfer1::DynamicPluginTensorDesc d{};
    d.desc.type = type;
    d.desc.format = nvinfer1::TensorFormat::kLINEAR;
    d.desc.dims.nbDims = static_cast<int32_t>(dims.size());
    for (size_t i = 0; i < dims.size(); ++i) d.desc.dims.d[i] = dims[i];
    d.min = d.opt = d.max = d.desc.dims;
    return d;
}

using GetCreators = nvinfer1::IPluginCreatorInterface* const* (*)(int32_t&);
using SetFinder = void (*)(nvinfer1::ILoggerFinder*);

inline void* openLibrary(char const* path) {
    void* lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        std::fprintf(stderr, "dlopen: %s\n", dlerror());
        std::exit(1);
    }
    return lib;
}

// The library at `path`, its log going to `finder` (through setLoggerFinder, as TensorRT's loadLibrary sets it).
inline void* openLibraryLoggingTo(char const* path, Finder& finder) {
    void* lib = openLibrary(path);
    auto setLoggerFinder = reinterpret_cast<SetFinder>(dlsym(lib, "setLoggerFinder"));
    CHECK(setLoggerFinder != nullptr);
    setLoggerFinder(&finder);
    return lib;
}

// The library's creator of plugin `name` (through getCreators, as TensorRT's loadLibrary finds it).
inline nvinfer1::IPluginCreatorV3One* creatorNamed(void* lib, char const* name) {
    auto getCreators = reinterpret_cast<GetCreators>(dlsym(lib, "getCreators"));
    int32_t count = 0;
    nvinfer1::IPluginCreatorInterface* const* list = getCreators ? getCreators(count) : nullptr;
    for (int32_t i = 0; i < count; ++i) {
        if (std::strcmp(list[i]->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") != 0) continue;
        auto* creator = static_cast<nvinfer1::IPluginCreatorV3One*>(list[i]);
        if (std::strcmp(creator->getPluginName(), name) == 0) return creator;
    }
    std::fprintf(stderr, "no IPluginCreatorV3One named %s among the library's %d creators\n", name, count);
    std::exit(1);
}

// A plugin's IPluginV3One capability interfaces.
inline nvinfer1::IPluginV3OneCore* coreOf(nvinfer1::IPluginV3* plugin) {
    return static_cast<nvinfer1::IPluginV3OneCore*>(
        plugin->getCapabilityInterface(nvinfer1::PluginCapabilityType::kCORE));
}
inline nvinfer1::IPluginV3OneBuild* buildOf(nvinfer1::IPluginV3* plugin) {
    return static_cast<nvinfer1::IPluginV3OneBuild*>(
        plugin->getCapabilityInterface(nvinfer1::PluginCapabilityType::kBUILD));
}
inline nvinfer1::IPluginV3OneRuntime* runtimeOf(nvinfer1::IPluginV3* plugin) {
    return static_cast<nvinfer1::IPluginV3OneRuntime*>(
        plugin->getCapabilityInterface(nvinfer1::PluginCapabilityType::kRUNTIME));
}

}  // namespace gluetest
