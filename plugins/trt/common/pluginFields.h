// TensorRT-free field handling shared by every plugin: the declaration of a plugin (name, version and
// field table, written once per plugin), the readers that turn TensorRT's fields into a plugin's
// config, and the checks all plugins share (plugin_version, plugin_namespace, unknown and missing
// fields). The glue (pluginGlue.h) builds the creator's field list from the same declaration, and
// tests/test_op_contract.py compares it with the op registry. CPU tests: plugins/tests/test_common_fields.cpp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace attnx {
namespace plugin {

// The TensorRT plugin namespace of every plugin in this library (the registry's DOMAIN).
constexpr char const* kPluginNamespace = "attn_export";

// A plugin field type as TensorRT passes it, without TensorRT's types.
enum class FieldType { kInt32, kInt64, kFloat32, kFloat64, kChar, kOther };

// The name the op registry uses for a field type (attn_export.registry.FIELD_TYPES values).
constexpr char const* fieldTypeName(FieldType type) {
    switch (type) {
        case FieldType::kInt32: return "int32";
        case FieldType::kInt64: return "int64";
        case FieldType::kFloat32: return "float32";
        case FieldType::kFloat64: return "float64";
        case FieldType::kChar: return "char";
        default: return "other";
    }
}

// How many values a field holds: one, or one per spatial axis (a single value is broadcast).
enum class FieldCount { kOne, kRank };

// One row of a plugin's field table. `type` is what the plugin serializes and what the TensorRT ONNX
// parser delivers (INT/INTS become int32); readers also accept the 64-bit variant. `required`: the
// plugin refuses a node without the field (an optional field has a default).
struct FieldSpec {
    char const* name;
    FieldType type;
    FieldCount count;
    bool required;
};

// A plugin as TensorRT sees it: name, version (namespace: kPluginNamespace) and its fields, without
// plugin_version / plugin_namespace, which every plugin accepts and checks the same way.
struct PluginDecl {
    char const* name;
    char const* version;
    FieldSpec const* fields;
    int32_t nbFields;

    // Index of the field called `name`, or -1.
    int32_t find(std::string_view name) const {
        for (int32_t i = 0; i < nbFields; ++i)
            if (name == fields[i].name) return i;
        return -1;
    }
};

template <size_t N>
constexpr PluginDecl declare(char const* name, char const* version, FieldSpec const (&fields)[N]) {
    return PluginDecl{name, version, fields, static_cast<int32_t>(N)};
}

// For static_asserts that a plugin's field indices match its table.
constexpr bool sameName(char const* a, char const* b) {
    while (*a && *a == *b) ++a, ++b;
    return *a == *b;
}

// A plugin field as TensorRT passes it, without TensorRT's types.
struct FieldView {
    std::string_view name;  // serialized fields use the table's literals: name.data() is NUL-terminated
    FieldType type;
    void const* data;
    int32_t length;
};

// A field to serialize: the table's name and type over `data`.
inline FieldView fieldOf(FieldSpec const& spec, void const* data, int32_t length) {
    return FieldView{spec.name, spec.type, data, length};
}

// Each reader returns "" or one sentence naming the field and what is wrong with it.
// An integer list of 1 or `rank` values (int32 or int64); a single value is broadcast to `rank`.
std::string readInts(FieldView const& f, int32_t rank, int32_t* out);
// One float32 or float64 value (range rules are the plugin's).
std::string readFloat(FieldView const& f, double& out);
std::string readString(FieldView const& f, std::string& out);
// One integer >= 1 (block and group sizes).
std::string readPositiveInt(FieldView const& f, int32_t& out);
// The logit scale: one finite positive float (also as float32); sets hasScale (an absent scale is the
// plugin's default head_dim ** -0.5, serialized as absent).
std::string readScale(FieldView const& f, bool& hasScale, float& scale);

// plugin_version / plugin_namespace: "" if `f` is neither or matches `decl`; else why not.
bool isIdentityField(std::string_view name);
std::string checkIdentityField(PluginDecl const& decl, FieldView const& f);

// "unknown field 'x'; NAME takes a, b, ..., plugin_version, plugin_namespace" (the table's order).
std::string unknownField(PluginDecl const& decl, std::string_view name);

// Walks `fields` against `decl`: identity fields are checked here, a field outside the table is
// refused with the table's names, every table field goes to read(index, field) (which returns "" or
// the problem), and a required field that never came is reported. Returns the first problem or "".
template <typename Read>
std::string parseDeclared(PluginDecl const& decl, std::vector<FieldView> const& fields, Read&& read) {
    std::vector<bool> seen(static_cast<size_t>(decl.nbFields), false);
    for (FieldView const& f : fields) {
        int32_t const index = decl.find(f.name);
        std::string problem;
        if (index >= 0) {
            seen[static_cast<size_t>(index)] = true;
            problem = read(index, f);
        } else if (isIdentityField(f.name)) {
            problem = checkIdentityField(decl, f);
        } else {
            problem = unknownField(decl, f.name);
        }
        if (!problem.empty()) return problem;
    }
    for (int32_t i = 0; i < decl.nbFields; ++i)
        if (decl.fields[i].required && !seen[static_cast<size_t>(i)])
            return "field '" + std::string(decl.fields[i].name) + "' is missing; " + decl.name + " requires it";
    return "";
}

}  // namespace plugin
}  // namespace attnx
