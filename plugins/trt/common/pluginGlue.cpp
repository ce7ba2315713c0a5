#include "pluginGlue.h"

#include "pluginLogger.h"

using namespace nvinfer1;

namespace attnx {
namespace plugin {

FieldType toFieldType(PluginFieldType type) {
    switch (type) {
        case PluginFieldType::kINT32: return FieldType::kInt32;
        case PluginFieldType::kINT64: return FieldType::kInt64;
        case PluginFieldType::kFLOAT32: return FieldType::kFloat32;
        case PluginFieldType::kFLOAT64: return FieldType::kFloat64;
        case PluginFieldType::kCHAR: return FieldType::kChar;
        default: return FieldType::kOther;
    }
}

PluginFieldType toPluginFieldType(FieldType type) {
    switch (type) {
        case FieldType::kInt32: return PluginFieldType::kINT32;
        case FieldType::kInt64: return PluginFieldType::kINT64;
        case FieldType::kFloat32: return PluginFieldType::kFLOAT32;
        case FieldType::kFloat64: return PluginFieldType::kFLOAT64;
        case FieldType::kChar: return PluginFieldType::kCHAR;
        default: return PluginFieldType::kUNKNOWN;
    }
}

DType toDType(DataType type) {
    switch (type) {
        case DataType::kFLOAT: return DType::kFloat32;
        case DataType::kHALF: return DType::kFloat16;
        case DataType::kBF16: return DType::kBFloat16;
        case DataType::kINT32: return DType::kInt32;
        default: return DType::kOther;
    }
}

TensorInfo toInfo(PluginTensorDesc const& desc, Dims const& dims) {
    TensorInfo info{toDType(desc.type), desc.format == TensorFormat::kLINEAR, dims.nbDims, {}};
    for (int32_t i = 0; i < dims.nbDims && i < 8; ++i) info.dims[i] = dims.d[i];
    return info;
}

std::vector<TensorInfo> infos(DynamicPluginTensorDesc const* desc, int32_t count, Dims DynamicPluginTensorDesc::*which) {
    std::vector<TensorInfo> result;
    for (int32_t i = 0; i < count; ++i) result.push_back(toInfo(desc[i].desc, desc[i].*which));
    return result;
}

std::vector<FieldView> fieldViews(PluginFieldCollection const* fc) {
    std::vector<FieldView> fields;
    for (int32_t i = 0; fc && i < fc->nbFields; ++i) {
        PluginField const& f = fc->fields[i];
        fields.push_back({f.name ? f.name : "", toFieldType(f.type), f.data, f.length});
    }
    return fields;
}

int32_t reportFailure(char const* plugin, char const* where, char const* what) noexcept {
    try {
        logError(std::string(plugin) + "::" + where + ": " + what);
    } catch (...) {
        // Out of memory while reporting: the -1 still tells TensorRT that the call failed.
    }
    return -1;
}

PluginFieldCollection const* SerializedFields::set(std::vector<FieldView> const& fields) {
    mFields.clear();
    for (FieldView const& f : fields) mFields.emplace_back(f.name.data(), f.data, toPluginFieldType(f.type), f.length);
    mCollection.nbFields = static_cast<int32_t>(mFields.size());
    mCollection.fields = mFields.data();
    return &mCollection;
}

DeclaredCreator::DeclaredCreator(PluginDecl const& decl) : mDecl(decl) {
    for (int32_t i = 0; i < decl.nbFields; ++i) {
        FieldSpec const& spec = decl.fields[i];
        mFieldNames.emplace_back(spec.name, nullptr, toPluginFieldType(spec.type), spec.count == FieldCount::kOne ? 1 : 0);
    }
    mFieldCollection.nbFields = static_cast<int32_t>(mFieldNames.size());
    mFieldCollection.fields = mFieldNames.data();
}

}  // namespace plugin
}  // namespace attnx
