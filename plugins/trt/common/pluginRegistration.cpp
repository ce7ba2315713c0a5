#include "pluginRegistration.h"

#include <dlfcn.h>

#include <mutex>
#include <string>
#include <vector>

#include "NvInferVersion.h"
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

#define ATTNX_STRINGIFY_(x) #x
#define ATTNX_STRINGIFY(x) ATTNX_STRINGIFY_(x)

// Looked up at load time instead of linked: the library has no link dependency on libnvinfer and
// registers only where TensorRT is already in the process. libnvinfer may have been loaded without
// RTLD_GLOBAL (Python's `import tensorrt`), so also ask the loader for it by name, without loading it;
// only for the TensorRT major these headers describe, and only after getInferLibVersion() (looked up
// the same way) confirms that major: another major's registry has other vtable slots.
nvinfer1::IPluginRegistry* processRegistry() noexcept {
    using GetRegistry = nvinfer1::IPluginRegistry* (*)();
    using GetVersion = int32_t (*)();
    void* registry = dlsym(RTLD_DEFAULT, "getPluginRegistry");
    void* version = registry ? dlsym(RTLD_DEFAULT, "getInferLibVersion") : nullptr;
    if (!registry) {
        if (void* handle = dlopen("libnvinfer.so." ATTNX_STRINGIFY(NV_TENSORRT_MAJOR), RTLD_NOW | RTLD_NOLOAD)) {
            registry = dlsym(handle, "getPluginRegistry");
            version = dlsym(handle, "getInferLibVersion");
            dlclose(handle);  // drops only the reference RTLD_NOLOAD added
        }
    }
    if (!registry) return nullptr;
    int32_t const found = version ? reinterpret_cast<GetVersion>(version)() : -1;
    if (found / 10000 != NV_TENSORRT_MAJOR) {
        try {
            logWarning("not registering statically: the process's TensorRT is " +
                       (found < 0 ? std::string("of unknown version (no getInferLibVersion)")
                                  : std::to_string(found / 10000) + "." + std::to_string(found / 100 % 100)) +
                       " but this library was compiled for TensorRT " + std::to_string(NV_TENSORRT_MAJOR) +
                       "; rebuild it against the TensorRT in use");
        } catch (...) {
            // Out of memory while reporting: still refuse the registry.
        }
        return nullptr;
    }
    return reinterpret_cast<GetRegistry>(registry)();
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
