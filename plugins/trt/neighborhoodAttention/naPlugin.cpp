#include "naPlugin.h"

#include "attnx_kernels.h"
#include "pluginLogger.h"

using namespace nvinfer1;

namespace attnx {
namespace plugin {
namespace {

using neighborhoodAttention::kDecl;

char const* const kName = kDecl.name;

std::string const& dynamicDimsNote() {
    static std::string const note = " (checked on the optimization profile's minimum and maximum shapes)";
    return note;
}

}  // namespace

NeighborhoodAttentionPlugin::NeighborhoodAttentionPlugin(NAConfig const& config) : mConfig(config) {}

IPluginCapability* NeighborhoodAttentionPlugin::getCapabilityInterface(PluginCapabilityType type) noexcept {
    return guarded(kName, "getCapabilityInterface", nullptr, [&]() -> IPluginCapability* {
        switch (type) {
            case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
            case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
            case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
        }
        return nullptr;
    });
}

IPluginV3* NeighborhoodAttentionPlugin::clone() noexcept {
    return guarded(kName, "clone", nullptr, [&]() -> IPluginV3* {
        auto* copy = new NeighborhoodAttentionPlugin(mConfig);
        copy->mNbInputs = mNbInputs;
        return copy;
    });
}

char const* NeighborhoodAttentionPlugin::getPluginName() const noexcept {
    return kDecl.name;
}

char const* NeighborhoodAttentionPlugin::getPluginVersion() const noexcept {
    return kDecl.version;
}

char const* NeighborhoodAttentionPlugin::getPluginNamespace() const noexcept {
    return kPluginNamespace;
}

int32_t NeighborhoodAttentionPlugin::getNbOutputs() const noexcept {
    return 1;
}

int32_t NeighborhoodAttentionPlugin::configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs,
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
        mNbInputs = nbInputs;
        return 0;
    });
}

int32_t NeighborhoodAttentionPlugin::getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs,
                                                        DataType const* inputTypes, int32_t nbInputs) const noexcept {
    return guarded(kName, "getOutputDataTypes", -1, [&]() -> int32_t {
        if (nbOutputs != 1 || nbInputs < 1) return -1;
        outputTypes[0] = inputTypes[0];
        return 0;
    });
}

int32_t NeighborhoodAttentionPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs,
                                                     DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/,
                                                     DimsExprs* outputs, int32_t nbOutputs,
                                                     IExprBuilder& /*exprBuilder*/) noexcept {
    return guarded(kName, "getOutputShapes", -1, [&]() -> int32_t {
        if (nbOutputs != 1 || (nbInputs != 3 && nbInputs != 4) || inputs[0].nbDims != mConfig.rank + 3) {
            logError(std::string(kName) + ": expected q, k, v[, rpb] of rank " + std::to_string(mConfig.rank + 3) +
                     " and one output");
            return -1;
        }
        outputs[0] = inputs[0];  // out has q's shape, symbolically (dynamic dims stay expressions)
        return 0;
    });
}

bool NeighborhoodAttentionPlugin::supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* inOut,
                                                            int32_t nbInputs, int32_t nbOutputs) noexcept {
    return guarded(kName, "supportsFormatCombination", false, [&] {
        // Only inOut[0..pos] are defined when TensorRT asks about pos: never read past it.
        if (pos < 0 || pos >= nbInputs + nbOutputs) return false;
        std::vector<TensorInfo> const upToPos = infos(inOut, pos + 1, &DynamicPluginTensorDesc::max);
        return supportsFormat(pos, upToPos.data(), nbInputs, nbOutputs);
    });
}

size_t NeighborhoodAttentionPlugin::getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                                                     DynamicPluginTensorDesc const* /*outputs*/,
                                                     int32_t /*nbOutputs*/) const noexcept {
    return guarded(kName, "getWorkspaceSize", size_t{0}, [&] {
        TensorInfo const q = toInfo(inputs[0].desc, inputs[0].max);
        attnx_na_params const params = kernelParams(mConfig, q, nbInputs == 4);
        return attnx_na_workspace_size(&params);
    });
}

int32_t NeighborhoodAttentionPlugin::onShapeChange(PluginTensorDesc const* in, int32_t nbInputs,
                                                   PluginTensorDesc const* /*out*/, int32_t /*nbOutputs*/) noexcept {
    return guarded(kName, "onShapeChange", -1, [&]() -> int32_t {
        std::vector<TensorInfo> inputs;
        for (int32_t i = 0; i < nbInputs; ++i) inputs.push_back(toInfo(in[i], in[i].dims));
        std::string const problem = checkInputs(mConfig, inputs.data(), nbInputs);
        if (!problem.empty()) {
            logError(std::string(kName) + ": " + problem);
            return -1;
        }
        attnx_na_params const params = kernelParams(mConfig, inputs[0], nbInputs == 4);
        if (attnx_na_validate(&params) != ATTNX_OK) {
            logError(std::string(kName) + ": " + attnx_last_error());
            return -1;
        }
        mNbInputs = nbInputs;
        return 0;
    });
}

int32_t NeighborhoodAttentionPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
                                             void const* const* inputs, void* const* outputs, void* workspace,
                                             cudaStream_t stream) noexcept {
    return guarded(kName, "enqueue", -1, [&]() -> int32_t {
        // The shapes of this call, from its descriptors (as TensorRT's own V3 plugins do): nothing cached.
        if (mNbInputs != 3 && mNbInputs != 4) {
            logError(std::string(kName) + "::enqueue: called before configurePlugin/onShapeChange");
            return -1;
        }
        TensorInfo current[4];
        for (int32_t i = 0; i < mNbInputs; ++i) current[i] = toInfo(inputDesc[i], inputDesc[i].dims);
        std::string const problem = checkInputs(mConfig, current, mNbInputs);
        if (!problem.empty()) {
            logError(std::string(kName) + "::enqueue: " + problem);
            return -1;
        }
        attnx_na_params const params = kernelParams(mConfig, current[0], mNbInputs == 4);
        void const* rpb = params.has_rpb ? inputs[3] : nullptr;
        size_t const workspaceSize = attnx_na_workspace_size(&params);
        attnx_status const status =
            attnx_na_forward(&params, inputs[0], inputs[1], inputs[2], rpb, outputs[0], workspace, workspaceSize, stream);
        if (status != ATTNX_OK) {
            logError(std::string(kName) + "::enqueue: " + attnx_last_error());
            return -1;
        }
        return 0;
    });
}

IPluginV3* NeighborhoodAttentionPlugin::attachToContext(IPluginResourceContext* /*context*/) noexcept {
    return guarded(kName, "attachToContext", nullptr, [&] { return clone(); });
}

PluginFieldCollection const* NeighborhoodAttentionPlugin::getFieldsToSerialize() noexcept {
    return guarded(kName, "getFieldsToSerialize", nullptr, [&] { return mSerialized.set(serializeFields(mConfig)); });
}

NeighborhoodAttentionCreator::NeighborhoodAttentionCreator() : DeclaredCreator(kDecl) {}

IPluginV3* NeighborhoodAttentionCreator::createPlugin(char const* name, PluginFieldCollection const* fc,
                                                      TensorRTPhase /*phase*/) noexcept {
    return guarded(kName, "createPlugin", nullptr, [&]() -> IPluginV3* {
        NAConfig config;
        std::string const problem = parseFields(fieldViews(fc), config);
        if (!problem.empty()) {
            logError(std::string(kName) + " node '" + (name ? name : "") + "': " + problem);
            return nullptr;
        }
        return new NeighborhoodAttentionPlugin(config);
    });
}

}  // namespace plugin
}  // namespace attnx
