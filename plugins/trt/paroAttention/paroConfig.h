// TensorRT-free logic of the ParoAttention plugin: its declaration (name, version, fields), attribute parsing
// and validation, shape and format rules, serialization, kernel parameters. The IPluginV3 glue
// (paroPlugin.cpp) only converts TensorRT types to and from these; CPU tests in
// plugins/tests/test_paroAttention_config.cpp. Contract: README.md here, docs/ops/paro_attention.md.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "attnx_types.h"
#include "pluginFields.h"
#include "tensorInfo.h"

namespace attnx {
namespace plugin {

// The plugin's declaration (namespace = its folder; tests/test_op_contract.py compares it with the registry).
namespace paroAttention {

enum Field : int32_t { kBlock, kQkBits, kPvBits, kQGroup, kKGroup, kSmoothK, kScale };

constexpr FieldSpec kFields[] = {
    {"block", FieldType::kInt32, FieldCount::kOne, true},
    {"qk_bits", FieldType::kInt32, FieldCount::kOne, true},
    {"pv_bits", FieldType::kInt32, FieldCount::kOne, true},
    {"q_group", FieldType::kInt32, FieldCount::kOne, true},
    {"k_group", FieldType::kInt32, FieldCount::kOne, true},
    {"smooth_k", FieldType::kInt32, FieldCount::kOne, true},
    {"scale", FieldType::kFloat32, FieldCount::kOne, false},  // default head_dim ** -0.5
};
constexpr PluginDecl kDecl = declare("ParoAttention", "1", kFields);

static_assert(sameName(kFields[kBlock].name, "block") && sameName(kFields[kQkBits].name, "qk_bits") &&
                  sameName(kFields[kPvBits].name, "pv_bits") && sameName(kFields[kQGroup].name, "q_group") &&
                  sameName(kFields[kKGroup].name, "k_group") && sameName(kFields[kSmoothK].name, "smooth_k") &&
                  sameName(kFields[kScale].name, "scale"),
              "Field indices must follow kFields");

// Inputs in the ONNX node's order.
enum Input : int32_t { kQ, kK, kV, kPerm, kCount, kIndex, kNbInputs };

}  // namespace paroAttention

struct ParoConfig {
    int32_t block = 0;
    int32_t qk_bits = 0;
    int32_t pv_bits = 0;
    int32_t q_group = 0;
    int32_t k_group = 0;
    int32_t smooth_k = 0;
    bool has_scale = false;  // absent: head_dim ** -0.5, resolved in kernelParams (serialized as absent)
    float scale = 0.f;
};

// The logic lives in the plugin's namespace: every plugin has its own parseFields, checkInputs, ...
namespace paroAttention {

std::string parseFields(std::vector<FieldView> const& fields, ParoConfig& cfg);
std::vector<FieldView> serializeFields(ParoConfig const& cfg);

// q, k, v [B, heads, N, D] (one shape), perm_idx [heads, N], kv_count [1|B, heads, nb], kv_index
// [1|B, heads, nb, M] (nb = ceil(N / block)); every known dimension is checked (the layout by common/tensorInfo.h's
// layoutProblem, one layout per head).
std::string checkInputs(ParoConfig const& cfg, TensorInfo const* inputs, int32_t nbInputs);

// q, k, v, out: one type among fp32/fp16/bf16; perm_idx, kv_count, kv_index: int32; all linear.
bool supportsFormat(int32_t pos, TensorInfo const* inOut, int32_t nbInputs, int32_t nbOutputs);

// Kernel parameters for concrete shapes (checkInputs passed).
attnx_paro_params kernelParams(ParoConfig const& cfg, TensorInfo const* inputs);

}  // namespace paroAttention

}  // namespace plugin
}  // namespace attnx
