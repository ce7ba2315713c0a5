// How a plugin library's creators reach TensorRT's plugin registry: one mechanism per loading path.
//
//   IPluginRegistry::loadLibrary (Python load_library, trtexec --dynamicPlugins): TensorRT dlopens the
//     library, calls getCreators and registers what it returns; deregisterLibrary removes them again.
//   dlopen without loadLibrary (ctypes.CDLL, polygraphy --plugins, trtexec --staticPlugins) or linking:
//     nothing calls getCreators, so a static initializer registers the creators itself.
//
// loadLibrary also runs the static initializer (it dlopens first). TensorRT 11 refuses the second,
// duplicate registration and loadLibrary returns null; so getCreators first retracts the static
// registration (handOverToLoader) and the loader's registration is the only one left.
#pragma once

#include <cstdint>

#include "NvInferRuntime.h"

namespace attnx {
namespace plugin {

// TensorRT's process-wide registry if libnvinfer of the TensorRT major these headers describe is already
// loaded (looked up, never linked or loaded); nullptr, with a warning, for another major.
nvinfer1::IPluginRegistry* processRegistry() noexcept;

// Static path: registers each creator under `pluginNamespace`; a no-op without TensorRT in the process.
void registerStatically(nvinfer1::IPluginCreatorInterface* const* creators, int32_t count,
                        char const* pluginNamespace) noexcept;

// loadLibrary path (call from getCreators): deregisters what registerStatically registered, so that the
// loader can register the same creators without a duplicate; afterwards the loader owns them.
void handOverToLoader() noexcept;

}  // namespace plugin
}  // namespace attnx
