// TensorRT-dependent helpers every plugin's glue shares: conversions between TensorRT's types and the
// TensorRT-free ones (pluginFields.h, tensorInfo.h), the creator's field list and the serialized
// fields built from a plugin's declaration, and `guarded`, which keeps exceptions out of TensorRT.
#pragma once

#include <exception>
#include <string>
#include <type_traits>
#include <vector>

#include "NvInferRuntime.h"
#include "pluginFields.h"
#include "tensorInfo.h"

namespace attnx {
namespace plugin {

FieldType toFieldType(nvinfer1::PluginFieldType type);
nvinfer1::PluginFieldType toPluginFieldType(FieldType type);
DType toDType(nvinfer1::DataType type);
TensorInfo toInfo(nvinfer1::PluginTensorDesc const& desc, nvinfer1::Dims const& dims);
// infos(desc, n, &DynamicPluginTensorDesc::min): the profile's min (or max, opt) shapes of n tensors.
std::vector<TensorInfo> infos(nvinfer1::DynamicPluginTensorDesc const* desc, int32_t count,
                              nvinfer1::Dims nvinfer1::DynamicPluginTensorDesc::*which);
// The fields of a createPlugin call (fc may be null: no fields).
std::vector<FieldView> fieldViews(nvinfer1::PluginFieldCollection const* fc);

// Logs "<plugin>::<where>: <what>" as an error and returns -1 (what a failing int32_t override returns).
int32_t reportFailure(char const* plugin, char const* where, char const* what) noexcept;

// The body of a noexcept override: returns body(), or reports the exception and returns onFailure.
// Catches everything (`...` too): no exception may cross into TensorRT. The result type is body's
// (onFailure converts to it, so nullptr works for pointer results).
template <typename Body, typename R = std::invoke_result_t<Body&>>
R guarded(char const* plugin, char const* where, std::common_type_t<R> onFailure, Body&& body) noexcept {
    try {
        return body();
    } catch (std::exception const& e) {
        reportFailure(plugin, where, e.what());
    } catch (...) {
        reportFailure(plugin, where, "unknown exception");
    }
    return onFailure;
}

// getFieldsToSerialize's storage: the fields stay valid until the next call (TensorRT copies them).
class SerializedFields {
public:
    nvinfer1::PluginFieldCollection const* set(std::vector<FieldView> const& fields);

private:
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mCollection{};
};

// A creator whose name, version, namespace and field list come from the plugin's declaration; the
// plugin's creator adds only createPlugin.
class DeclaredCreator : public nvinfer1::IPluginCreatorV3One {
public:
    explicit DeclaredCreator(PluginDecl const& decl);
    char const* getPluginName() const noexcept override { return mDecl.name; }
    char const* getPluginVersion() const noexcept override { return mDecl.version; }
    char const* getPluginNamespace() const noexcept override { return kPluginNamespace; }
    // The table's fields, typed, with length 1 for a single value and 0 for "one per axis".
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override { return &mFieldCollection; }

protected:
    PluginDecl const mDecl;

private:
    std::vector<nvinfer1::PluginField> mFieldNames;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

}  // namespace plugin
}  // namespace attnx
