#include "tensorInfo.h"

namespace attnx {
namespace plugin {

std::string dimsText(TensorInfo const& t) {
    std::string s = "[";
    for (int32_t i = 0; i < t.nbDims; ++i) s += (i ? "," : "") + std::to_string(t.dims[i]);
    return s + "]";
}

namespace {

// d may be 1 (broadcast) or `full`; unknown values pass.
bool broadcastable(int64_t d, int64_t full, bool exact) {
    return !isKnownDim(d) || !isKnownDim(full) || d == full || (d == 1 && !exact);
}


std::string layoutRule(TensorInfo const& count, TensorInfo const& index, int64_t batch, int64_t heads, int64_t rows,
                       bool headsExact) {
    std::string const headsRule = headsExact ? "heads" : "H|1";
    if (count.type != DType::kInt32 || index.type != DType::kInt32)
        return "kv_count and kv_index must be int32 (the exporter writes int32 layouts)";
    if (count.nbDims != 3) return "kv_count " + dimsText(count) + " must have rank 3: [B|1, " + headsRule + ", rows]";
    if (index.nbDims != 4)
        return "kv_index " + dimsText(index) + " must have rank 4: [B|1, " + headsRule + ", rows, max_blocks]";
    for (TensorInfo const* t : {&count, &index}) {
        char const* name = t == &count ? "kv_count " : "kv_index ";
        if (!broadcastable(t->dims[0], batch, false))
            return name + dimsText(*t) + " leads with " + std::to_string(t->dims[0]) + " batches; batch is " +
                   std::to_string(batch) + " (give it or 1)";
        if (!broadcastable(t->dims[1], heads, headsExact))
            return name + dimsText(*t) + " has " + std::to_string(t->dims[1]) + " heads; the attention has " +
                   std::to_string(heads) + (headsExact ? " (one layout per head)" : " (give it or 1)");
        if (isKnownDim(t->dims[2]) && isKnownDim(rows) && t->dims[2] != rows)
            return name + dimsText(*t) + " has " + std::to_string(t->dims[2]) + " query-block rows; the sequence needs " +
                   std::to_string(rows);
    }
    return "";
}

}  // namespace

std::string layoutProblem(TensorInfo const& q, TensorInfo const& count, TensorInfo const& index, int32_t block,
                          char const* seqName, char const* blockField, bool headsExact) {
    int64_t const rows = isKnownDim(q.dims[2]) ? (q.dims[2] + block - 1) / block : -1;
    std::string const problem = layoutRule(count, index, q.dims[0], q.dims[1], rows, headsExact);
    if (problem.empty()) return "";
    return problem + " (rows = ceil(" + seqName + " / " + blockField + "=" + std::to_string(block) + "))";
}

attnx_block_layout layoutParams(TensorInfo const& count, TensorInfo const& index) {
    attnx_block_layout l{};
    l.rows = static_cast<int32_t>(count.dims[2]);
    l.max_blocks = static_cast<int32_t>(index.dims[3]);
    l.count_batch = static_cast<int32_t>(count.dims[0]);
    l.count_heads = static_cast<int32_t>(count.dims[1]);
    l.index_batch = static_cast<int32_t>(index.dims[0]);
    l.index_heads = static_cast<int32_t>(index.dims[1]);
    return l;
}

}  // namespace plugin
}  // namespace attnx
