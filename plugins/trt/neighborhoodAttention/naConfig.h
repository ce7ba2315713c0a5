// TensorRT-free logic of the NeighborhoodAttention plugin: attribute parsing and validation, shape and
// format rules, serialization. The IPluginV3 glue (naPlugin.cpp) only converts TensorRT types to and
// from these; tests/test_native_plugin_logic.py runs the CPU tests in plugins/tests/.
// Contract: plugins/trt/neighborhoodAttention/README.md.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "attnx_types.h"

namespace attnx {
namespace plugin {

constexpr char const* kPluginName = "NeighborhoodAttention";
constexpr char const* kPluginVersion = "1";
constexpr char const* kPluginNamespace = "attn_export";

// A plugin field as TensorRT passes it, without TensorRT's types.
enum class FieldType { kInt32, kInt64, kFloat32, kFloat64, kChar, kOther };

struct FieldView {
    std::string_view name;  // serializeFields uses literals: name.data() is NUL-terminated
    FieldType type;
    void const* data;
    int32_t length;
};

enum class DType { kFloat32, kFloat16, kBFloat16, kOther };

// One tensor as TensorRT describes it at build time: type, linear format or not, rank and dims
// (-1 for a dimension that is still dynamic).
struct TensorInfo {
    DType type;
    bool linear;
    int32_t nbDims;
    int64_t dims[8];
};

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
