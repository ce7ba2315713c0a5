// Entry points of libattnx_trt_plugins.so: getCreators and setLoggerFinder (the only exports), plus a
// static initializer for loading without IPluginRegistry::loadLibrary. One registration mechanism per
// loading path: see common/pluginRegistration.h.
//
// A new plugin adds its header below and one line to the creator list.
#include "NvInferRuntime.h"
#include "bsaPlugin.h"
#include "naPlugin.h"
#include "paroPlugin.h"
#include "pluginFields.h"
#include "pluginLogger.h"
#include "pluginRegistration.h"

namespace {

// One creator object per plugin for the library's lifetime (TensorRT keeps pointers to them).
template <typename Creator>
nvinfer1::IPluginCreatorInterface* creator() {
    static Creator instance;
    return &instance;
}

nvinfer1::IPluginCreatorInterface* const* creators(int32_t& count) {
    static nvinfer1::IPluginCreatorInterface* const list[] = {
        creator<attnx::plugin::NeighborhoodAttentionCreator>(),
        creator<attnx::plugin::BlockSparseAttentionCreator>(),
        creator<attnx::plugin::ParoAttentionCreator>(),
    };
    count = static_cast<int32_t>(sizeof(list) / sizeof(list[0]));
    return list;
}

// dlopen without loadLibrary (ctypes.CDLL, polygraphy --plugins, trtexec --staticPlugins) or linking.
struct StaticRegistration {
    StaticRegistration() {
        try {
            int32_t count = 0;
            nvinfer1::IPluginCreatorInterface* const* list = creators(count);
            attnx::plugin::registerStatically(list, count, attnx::plugin::kPluginNamespace);
        } catch (...) {
            // Building a creator failed (out of memory): a throwing static initializer would abort dlopen.
        }
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
    try {
        return creators(nbCreators);
    } catch (...) {
        attnx::plugin::logError("getCreators: a plugin creator could not be built");
        nbCreators = 0;
        return nullptr;
    }
}

}  // extern "C"
