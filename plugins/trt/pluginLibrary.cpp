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

// Looked up at load time instead of linked: the library has no link dependency on libnvinfer and
// registers only where TensorRT is already in the process. libnvinfer may have been loaded without
// RTLD_GLOBAL (Python's `import tensorrt`), so also ask the loader for it by name, without loading it.
nvinfer1::IPluginRegistry* processRegistry() {
    using GetRegistry = nvinfer1::IPluginRegistry* (*)();
    void* symbol = dlsym(RTLD_DEFAULT, "getPluginRegistry");
    for (char const* name : {"libnvinfer.so.10", "libnvinfer.so.11", "libnvinfer.so"}) {
        if (symbol) break;
        if (void* handle = dlopen(name, RTLD_NOW | RTLD_NOLOAD)) {
            symbol = dlsym(handle, "getPluginRegistry");
            dlclose(handle);  // drops only the reference RTLD_NOLOAD added
        }
    }
    return symbol ? reinterpret_cast<GetRegistry>(symbol)() : nullptr;
}

struct StaticRegistration {
    StaticRegistration() {
        nvinfer1::IPluginRegistry* registry = processRegistry();
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
