// TensorRT-free logic of the BlockSparseAttention plugin: its declaration (name, version, fields), attribute
// parsing and validation, shape and format rules, serialization, kernel parameters. The IPluginV3 glue
// (bsaPlugin.cpp) only converts TensorRT types to and from these; CPU tests in
// plugins/tests/test_blockSparseAttention_config.cpp. Contract: README.md here.
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
namespace blockSparseAttention {

enum Field : int32_t { kBlockQ, kBlockKv, kScale };

constexpr FieldSpec kFields[] = {
    {"block_q", FieldType::kInt32, FieldCount::kOne, true},
    {"block_kv", FieldType::kInt32, FieldCount::kOne, true},
    {"scale", FieldType::kFloat32, FieldCount::kOne, false},  // default head_dim ** -0.5
};
constexpr PluginDecl kDecl = declare("BlockSparseAttention", "1", kFields);

static_assert(sameName(kFields[kBlockQ].name, "block_q") && sameName(kFields[kBlockKv].name, "block_kv") &&
                  sameName(kFields[kScale].name, "scale"),
              "Field indices must follow kFields");

// Inputs in the ONNX node's order.
enum Input : int32_t { kQ, kK, kV, kCount, kIndex, kNbInputs };

}  // namespace blockSparseAttention

struct BSAConfig {
    int32_t block_q = 0;
    int32_t block_kv = 0;
    bool has_scale = false;  // absent: head_dim ** -0.5, resolved in kernelParams (serialized as absent)
    float scale = 0.f;
};

// The logic lives in the plugin's namespace: every plugin has its own parseFields, checkInputs, ...
namespace blockSparseAttention {

std::string parseFields(std::vector<FieldView> const& fields, BSAConfig& cfg);
std::vector<FieldView> serializeFields(BSAConfig const& cfg);

// q [B, H, Sq, D], k and v [B, H, Skv, D], kv_count [B|1, H|1, nQB], kv_index [B|1, H|1, nQB, M]
// (nQB = ceil(Sq / block_q)); every known dimension is checked (the layout by common/tensorInfo.h's layoutProblem).
std::string checkInputs(BSAConfig const& cfg, TensorInfo const* inputs, int32_t nbInputs);

// q, k, v, out: one type among fp32/fp16/bf16; kv_count, kv_index: int32; all linear.
bool supportsFormat(int32_t pos, TensorInfo const* inOut, int32_t nbInputs, int32_t nbOutputs);

// Kernel parameters for concrete shapes (checkInputs passed).
attnx_bsa_params kernelParams(BSAConfig const& cfg, TensorInfo const* inputs);

}  // namespace blockSparseAttention

}  // namespace plugin
}  // namespace attnx
