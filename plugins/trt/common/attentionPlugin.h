// The IPluginV3 glue every attention plugin shares: one class template over the op's description, so a
// plugin folder holds only what differs (its config, its logic and its kernel calls). Every noexcept
// override runs inside `guarded`.
//
// An op is a struct with:
//   using Config;                        the parsed fields (parseFields / serializeFields of the folder)
//   static PluginDecl const& decl();     name, version and fields (the folder's kDecl)
//   static constexpr int32_t kFixedInputs;   the input count when it never varies, else 0 (then enqueue
//                                        uses the count configurePlugin / onShapeChange saw)
//   static constexpr int32_t kMaxInputs;
//   static bool takesInputCount(int32_t n);
//   static int32_t qRank(Config const&);
//   static std::string expectedInputs(Config const&);   for getOutputShapes' error
//   static std::string parseFields(std::vector<FieldView> const&, Config&);
//   static std::vector<FieldView> serializeFields(Config const&);
//   static std::string checkInputs(Config const&, TensorInfo const*, int32_t n);
//   static bool supportsFormat(int32_t pos, TensorInfo const*, int32_t nbInputs, int32_t nbOutputs);
//   static size_t workspaceSize(Config const&, TensorInfo const* largest, int32_t n);
//   static attnx_status validate(Config const&, TensorInfo const*, int32_t n);
//   static attnx_status forward(Config const&, TensorInfo const*, int32_t n, void const* const* inputs,
//                               void* out, void* workspace, cudaStream_t stream);
#pragma once

#include <string>
#include <vector>

#include "NvInferRuntime.h"
#include "attnx_kernels.h"
#include "pluginGlue.h"
#include "pluginLogger.h"

namespace attnx {
namespace plugin {

inline std::string const& dynamicDimsNote() {
    static std::string const note = " (checked on the optimization profile's minimum and maximum shapes)";
    return note;
}

template <typename Op>
class AttentionPlugin : public nvinfer1::IPluginV3,
                        public nvinfer1::IPluginV3OneCore,
                        public nvinfer1::IPluginV3OneBuild,
                        public nvinfer1::IPluginV3OneRuntime {
public:
    using Config = typename Op::Config;

    explicit AttentionPlugin(Config const& config) : mConfig(config) {}
    ~AttentionPlugin() override = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override {
        return guarded(name(), "getCapabilityInterface", nullptr, [&]() -> nvinfer1::IPluginCapability* {
            switch (type) {
                case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
                case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
                case nvinfer1::PluginCapabilityType::kRUNTIME:
                    return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
            }
            return nullptr;
        });
    }

    nvinfer1::IPluginV3* clone() noexcept override {
        return guarded(name(), "clone", nullptr, [&]() -> nvinfer1::IPluginV3* {
            auto* copy = new AttentionPlugin(mConfig);
            copy->mNbInputs = mNbInputs;
            return copy;
        });
    }

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override { return mDecl.name; }
    char const* getPluginVersion() const noexcept override { return mDecl.version; }
    char const* getPluginNamespace() const noexcept override { return kPluginNamespace; }

    // IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override { return 1; }

    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
                            nvinfer1::DynamicPluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept override {
        return guarded(name(), "configurePlugin", -1, [&]() -> int32_t {
            if (nbOutputs != 1) return reportFailure(name(), "configurePlugin", "expected one output");
            // Reject a profile whose shapes the op cannot take (ONNX has no assert: the local function
            // would return NaN), at build time rather than at run time.
            for (auto which : {&nvinfer1::DynamicPluginTensorDesc::min, &nvinfer1::DynamicPluginTensorDesc::max}) {
                std::vector<TensorInfo> const inputs = infos(in, nbInputs, which);
                std::string const problem = Op::checkInputs(mConfig, inputs.data(), nbInputs);
                if (!problem.empty()) {
                    logError(std::string(name()) + ": " + problem + dynamicDimsNote());
                    return -1;
                }
            }
            mNbInputs = nbInputs;
            return 0;
        });
    }

    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs, nvinfer1::DataType const* inputTypes,
                               int32_t nbInputs) const noexcept override {
        return guarded(name(), "getOutputDataTypes", -1, [&]() -> int32_t {
            if (nbOutputs != 1 || nbInputs < 1) return -1;
            outputTypes[0] = inputTypes[0];
            return 0;
        });
    }

    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
                            nvinfer1::DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/,
                            nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
                            nvinfer1::IExprBuilder& /*exprBuilder*/) noexcept override {
        return guarded(name(), "getOutputShapes", -1, [&]() -> int32_t {
            if (nbOutputs != 1 || !Op::takesInputCount(nbInputs) || inputs[0].nbDims != Op::qRank(mConfig)) {
                logError(std::string(name()) + ": expected " + Op::expectedInputs(mConfig) + " and one output");
                return -1;
            }
            outputs[0] = inputs[0];  // out has q's shape, symbolically (dynamic dims stay expressions)
            return 0;
        });
    }

    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                   int32_t nbOutputs) noexcept override {
        return guarded(name(), "supportsFormatCombination", false, [&] {
            // Only inOut[0..pos] are defined when TensorRT asks about pos: never read past it.
            if (pos < 0 || pos >= nbInputs + nbOutputs) return false;
            std::vector<TensorInfo> const upToPos = infos(inOut, pos + 1, &nvinfer1::DynamicPluginTensorDesc::max);
            return Op::supportsFormat(pos, upToPos.data(), nbInputs, nbOutputs);
        });
    }

    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                            nvinfer1::DynamicPluginTensorDesc const* /*outputs*/,
                            int32_t /*nbOutputs*/) const noexcept override {
        return guarded(name(), "getWorkspaceSize", size_t{0}, [&] {
            std::vector<TensorInfo> const largest = infos(inputs, nbInputs, &nvinfer1::DynamicPluginTensorDesc::max);
            return Op::workspaceSize(mConfig, largest.data(), nbInputs);
        });
    }

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
                          nvinfer1::PluginTensorDesc const* /*out*/, int32_t /*nbOutputs*/) noexcept override {
        return guarded(name(), "onShapeChange", -1, [&]() -> int32_t {
            std::vector<TensorInfo> inputs;
            for (int32_t i = 0; i < nbInputs; ++i) inputs.push_back(toInfo(in[i], in[i].dims));
            std::string const problem = Op::checkInputs(mConfig, inputs.data(), nbInputs);
            if (!problem.empty()) {
                logError(std::string(name()) + ": " + problem);
                return -1;
            }
            if (Op::validate(mConfig, inputs.data(), nbInputs) != ATTNX_OK) {
                logError(std::string(name()) + ": " + attnx_last_error());
                return -1;
            }
            mNbInputs = nbInputs;
            return 0;
        });
    }

    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* /*outputDesc*/,
                    void const* const* inputs, void* const* outputs, void* workspace,
                    cudaStream_t stream) noexcept override {
        return guarded(name(), "enqueue", -1, [&]() -> int32_t {
            if (!Op::takesInputCount(mNbInputs)) {
                logError(std::string(name()) + "::enqueue: called before configurePlugin/onShapeChange");
                return -1;
            }
            // The shapes of this call, from its descriptors (as TensorRT's own V3 plugins do): nothing cached.
            TensorInfo current[Op::kMaxInputs];
            for (int32_t i = 0; i < mNbInputs; ++i) current[i] = toInfo(inputDesc[i], inputDesc[i].dims);
            std::string const problem = Op::checkInputs(mConfig, current, mNbInputs);
            if (!problem.empty()) {
                logError(std::string(name()) + "::enqueue: " + problem);
                return -1;
            }
            if (Op::forward(mConfig, current, mNbInputs, inputs, outputs[0], workspace, stream) != ATTNX_OK) {
                logError(std::string(name()) + "::enqueue: " + attnx_last_error());
                return -1;
            }
            return 0;
        });
    }

    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* /*context*/) noexcept override {
        return guarded(name(), "attachToContext", nullptr, [&] { return clone(); });
    }

    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override {
        return guarded(name(), "getFieldsToSerialize", nullptr,
                       [&] { return mSerialized.set(Op::serializeFields(mConfig)); });
    }

private:
    char const* name() const { return mDecl.name; }

    PluginDecl const mDecl = Op::decl();  // as DeclaredCreator keeps it
    Config mConfig;
    SerializedFields mSerialized;
    // The input count configurePlugin / onShapeChange saw (an op with optional inputs needs it: enqueue
    // receives descriptors but no count). Shapes are never cached: enqueue takes them from its inputDesc.
    int32_t mNbInputs = Op::kFixedInputs;
};

// The creator: name, version, namespace and field list from the op's declaration; createPlugin parses the
// node's fields and names the node in its one-line error.
template <typename Op>
class AttentionCreator : public DeclaredCreator {
public:
    AttentionCreator() : DeclaredCreator(Op::decl()) {}

    nvinfer1::IPluginV3* createPlugin(char const* name, nvinfer1::PluginFieldCollection const* fc,
                                      nvinfer1::TensorRTPhase /*phase*/) noexcept override {
        return guarded(Op::decl().name, "createPlugin", nullptr, [&]() -> nvinfer1::IPluginV3* {
            typename Op::Config config;
            std::string const problem = Op::parseFields(fieldViews(fc), config);
            if (!problem.empty()) {
                logError(std::string(Op::decl().name) + " node '" + (name ? name : "") + "': " + problem);
                return nullptr;
            }
            return new AttentionPlugin<Op>(config);
        });
    }
};

}  // namespace plugin
}  // namespace attnx
