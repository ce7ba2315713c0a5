#include "paroPlugin.h"

#include "attnx_kernels.h"
#include "pluginLogger.h"

using namespace nvinfer1;

namespace attnx {
namespace plugin {
namespace {

using paroAttention::kDecl;
using namespace paroAttention;  // the Input indices

char const* const kName = kDecl.name;

std::string const& dynamicDimsNote() {
    static std::string const note = " (checked on the optimization profile's minimum and maximum shapes)";
    return note;
}

}  // namespace

ParoAttentionPlugin::ParoAttentionPlugin(ParoConfig const& config) : mConfig(config) {}

IPluginCapability* ParoAttentionPlugin::getCapabilityInterface(PluginCapabilityType type) noexcept {
    return guarded(kName, "getCapabilityInterface", nullptr, [&]() -> IPluginCapability* {
        switch (type) {
            case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
            case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
            case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
        }
        return nullptr;
    });
}

IPluginV3* ParoAttentionPlugin::clone() noexcept {
    return guarded(kName, "clone", nullptr, [&]() -> IPluginV3* {
        return new ParoAttentionPlugin(mConfig);
    });
}

char const* ParoAttentionPlugin::getPluginName() const noexcept {
    return kDecl.name;
}

char const* ParoAttentionPlugin::getPluginVersion() const noexcept {
    return kDecl.version;
}

char const* ParoAttentionPlugin::getPluginNamespace() const noexcept {
    return kPluginNamespace;
}

int32_t ParoAttentionPlugin::getNbOutputs() const noexcept {
    return 1;
}

int32_t ParoAttentionPlugin::configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs,
                                                     DynamicPluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept {
    return guarded(kName, "configurePlugin", -1, [&]() -> int32_t {
        if (nbOutputs != 1) return reportFailure(kName, "configurePlugin", "expected one output");
        // Reject a profile whose shapes the op cannot take (ONNX has no assert: the local function
        // would return NaN), at build time rather than at run time.
        for (auto which : {&DynamicPluginTensorDesc::min, &DynamicPluginTensorDesc::max}) {
            std::vector<TensorInfo> const inputs = infos(in, nbInputs, which);
            std::string const problem = checkInputs(mConfig, inputs.data(), nbInputs);
            if (!problem.empty()) {
                logError(std::string(kName) + ": " + problem + dynamicDimsNote());
                return -1;
            }
        }
        return 0;
    });
}

int32_t ParoAttentionPlugin::getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs,
                                                        DataType const* inputTypes, int32_t nbInputs) const noexcept {
    return guarded(kName, "getOutputDataTypes", -1, [&]() -> int32_t {
        if (nbOutputs != 1 || nbInputs < 1) return -1;
        outputTypes[0] = inputTypes[0];
        return 0;
    });
}

int32_t ParoAttentionPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs,
                                                     DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/,
                                                     DimsExprs* outputs, int32_t nbOutputs,
                                                     IExprBuilder& /*exprBuilder*/) noexcept {
    return guarded(kName, "getOutputShapes", -1, [&]() -> int32_t {
        if (nbOutputs != 1 || nbInputs != kNbInputs || inputs[0].nbDims != 4) {
            logError(std::string(kName) + ": expected q, k, v, perm_idx, kv_count, kv_index with q of rank 4 and one output");
            return -1;
        }
        outputs[0] = inputs[0];  // out has q's shape, symbolically (dynamic dims stay expressions)
        return 0;
    });
}

bool ParoAttentionPlugin::supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* inOut,
                                                            int32_t nbInputs, int32_t nbOutputs) noexcept {
    return guarded(kName, "supportsFormatCombination", false, [&] {
        // Only inOut[0..pos] are defined when TensorRT asks about pos: never read past it.
        if (pos < 0 || pos >= nbInputs + nbOutputs) return false;
        std::vector<TensorInfo> const upToPos = infos(inOut, pos + 1, &DynamicPluginTensorDesc::max);
        return supportsFormat(pos, upToPos.data(), nbInputs, nbOutputs);
    });
}

size_t ParoAttentionPlugin::getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                                                     DynamicPluginTensorDesc const* /*outputs*/,
                                                     int32_t /*nbOutputs*/) const noexcept {
    return guarded(kName, "getWorkspaceSize", size_t{0}, [&] {
        if (nbInputs != kNbInputs) return size_t{0};
        std::vector<TensorInfo> const largest = infos(inputs, nbInputs, &DynamicPluginTensorDesc::max);
        attnx_paro_params const params = kernelParams(mConfig, largest.data());
        return attnx_paro_workspace_size(&params);
    });
}

int32_t ParoAttentionPlugin::onShapeChange(PluginTensorDesc const* in, int32_t nbInputs,
                                                   PluginTensorDesc const* /*out*/, int32_t /*nbOutputs*/) noexcept {
    return guarded(kName, "onShapeChange", -1, [&]() -> int32_t {
        std::vector<TensorInfo> inputs;
        for (int32_t i = 0; i < nbInputs; ++i) inputs.push_back(toInfo(in[i], in[i].dims));
        std::string const problem = checkInputs(mConfig, inputs.data(), nbInputs);
        if (!problem.empty()) {
            logError(std::string(kName) + ": " + problem);
            return -1;
        }
        attnx_paro_params const params = kernelParams(mConfig, inputs.data());
        if (attnx_paro_validate(&params) != ATTNX_OK) {
            logError(std::string(kName) + ": " + attnx_last_error());
            return -1;
        }
        return 0;
    });
}

int32_t ParoAttentionPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
                                             void const* const* inputs, void* const* outputs, void* workspace,
                                             cudaStream_t stream) noexcept {
    return guarded(kName, "enqueue", -1, [&]() -> int32_t {
        // The shapes of this call, from its descriptors (as TensorRT's own V3 plugins do): nothing cached.
        TensorInfo current[kNbInputs];
        for (int32_t i = 0; i < kNbInputs; ++i) current[i] = toInfo(inputDesc[i], inputDesc[i].dims);
        std::string const problem = checkInputs(mConfig, current, kNbInputs);
        if (!problem.empty()) {
            logError(std::string(kName) + "::enqueue: " + problem);
            return -1;
        }
        attnx_paro_params const params = kernelParams(mConfig, current);
        attnx_status const status = attnx_paro_forward(&params, inputs[kQ], inputs[kK], inputs[kV],
                                                       static_cast<int32_t const*>(inputs[kPerm]),
                                                       static_cast<int32_t const*>(inputs[kCount]),
                                                       static_cast<int32_t const*>(inputs[kIndex]), outputs[0], workspace,
                                                       attnx_paro_workspace_size(&params), stream);
        if (status != ATTNX_OK) {
            logError(std::string(kName) + "::enqueue: " + attnx_last_error());
            return -1;
        }
        return 0;
    });
}

IPluginV3* ParoAttentionPlugin::attachToContext(IPluginResourceContext* /*context*/) noexcept {
    return guarded(kName, "attachToContext", nullptr, [&] { return clone(); });
}

PluginFieldCollection const* ParoAttentionPlugin::getFieldsToSerialize() noexcept {
    return guarded(kName, "getFieldsToSerialize", nullptr, [&] { return mSerialized.set(serializeFields(mConfig)); });
}

ParoAttentionCreator::ParoAttentionCreator() : DeclaredCreator(kDecl) {}

IPluginV3* ParoAttentionCreator::createPlugin(char const* name, PluginFieldCollection const* fc,
                                                      TensorRTPhase /*phase*/) noexcept {
    return guarded(kName, "createPlugin", nullptr, [&]() -> IPluginV3* {
        ParoConfig config;
        std::string const problem = parseFields(fieldViews(fc), config);
        if (!problem.empty()) {
            logError(std::string(kName) + " node '" + (name ? name : "") + "': " + problem);
            return nullptr;
        }
        return new ParoAttentionPlugin(config);
    });
}

}  // namespace plugin
}  // namespace attnx
