#include "pluginRegistration.h"

#include <dlfcn.h>

#include <mutex>
#include <string>
#include <vector>

#include "pluginLogger.h"

namespace attnx {
namespace plugin {
namespace {

// What registerStatically registered, and where. A function-local static: the static initializer of
// another translation unit may call in before this one's globals are constructed.
struct StaticState {
    std::mutex mutex;
    nvinfer1::IPluginRegistry* registry = nullptr;
    std::vector<nvinfer1::IPluginCreatorInterface*> registered;
};

StaticState& state() {
    static StaticState instance;
    return instance;
}

}  // namespace

// Looked up at load time instead of linked: the library has no link dependency on libnvinfer and
// registers only where TensorRT is already in the process. libnvinfer may have been loaded without
// RTLD_GLOBAL (Python's `import tensorrt`), so also ask the loader for it by name, without loading it.
nvinfer1::IPluginRegistry* processRegistry() noexcept {
    using GetRegistry = nvinfer1::IPluginRegistry* (*)();
    void* symbol = dlsym(RTLD_DEFAULT, "getPluginRegistry");
    for (char const* name : {"libnvinfer.so.11", "libnvinfer.so.10", "libnvinfer.so"}) {
        if (symbol) break;
        if (void* handle = dlopen(name, RTLD_NOW | RTLD_NOLOAD)) {
            symbol = dlsym(handle, "getPluginRegistry");
            dlclose(handle);  // drops only the reference RTLD_NOLOAD added
        }
    }
    return symbol ? reinterpret_cast<GetRegistry>(symbol)() : nullptr;
}

void registerStatically(nvinfer1::IPluginCreatorInterface* const* creators, int32_t count,
                        char const* pluginNamespace) noexcept {
    try {
        StaticState& s = state();
        std::lock_guard<std::mutex> lock(s.mutex);
        nvinfer1::IPluginRegistry* registry = processRegistry();
        if (!registry) return;
        for (int32_t i = 0; i < count; ++i) {
            if (registry->registerCreator(*creators[i], pluginNamespace)) {
                s.registry = registry;
                s.registered.push_back(creators[i]);
            } else {
                logWarning(std::string("a creator of namespace '") + pluginNamespace +
                           "' was not registered statically (TensorRT's registry refused it: already registered?)");
            }
        }
    } catch (...) {
        // A static initializer must not throw; the loader path (getCreators) still works.
    }
}

void handOverToLoader() noexcept {
    try {
        StaticState& s = state();
        std::lock_guard<std::mutex> lock(s.mutex);
        for (nvinfer1::IPluginCreatorInterface* creator : s.registered) s.registry->deregisterCreator(*creator);
        s.registered.clear();
        s.registry = nullptr;
    } catch (...) {
        // Nothing to report through: the loader's own registration will say what failed.
    }
}

}  // namespace plugin
}  // namespace attnx
