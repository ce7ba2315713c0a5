// TensorRT-free logic of the NeighborhoodAttention plugin: its declaration (name, version, fields),
// attribute parsing and validation, shape and format rules, serialization. The IPluginV3 glue
// (naPlugin.cpp) only converts TensorRT types to and from these; tests/test_native_plugin_logic.py runs
// the CPU tests in plugins/tests/test_neighborhoodAttention_config.cpp.
// Contract: plugins/trt/neighborhoodAttention/README.md.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "attnx_types.h"
#include "pluginFields.h"
#include "tensorInfo.h"

namespace attnx {
namespace plugin {

// The plugin's declaration, written once: its name and version, and the field table that parsing,
// serialization and the creator's field list use (the namespace is kPluginNamespace). The enclosing
// namespace is the plugin's folder name, where tests/test_op_contract.py finds it to compare with the
// op registry.
namespace neighborhoodAttention {

enum Field : int32_t { kKernelSize, kStride, kDilation, kIsCausal, kScale };

constexpr FieldSpec kFields[] = {
    {"kernel_size", FieldType::kInt32, FieldCount::kRank, true},  // its length sets the rank
    {"stride", FieldType::kInt32, FieldCount::kRank, false},      // default 1
    {"dilation", FieldType::kInt32, FieldCount::kRank, false},    // default 1
    {"is_causal", FieldType::kInt32, FieldCount::kRank, false},   // default 0
    {"scale", FieldType::kFloat32, FieldCount::kOne, false},      // default head_dim ** -0.5
};
constexpr PluginDecl kDecl = declare("NeighborhoodAttention", "1", kFields);

static_assert(sameName(kFields[kKernelSize].name, "kernel_size") && sameName(kFields[kStride].name, "stride") &&
                  sameName(kFields[kDilation].name, "dilation") && sameName(kFields[kIsCausal].name, "is_causal") &&
                  sameName(kFields[kScale].name, "scale"),
              "Field indices must follow kFields");

}  // namespace neighborhoodAttention

struct NAConfig {
    int32_t rank = 0;  // number of spatial axes, from the length of kernel_size
    int32_t kernel_size[ATTNX_MAX_RANK] = {0, 0, 0};
    int32_t stride[ATTNX_MAX_RANK] = {1, 1, 1};
    int32_t dilation[ATTNX_MAX_RANK] = {1, 1, 1};
    int32_t is_causal[ATTNX_MAX_RANK] = {0, 0, 0};
    // The ONNX node may omit scale (default head_dim ** -0.5, known only with the input shape): "absent"
    // is stored explicitly, serialized as a missing field, and resolved in kernelParams.
    bool has_scale = false;
    float scale = 0.f;  // meaningful only when has_scale
};

// Fills cfg from fields; returns "" or one sentence saying which field is wrong and why.
std::string parseFields(std::vector<FieldView> const& fields, NAConfig& cfg);

// The fields that getFieldsToSerialize returns (scale only when the node gave one); they point into cfg,
// which must outlive them. parseFields(serializeFields(cfg)) reproduces cfg.
std::vector<FieldView> serializeFields(NAConfig const& cfg);

// q, k, v [, rpb]: returns "" if the inputs suit cfg; checks every dimension that is already known.
std::string checkInputs(NAConfig const& cfg, TensorInfo const* inputs, int32_t nbInputs);

// supportsFormatCombination: q, k, v, out (and rpb) linear, one type among fp32/fp16/bf16.
bool supportsFormat(int32_t pos, TensorInfo const* inOut, int32_t nbInputs, int32_t nbOutputs);

// Kernel parameters for concrete input shapes (checkInputs must have passed); an absent scale becomes
// head_dim ** -0.5 here, so the kernel always receives an explicit positive scale.
attnx_na_params kernelParams(NAConfig const& cfg, TensorInfo const& q, bool hasRpb);

}  // namespace plugin
}  // namespace attnx
