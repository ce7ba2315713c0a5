// Prints one plugin's declaration (pluginFields.h's PluginDecl) for tests/test_op_contract.py, which
// compares it with the op registry. Built per plugin folder with the host compiler, no TensorRT:
//   -DPLUGIN_HEADER='"naConfig.h"' -DPLUGIN_FOLDER=neighborhoodAttention -I plugins/trt/<folder> ...
// Output: "plugin NAME VERSION NAMESPACE", then per field "field NAME TYPE COUNT REQUIRED", where
// TYPE is the registry's field type name, COUNT "1" or "rank", REQUIRED 0 or 1.
#include <cstdio>

#include PLUGIN_HEADER
#include "pluginFields.h"

int main() {
    using namespace attnx::plugin;
    PluginDecl const& decl = PLUGIN_FOLDER::kDecl;
    std::printf("plugin %s %s %s\n", decl.name, decl.version, kPluginNamespace);
    for (int32_t i = 0; i < decl.nbFields; ++i) {
        FieldSpec const& f = decl.fields[i];
        std::printf("field %s %s %s %d\n", f.name, fieldTypeName(f.type), f.count == FieldCount::kRank ? "rank" : "1",
                    f.required ? 1 : 0);
    }
    return 0;
}
