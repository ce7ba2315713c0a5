#include "naConfig.h"

#include <cmath>

#include "na_check.h"

namespace attnx {
namespace plugin {

using namespace neighborhoodAttention;

std::string parseFields(std::vector<FieldView> const& fields, NAConfig& cfg) {
    cfg = NAConfig{};
    FieldView const* kernel = nullptr;
    for (FieldView const& f : fields)
        if (f.name == kFields[kKernelSize].name) kernel = &f;
    if (!kernel) return "field 'kernel_size' is missing; it gives the window size per spatial axis";
    if (kernel->length < 1 || kernel->length > ATTNX_MAX_RANK)
        return "field 'kernel_size' has " + std::to_string(kernel->length) + " values; give 1 to 3 (one per spatial axis)";
    cfg.rank = kernel->length;

    std::string const problem = parseDeclared(kDecl, fields, [&](int32_t field, FieldView const& f) -> std::string {
        switch (field) {
            case kKernelSize: return readInts(f, cfg.rank, cfg.kernel_size);
            case kStride: return readInts(f, cfg.rank, cfg.stride);
            case kDilation: return readInts(f, cfg.rank, cfg.dilation);
            case kIsCausal: return readInts(f, cfg.rank, cfg.is_causal);
            case kScale: {
                double v = 0;
                std::string const bad = readFloat(f, v);
                if (!bad.empty()) return bad;
                float const narrowed = static_cast<float>(v);  // a double may overflow or vanish as a float
                cfg.scale = narrowed;
                cfg.has_scale = true;
                if (!(std::isfinite(v) && v > 0 && std::isfinite(narrowed) && narrowed > 0))
                    return "field 'scale' must be a finite positive number";
                return "";
            }
            default: return "";
        }
    });
    if (!problem.empty()) return problem;
    for (int32_t a = 0; a < cfg.rank; ++a) {
        std::string const axis = window_problem(cfg.kernel_size[a], cfg.stride[a], cfg.dilation[a], cfg.is_causal[a], a);
        if (!axis.empty()) return axis;
    }
    return "";
}

std::vector<FieldView> serializeFields(NAConfig const& cfg) {
    std::vector<FieldView> fields{
        fieldOf(kFields[kKernelSize], cfg.kernel_size, cfg.rank),
        fieldOf(kFields[kStride], cfg.stride, cfg.rank),
        fieldOf(kFields[kDilation], cfg.dilation, cfg.rank),
        fieldOf(kFields[kIsCausal], cfg.is_causal, cfg.rank),
    };
    if (cfg.has_scale) fields.push_back(fieldOf(kFields[kScale], &cfg.scale, 1));
    return fields;
}

std::string checkInputs(NAConfig const& cfg, TensorInfo const* inputs, int32_t nbInputs) {
    if (nbInputs != 3 && nbInputs != 4)
        return std::string(kDecl.name) + " takes 3 inputs (q, k, v) or 4 (q, k, v, rpb), got " + std::to_string(nbInputs);
    static char const* const names[] = {"q", "k", "v", "rpb"};
    TensorInfo const& q = inputs[0];
    int32_t const want = cfg.rank + 3;  // [B, *spatial, heads, head_dim]
    for (int32_t i = 0; i < 3; ++i) {
        TensorInfo const& t = inputs[i];
        if (t.nbDims != want)
            return std::string(names[i]) + " has rank " + std::to_string(t.nbDims) + " but kernel_size has " +
                   std::to_string(cfg.rank) + " axes: expected [batch, *spatial, heads, head_dim] of rank " +
                   std::to_string(want);
        for (int32_t d = 0; d < want; ++d)
            if (isKnownDim(t.dims[d]) && isKnownDim(q.dims[d]) && t.dims[d] != q.dims[d])
                return std::string(names[i]) + " " + dimsText(t) + " differs from q " + dimsText(q) + "; q, k and v must match";
    }
    for (int32_t a = 0; a < cfg.rank; ++a) {
        int64_t const n = q.dims[1 + a];
        if (isKnownDim(n) && static_cast<int64_t>(cfg.kernel_size[a]) * cfg.dilation[a] > n)
            return "spatial axis " + std::to_string(a) + " has length " + std::to_string(n) + ", below kernel_size*dilation=" +
                   std::to_string(cfg.kernel_size[a] * cfg.dilation[a]) + "; use a larger input or a smaller window";
    }
    int64_t const heads = q.dims[want - 2], headDim = q.dims[want - 1];
    if (isKnownDim(headDim) && headDim > kMaxHeadDim)
        return "head_dim=" + std::to_string(headDim) + " exceeds the supported maximum " + std::to_string(kMaxHeadDim);
    if (nbInputs == 4) {
        TensorInfo const& rpb = inputs[3];
        for (int32_t a = 0; a < cfg.rank; ++a)
            if (cfg.is_causal[a]) return "rpb is not defined for causal axis " + std::to_string(a) + "; drop the bias input";
        if (rpb.nbDims != cfg.rank + 1) return "rpb has rank " + std::to_string(rpb.nbDims) + "; expected [heads, 2k-1 per axis]";
        if (isKnownDim(rpb.dims[0]) && isKnownDim(heads) && rpb.dims[0] != heads)
            return "rpb " + dimsText(rpb) + " has " + std::to_string(rpb.dims[0]) + " heads but q has " + std::to_string(heads);
        for (int32_t a = 0; a < cfg.rank; ++a)
            if (isKnownDim(rpb.dims[1 + a]) && rpb.dims[1 + a] != 2 * cfg.kernel_size[a] - 1)
                return "rpb " + dimsText(rpb) + " axis " + std::to_string(a + 1) + " must be 2*kernel_size-1=" +
                       std::to_string(2 * cfg.kernel_size[a] - 1);
    }
    return "";
}

bool supportsFormat(int32_t pos, TensorInfo const* inOut, int32_t nbInputs, int32_t nbOutputs) {
    if (pos < 0 || pos >= nbInputs + nbOutputs || nbOutputs != 1) return false;
    TensorInfo const& t = inOut[pos];
    if (!t.linear) return false;
    if (pos == 0) return t.type == DType::kFloat32 || t.type == DType::kFloat16 || t.type == DType::kBFloat16;
    return t.type == inOut[0].type;  // k, v, rpb and the output share q's type
}

attnx_na_params kernelParams(NAConfig const& cfg, TensorInfo const& q, bool hasRpb) {
    attnx_na_params p{};
    p.rank = cfg.rank;
    p.batch = static_cast<int32_t>(q.dims[0]);
    p.heads = static_cast<int32_t>(q.dims[cfg.rank + 1]);
    p.head_dim = static_cast<int32_t>(q.dims[cfg.rank + 2]);
    for (int32_t a = 0; a < cfg.rank; ++a) {
        p.spatial[a] = static_cast<int32_t>(q.dims[1 + a]);
        p.kernel_size[a] = cfg.kernel_size[a];
        p.stride[a] = cfg.stride[a];
        p.dilation[a] = cfg.dilation[a];
        p.is_causal[a] = cfg.is_causal[a];
    }
    p.scale = cfg.has_scale ? cfg.scale : 1.f / std::sqrt(static_cast<float>(p.head_dim));
    p.dtype = q.type == DType::kFloat16 ? ATTNX_FLOAT16 : q.type == DType::kBFloat16 ? ATTNX_BFLOAT16 : ATTNX_FLOAT32;
    p.has_rpb = hasRpb ? 1 : 0;
    return p;
}

}  // namespace plugin
}  // namespace attnx
