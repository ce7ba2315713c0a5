#include "bsaConfig.h"

#include <cmath>

#include "attn_check.h"

namespace attnx {
namespace plugin {

namespace blockSparseAttention {

std::string parseFields(std::vector<FieldView> const& fields, BSAConfig& cfg) {
    cfg = BSAConfig{};
    return parseDeclared(kDecl, fields, [&](int32_t field, FieldView const& f) -> std::string {
        switch (field) {
            case kBlockQ: return readPositiveInt(f, cfg.block_q);
            case kBlockKv: return readPositiveInt(f, cfg.block_kv);
            case kScale: return readScale(f, cfg.has_scale, cfg.scale);
            default: return "";
        }
    });
}

std::vector<FieldView> serializeFields(BSAConfig const& cfg) {
    std::vector<FieldView> fields{fieldOf(kFields[kBlockQ], &cfg.block_q, 1), fieldOf(kFields[kBlockKv], &cfg.block_kv, 1)};
    if (cfg.has_scale) fields.push_back(fieldOf(kFields[kScale], &cfg.scale, 1));
    return fields;
}

std::string checkInputs(BSAConfig const& cfg, TensorInfo const* inputs, int32_t nbInputs) {
    if (nbInputs != kNbInputs)
        return std::string(kDecl.name) + " takes 5 inputs (q, k, v, kv_count, kv_index), got " + std::to_string(nbInputs);
    static char const* const names[] = {"q", "k", "v"};
    for (int32_t i = kQ; i <= kV; ++i)
        if (inputs[i].nbDims != 4)
            return std::string(names[i]) + " " + dimsText(inputs[i]) + " must have rank 4: [batch, heads, seq, head_dim]";
    TensorInfo const &q = inputs[kQ], &k = inputs[kK], &v = inputs[kV];
    auto differ = [](int64_t a, int64_t b) { return isKnownDim(a) && isKnownDim(b) && a != b; };
    for (int32_t d = 0; d < 4; ++d)
        if (differ(k.dims[d], v.dims[d])) return "v " + dimsText(v) + " differs from k " + dimsText(k) + "; k and v must match";
    for (int32_t d : {0, 1, 3})
        if (differ(q.dims[d], k.dims[d]))
            return "k " + dimsText(k) + " and q " + dimsText(q) + " must share batch, heads and head_dim";
    if (isKnownDim(q.dims[3]) && q.dims[3] > kMaxHeadDim)
        return "head_dim=" + std::to_string(q.dims[3]) + " exceeds the supported maximum " + std::to_string(kMaxHeadDim);
    return layoutProblem(q, inputs[kCount], inputs[kIndex], cfg.block_q, "Sq", "block_q", false);
}

bool supportsFormat(int32_t pos, TensorInfo const* inOut, int32_t nbInputs, int32_t nbOutputs) {
    if (pos < 0 || pos >= nbInputs + nbOutputs || nbInputs != kNbInputs || nbOutputs != 1) return false;
    TensorInfo const& t = inOut[pos];
    if (!t.linear) return false;
    if (pos == kCount || pos == kIndex) return t.type == DType::kInt32;
    if (pos == kQ) return isFloatType(t.type);
    return t.type == inOut[kQ].type;  // k, v and the output share q's type
}

attnx_bsa_params kernelParams(BSAConfig const& cfg, TensorInfo const* inputs) {
    TensorInfo const &q = inputs[kQ], &k = inputs[kK], &count = inputs[kCount], &index = inputs[kIndex];
    attnx_bsa_params p{};
    p.batch = static_cast<int32_t>(q.dims[0]);
    p.heads = static_cast<int32_t>(q.dims[1]);
    p.seq_q = static_cast<int32_t>(q.dims[2]);
    p.head_dim = static_cast<int32_t>(q.dims[3]);
    p.seq_kv = static_cast<int32_t>(k.dims[2]);
    p.block_q = cfg.block_q;
    p.block_kv = cfg.block_kv;
    p.layout = layoutParams(count, index);
    p.scale = cfg.has_scale ? cfg.scale : 1.f / std::sqrt(static_cast<float>(p.head_dim));
    p.dtype = q.type == DType::kFloat16 ? ATTNX_FLOAT16 : q.type == DType::kBFloat16 ? ATTNX_BFLOAT16 : ATTNX_FLOAT32;
    return p;
}

}  // namespace blockSparseAttention
}  // namespace plugin
}  // namespace attnx
