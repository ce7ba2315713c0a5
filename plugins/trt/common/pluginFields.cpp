#include "pluginFields.h"

#include <climits>
#include <cmath>
#include <cstring>

namespace attnx {
namespace plugin {
namespace {

std::string describe(FieldView const& f) { return "field '" + std::string(f.name) + "'"; }

}  // namespace

std::string readInts(FieldView const& f, int32_t rank, int32_t* out) {
    if (f.type != FieldType::kInt32 && f.type != FieldType::kInt64)
        return describe(f) + " must hold int32 or int64 values";
    if (!f.data || (f.length != 1 && f.length != rank))
        return describe(f) + " has " + std::to_string(f.length) + " values; give 1 or one per spatial axis (" +
               std::to_string(rank) + ")";
    for (int32_t a = 0; a < rank; ++a) {
        int32_t const i = f.length == 1 ? 0 : a;
        int64_t const value = f.type == FieldType::kInt32 ? static_cast<int32_t const*>(f.data)[i]
                                                          : static_cast<int64_t const*>(f.data)[i];
        if (value < INT32_MIN || value > INT32_MAX) return describe(f) + " holds a value outside int32";
        out[a] = static_cast<int32_t>(value);
    }
    return "";
}

std::string readFloat(FieldView const& f, double& out) {
    if ((f.type != FieldType::kFloat32 && f.type != FieldType::kFloat64) || f.length != 1 || !f.data)
        return describe(f) + " must be one float32 or float64 value";
    out = f.type == FieldType::kFloat32 ? *static_cast<float const*>(f.data) : *static_cast<double const*>(f.data);
    return "";
}

std::string readString(FieldView const& f, std::string& out) {
    if (f.type != FieldType::kChar || (f.length > 0 && !f.data)) return describe(f) + " must be a string";
    char const* text = static_cast<char const*>(f.data);
    out.assign(text, f.length > 0 ? strnlen(text, static_cast<size_t>(f.length)) : 0);
    return "";
}

std::string readPositiveInt(FieldView const& f, int32_t& out) {
    if (f.length != 1) return describe(f) + " must be one value";
    std::string const bad = readInts(f, 1, &out);
    if (!bad.empty()) return bad;
    if (out < 1) return describe(f) + "=" + std::to_string(out) + " must be positive";
    return "";
}

std::string readScale(FieldView const& f, bool& hasScale, float& scale) {
    double v = 0;
    std::string const bad = readFloat(f, v);
    if (!bad.empty()) return bad;
    float const narrowed = static_cast<float>(v);  // a double may overflow or vanish as a float
    scale = narrowed;
    hasScale = true;
    if (!(std::isfinite(v) && v > 0 && std::isfinite(narrowed) && narrowed > 0))
        return describe(f) + " must be a finite positive number";
    return "";
}

bool isIdentityField(std::string_view name) { return name == "plugin_version" || name == "plugin_namespace"; }

std::string checkIdentityField(PluginDecl const& decl, FieldView const& f) {
    if (!isIdentityField(f.name)) return "";
    std::string value;
    std::string problem = readString(f, value);
    std::string const expected = f.name == "plugin_version" ? decl.version : kPluginNamespace;
    if (problem.empty() && value != expected)
        problem = describe(f) + " is '" + value + "' but this library provides '" + expected + "'";
    return problem;
}

std::string unknownField(PluginDecl const& decl, std::string_view name) {
    std::string known;
    for (int32_t i = 0; i < decl.nbFields; ++i) known += std::string(decl.fields[i].name) + ", ";
    return "unknown field '" + std::string(name) + "'; " + decl.name + " takes " + known +
           "plugin_version, plugin_namespace";
}

}  // namespace plugin
}  // namespace attnx
