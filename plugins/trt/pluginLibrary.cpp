// Entry points of libattnx_trt_plugins.so. TensorRT's plugin registry loads the library and calls
// getCreators (polygraphy --plugins, IPluginRegistry::loadLibrary); trtexec --staticPlugins only
// dlopens it, so a static initializer also registers the creators with the process's registry.
#include <dlfcn.h>

#include "NvInferRuntime.h"
#include "naPlugin.h"
#include "pluginLogger.h"

namespace {

nvinfer1::IPluginCreatorInterface* const* creators(int32_t& count) {
    static attnx::plugin::NeighborhoodAttentionCreator neighborhood;
    static nvinfer1::IPluginCreatorInterface* const list[] = {&neighborhood};
    count = static_cast<int32_t>(sizeof(list) / sizeof(list[0]));
    return list;
}

// Looked up at load time instead of linked: the library has no link dependency on libnvinfer, and
// registers only where a TensorRT registry is already in the process.
struct StaticRegistration {
    StaticRegistration() {
        using GetRegistry = nvinfer1::IPluginRegistry* (*)();
        auto get = reinterpret_cast<GetRegistry>(dlsym(RTLD_DEFAULT, "getPluginRegistry"));
        nvinfer1::IPluginRegistry* registry = get ? get() : nullptr;
        if (!registry) return;
        int32_t count = 0;
        nvinfer1::IPluginCreatorInterface* const* list = creators(count);
        for (int32_t i = 0; i < count; ++i) registry->registerCreator(*list[i], attnx::plugin::kPluginNamespace);
    }
};

StaticRegistration const g_static_registration;

}  // namespace

extern "C" {

__attribute__((visibility("default"))) void setLoggerFinder(nvinfer1::ILoggerFinder* finder) {
    attnx::plugin::setFinder(finder);
}

__attribute__((visibility("default"))) nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
    return creators(nbCreators);
}

}  // extern "C"
