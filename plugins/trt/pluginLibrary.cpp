// Entry points of libattnx_trt_plugins.so: getCreators and setLoggerFinder (the only exports), plus a
// static initializer for loading without IPluginRegistry::loadLibrary. One registration mechanism per
// loading path: see common/pluginRegistration.h.
#include "NvInferRuntime.h"
#include "naPlugin.h"
#include "pluginLogger.h"
#include "pluginRegistration.h"

namespace {

nvinfer1::IPluginCreatorInterface* const* creators(int32_t& count) {
    static attnx::plugin::NeighborhoodAttentionCreator neighborhood;
    static nvinfer1::IPluginCreatorInterface* const list[] = {&neighborhood};
    count = static_cast<int32_t>(sizeof(list) / sizeof(list[0]));
    return list;
}

// dlopen without loadLibrary (ctypes.CDLL, polygraphy --plugins, trtexec --staticPlugins) or linking.
struct StaticRegistration {
    StaticRegistration() {
        int32_t count = 0;
        nvinfer1::IPluginCreatorInterface* const* list = creators(count);
        attnx::plugin::registerStatically(list, count, attnx::plugin::kPluginNamespace);
    }
};

StaticRegistration const g_static_registration;

}  // namespace

extern "C" {

__attribute__((visibility("default"))) void setLoggerFinder(nvinfer1::ILoggerFinder* finder) {
    attnx::plugin::setFinder(finder);
}

// IPluginRegistry::loadLibrary registers what this returns: retract the static registration first.
__attribute__((visibility("default"))) nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
    attnx::plugin::handOverToLoader();
    return creators(nbCreators);
}

}  // extern "C"
