// The plugin library's logger: TensorRT hands us an ILoggerFinder through setLoggerFinder; until it
// does (or if it returns no logger), messages go to stderr.
#pragma once

#include <string>

#include "NvInferRuntime.h"

namespace attnx {
namespace plugin {

void setFinder(nvinfer1::ILoggerFinder* finder) noexcept;
void logError(std::string const& message) noexcept;
void logWarning(std::string const& message) noexcept;

}  // namespace plugin
}  // namespace attnx
