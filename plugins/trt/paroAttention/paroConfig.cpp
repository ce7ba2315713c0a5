#include "paroConfig.h"

#include <cmath>

#include "attn_check.h"

namespace attnx {
namespace plugin {

namespace paroAttention {

namespace {

std::string readBits(FieldView const& f, int32_t& out) {
    std::string const bad = readPositiveInt(f, out);
    if (!bad.empty()) return bad;
    if (out != 16 && out != 8 && out != 4)
        return "field '" + std::string(f.name) + "'=" + std::to_string(out) + " must be 16 (no quantization), 8 or 4";
    return "";
}

}  // namespace

std::string parseFields(std::vector<FieldView> const& fields, ParoConfig& cfg) {
    cfg = ParoConfig{};
    return parseDeclared(kDecl, fields, [&](int32_t field, FieldView const& f) -> std::string {
        switch (field) {
            case kBlock: return readPositiveInt(f, cfg.block);
            case kQkBits: return readBits(f, cfg.qk_bits);
            case kPvBits: return readBits(f, cfg.pv_bits);
            case kQGroup: return readPositiveInt(f, cfg.q_group);
            case kKGroup: return readPositiveInt(f, cfg.k_group);
            case kSmoothK: {
                std::string const bad = readInts(f, 1, &cfg.smooth_k);
                if (!bad.empty()) return bad;
                if (f.length != 1 || (cfg.smooth_k != 0 && cfg.smooth_k != 1)) return "field 'smooth_k' must be one value, 0 or 1";
                return "";
            }
            case kScale: return readScale(f, cfg.has_scale, cfg.scale);
            default: return "";
        }
    });
}

std::vector<FieldView> serializeFields(ParoConfig const& cfg) {
    std::vector<FieldView> fields{
        fieldOf(kFields[kBlock], &cfg.block, 1),       fieldOf(kFields[kQkBits], &cfg.qk_bits, 1),
        fieldOf(kFields[kPvBits], &cfg.pv_bits, 1),    fieldOf(kFields[kQGroup], &cfg.q_group, 1),
        fieldOf(kFields[kKGroup], &cfg.k_group, 1),    fieldOf(kFields[kSmoothK], &cfg.smooth_k, 1),
    };
    if (cfg.has_scale) fields.push_back(fieldOf(kFields[kScale], &cfg.scale, 1));
    return fields;
}

std::string checkInputs(ParoConfig const& cfg, TensorInfo const* inputs, int32_t nbInputs) {
    if (nbInputs != kNbInputs)
        return std::string(kDecl.name) + " takes 6 inputs (q, k, v, perm_idx, kv_count, kv_index), got " +
               std::to_string(nbInputs);
    static char const* const names[] = {"q", "k", "v"};
    TensorInfo const& q = inputs[kQ];
    for (int32_t i = kQ; i <= kV; ++i) {
        TensorInfo const& t = inputs[i];
        if (t.nbDims != 4) return std::string(names[i]) + " " + dimsText(t) + " must have rank 4: [batch, heads, N, head_dim]";
        for (int32_t d = 0; d < 4; ++d)
            if (isKnownDim(t.dims[d]) && isKnownDim(q.dims[d]) && t.dims[d] != q.dims[d])
                return std::string(names[i]) + " " + dimsText(t) + " differs from q " + dimsText(q) + "; q, k and v must match";
    }
    if (isKnownDim(q.dims[3]) && q.dims[3] > kMaxHeadDim)
        return "head_dim=" + std::to_string(q.dims[3]) + " exceeds the supported maximum " + std::to_string(kMaxHeadDim);
    TensorInfo const& perm = inputs[kPerm];
    if (perm.type != DType::kInt32 || perm.nbDims != 2)
        return "perm_idx " + dimsText(perm) + " must be int32 [heads, N]";
    for (int32_t d = 0; d < 2; ++d)
        if (isKnownDim(perm.dims[d]) && isKnownDim(q.dims[1 + d]) && perm.dims[d] != q.dims[1 + d])
            return "perm_idx " + dimsText(perm) + " must be [heads, N] = [" + std::to_string(q.dims[1]) + ", " +
                   std::to_string(q.dims[2]) + "]";
    return layoutProblem(q, inputs[kCount], inputs[kIndex], cfg.block, "N", "block", true);
}

bool supportsFormat(int32_t pos, TensorInfo const* inOut, int32_t nbInputs, int32_t nbOutputs) {
    if (pos < 0 || pos >= nbInputs + nbOutputs || nbInputs != kNbInputs || nbOutputs != 1) return false;
    TensorInfo const& t = inOut[pos];
    if (!t.linear) return false;
    if (pos == kPerm || pos == kCount || pos == kIndex) return t.type == DType::kInt32;
    if (pos == kQ) return isFloatType(t.type);
    return t.type == inOut[kQ].type;  // k, v and the output share q's type
}

attnx_paro_params kernelParams(ParoConfig const& cfg, TensorInfo const* inputs) {
    TensorInfo const &q = inputs[kQ], &count = inputs[kCount], &index = inputs[kIndex];
    attnx_paro_params p{};
    p.batch = static_cast<int32_t>(q.dims[0]);
    p.heads = static_cast<int32_t>(q.dims[1]);
    p.seq = static_cast<int32_t>(q.dims[2]);
    p.head_dim = static_cast<int32_t>(q.dims[3]);
    p.block = cfg.block;
    p.layout = layoutParams(count, index);
    p.qk_bits = cfg.qk_bits;
    p.pv_bits = cfg.pv_bits;
    p.q_group = cfg.q_group;
    p.k_group = cfg.k_group;
    p.smooth_k = cfg.smooth_k;
    p.scale = cfg.has_scale ? cfg.scale : 1.f / std::sqrt(static_cast<float>(p.head_dim));
    p.dtype = q.type == DType::kFloat16 ? ATTNX_FLOAT16 : q.type == DType::kBFloat16 ? ATTNX_BFLOAT16 : ATTNX_FLOAT32;
    return p;
}

}  // namespace paroAttention
}  // namespace plugin
}  // namespace attnx
