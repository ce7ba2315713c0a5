#include "pluginLogger.h"

#include <atomic>
#include <cstdio>

namespace attnx {
namespace plugin {
namespace {

std::atomic<nvinfer1::ILoggerFinder*> g_finder{nullptr};

void emit(nvinfer1::ILogger::Severity severity, std::string const& message) noexcept {
    try {
        nvinfer1::ILoggerFinder* finder = g_finder.load();
        nvinfer1::ILogger* logger = finder ? finder->findLogger() : nullptr;
        std::string const text = "[attn_export] " + message;
        if (logger)
            logger->log(severity, text.c_str());
        else
            std::fprintf(stderr, "%s\n", text.c_str());
    } catch (...) {
        // Logging must never throw into TensorRT.
    }
}

}  // namespace

void setFinder(nvinfer1::ILoggerFinder* finder) noexcept { g_finder.store(finder); }
void logError(std::string const& message) noexcept { emit(nvinfer1::ILogger::Severity::kERROR, message); }
void logWarning(std::string const& message) noexcept { emit(nvinfer1::ILogger::Severity::kWARNING, message); }

}  // namespace plugin
}  // namespace attnx
