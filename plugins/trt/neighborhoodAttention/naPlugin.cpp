#include "naPlugin.h"

#include <exception>

#include "attnx_kernels.h"
#include "pluginLogger.h"

using namespace nvinfer1;

namespace attnx {
namespace plugin {
namespace {

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

// Every noexcept override reports what went wrong and returns this instead of throwing.
int32_t reportFailure(char const* where, std::exception const* e) noexcept {
    try {
        logError(std::string(kPluginName) + "::" + where + ": " + (e ? e->what() : "unknown exception"));
    } catch (...) {
        // Out of memory while reporting: the -1 still tells TensorRT that the call failed.
    }
    return -1;
}

std::string const& dynamicDimsNote() {
    static std::string const note = " (checked on the optimization profile's minimum and maximum shapes)";
    return note;
}

}  // namespace

NeighborhoodAttentionPlugin::NeighborhoodAttentionPlugin(NAConfig const& config) : mConfig(config) {}

IPluginCapability* NeighborhoodAttentionPlugin::getCapabilityInterface(PluginCapabilityType type) noexcept {
    try {
        switch (type) {
            case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
            case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
            case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
        }
        return nullptr;
    } catch (std::exception const& e) {
        reportFailure("getCapabilityInterface", &e);
        return nullptr;
    }
}

IPluginV3* NeighborhoodAttentionPlugin::clone() noexcept {
    try {
        auto* copy = new NeighborhoodAttentionPlugin(mConfig);
        copy->mNbInputs = mNbInputs;
        return copy;
    } catch (std::exception const& e) {
        reportFailure("clone", &e);
        return nullptr;
    }
}

char const* NeighborhoodAttentionPlugin::getPluginName() const noexcept {
    return kPluginName;
}

char const* NeighborhoodAttentionPlugin::getPluginVersion() const noexcept {
    return kPluginVersion;
}

char const* NeighborhoodAttentionPlugin::getPluginNamespace() const noexcept {
    return kPluginNamespace;
}

int32_t NeighborhoodAttentionPlugin::getNbOutputs() const noexcept {
    return 1;
}

int32_t NeighborhoodAttentionPlugin::configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs,
                                                     DynamicPluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept {
    try {
        if (nbOutputs != 1) return reportFailure("configurePlugin", nullptr);
        // Reject a profile whose shapes the op cannot take (ONNX has no assert: the local function
        // would return NaN), at build time rather than at run time.
        for (auto which : {&DynamicPluginTensorDesc::min, &DynamicPluginTensorDesc::max}) {
            std::vector<TensorInfo> const inputs = infos(in, nbInputs, which);
            std::string const problem = checkInputs(mConfig, inputs.data(), nbInputs);
            if (!problem.empty()) {
                logError(std::string(kPluginName) + ": " + problem + dynamicDimsNote());
                return -1;
            }
        }
        mNbInputs = nbInputs;
        return 0;
    } catch (std::exception const& e) {
        return reportFailure("configurePlugin", &e);
    }
}

int32_t NeighborhoodAttentionPlugin::getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs,
                                                        DataType const* inputTypes, int32_t nbInputs) const noexcept {
    try {
        if (nbOutputs != 1 || nbInputs < 1) return -1;
        outputTypes[0] = inputTypes[0];
        return 0;
    } catch (std::exception const& e) {
        return reportFailure("getOutputDataTypes", &e);
    }
}

int32_t NeighborhoodAttentionPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs,
                                                     DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/,
                                                     DimsExprs* outputs, int32_t nbOutputs,
                                                     IExprBuilder& /*exprBuilder*/) noexcept {
    try {
        if (nbOutputs != 1 || (nbInputs != 3 && nbInputs != 4) || inputs[0].nbDims != mConfig.rank + 3) {
            logError(std::string(kPluginName) + ": expected q, k, v[, rpb] of rank " + std::to_string(mConfig.rank + 3) +
                     " and one output");
            return -1;
        }
        outputs[0] = inputs[0];  // out has q's shape, symbolically (dynamic dims stay expressions)
        return 0;
    } catch (std::exception const& e) {
        return reportFailure("getOutputShapes", &e);
    }
}

bool NeighborhoodAttentionPlugin::supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* inOut,
                                                            int32_t nbInputs, int32_t nbOutputs) noexcept {
    try {
        // Only inOut[0..pos] are defined when TensorRT asks about pos: never read past it.
        if (pos < 0 || pos >= nbInputs + nbOutputs) return false;
        std::vector<TensorInfo> const upToPos = infos(inOut, pos + 1, &DynamicPluginTensorDesc::max);
        return supportsFormat(pos, upToPos.data(), nbInputs, nbOutputs);
    } catch (std::exception const& e) {
        reportFailure("supportsFormatCombination", &e);
        return false;
    }
}

size_t NeighborhoodAttentionPlugin::getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                                                     DynamicPluginTensorDesc const* /*outputs*/,
                                                     int32_t /*nbOutputs*/) const noexcept {
    try {
        TensorInfo const q = toInfo(inputs[0].desc, inputs[0].max);
        attnx_na_params const params = kernelParams(mConfig, q, nbInputs == 4);
        return attnx_na_workspace_size(&params);
    } catch (std::exception const& e) {
        reportFailure("getWorkspaceSize", &e);
        return 0;
    }
}

int32_t NeighborhoodAttentionPlugin::onShapeChange(PluginTensorDesc const* in, int32_t nbInputs,
                                                   PluginTensorDesc const* /*out*/, int32_t /*nbOutputs*/) noexcept {
    try {
        std::vector<TensorInfo> inputs;
        for (int32_t i = 0; i < nbInputs; ++i) inputs.push_back(toInfo(in[i], in[i].dims));
        std::string const problem = checkInputs(mConfig, inputs.data(), nbInputs);
        if (!problem.empty()) {
            logError(std::string(kPluginName) + ": " + problem);
            return -1;
        }
        attnx_na_params const params = kernelParams(mConfig, inputs[0], nbInputs == 4);
        if (attnx_na_validate(&params) != ATTNX_OK) {
            logError(std::string(kPluginName) + ": " + attnx_last_error());
            return -1;
        }
        mNbInputs = nbInputs;
        return 0;
    } catch (std::exception const& e) {
        return reportFailure("onShapeChange", &e);
    }
}

int32_t NeighborhoodAttentionPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
                                             void const* const* inputs, void* const* outputs, void* workspace,
                                             cudaStream_t stream) noexcept {
    try {
        // The shapes of this call, from its descriptors (as TensorRT's own V3 plugins do): nothing cached.
        if (mNbInputs != 3 && mNbInputs != 4) {
            logError(std::string(kPluginName) + "::enqueue: called before configurePlugin/onShapeChange");
            return -1;
        }
        TensorInfo current[4];
        for (int32_t i = 0; i < mNbInputs; ++i) current[i] = toInfo(inputDesc[i], inputDesc[i].dims);
        std::string const problem = checkInputs(mConfig, current, mNbInputs);
        if (!problem.empty()) {
            logError(std::string(kPluginName) + "::enqueue: " + problem);
            return -1;
        }
        attnx_na_params const params = kernelParams(mConfig, current[0], mNbInputs == 4);
        void const* rpb = params.has_rpb ? inputs[3] : nullptr;
        size_t const workspaceSize = attnx_na_workspace_size(&params);
        attnx_status const status =
            attnx_na_forward(&params, inputs[0], inputs[1], inputs[2], rpb, outputs[0], workspace, workspaceSize, stream);
        if (status != ATTNX_OK) {
            logError(std::string(kPluginName) + "::enqueue: " + attnx_last_error());
            return -1;
        }
        return 0;
    } catch (std::exception const& e) {
        return reportFailure("enqueue", &e);
    }
}

IPluginV3* NeighborhoodAttentionPlugin::attachToContext(IPluginResourceContext* /*context*/) noexcept {
    try {
        return clone();
    } catch (std::exception const& e) {
        reportFailure("attachToContext", &e);
        return nullptr;
    }
}

PluginFieldCollection const* NeighborhoodAttentionPlugin::getFieldsToSerialize() noexcept {
    try {
        mSerialized.clear();
        for (FieldView const& f : serializeFields(mConfig))
            mSerialized.emplace_back(f.name.data(), f.data, toPluginFieldType(f.type), f.length);
        mSerializedCollection.nbFields = static_cast<int32_t>(mSerialized.size());
        mSerializedCollection.fields = mSerialized.data();
        return &mSerializedCollection;
    } catch (std::exception const& e) {
        reportFailure("getFieldsToSerialize", &e);
        return nullptr;
    }
}

NeighborhoodAttentionCreator::NeighborhoodAttentionCreator() {
    mFieldNames = {
        PluginField("kernel_size", nullptr, PluginFieldType::kINT32, 0),
        PluginField("stride", nullptr, PluginFieldType::kINT32, 0),
        PluginField("dilation", nullptr, PluginFieldType::kINT32, 0),
        PluginField("is_causal", nullptr, PluginFieldType::kINT32, 0),
        PluginField("scale", nullptr, PluginFieldType::kFLOAT32, 1),
    };
    mFieldCollection.nbFields = static_cast<int32_t>(mFieldNames.size());
    mFieldCollection.fields = mFieldNames.data();
}

char const* NeighborhoodAttentionCreator::getPluginName() const noexcept {
    return kPluginName;
}

char const* NeighborhoodAttentionCreator::getPluginVersion() const noexcept {
    return kPluginVersion;
}

char const* NeighborhoodAttentionCreator::getPluginNamespace() const noexcept {
    return kPluginNamespace;
}

PluginFieldCollection const* NeighborhoodAttentionCreator::getFieldNames() noexcept {
    return &mFieldCollection;
}

IPluginV3* NeighborhoodAttentionCreator::createPlugin(char const* name, PluginFieldCollection const* fc,
                                                      TensorRTPhase /*phase*/) noexcept {
    try {
        std::vector<FieldView> fields;
        for (int32_t i = 0; fc && i < fc->nbFields; ++i) {
            PluginField const& f = fc->fields[i];
            fields.push_back({f.name ? f.name : "", toFieldType(f.type), f.data, f.length});
        }
        NAConfig config;
        std::string const problem = parseFields(fields, config);
        if (!problem.empty()) {
            logError(std::string(kPluginName) + " node '" + (name ? name : "") + "': " + problem);
            return nullptr;
        }
        return new NeighborhoodAttentionPlugin(config);
    } catch (std::exception const& e) {
        reportFailure("createPlugin", &e);
        return nullptr;
    }
}

}  // namespace plugin
}  // namespace attnx
