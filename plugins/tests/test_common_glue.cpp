// CPU test of the glue helpers every plugin shares (plugins/trt/common/pluginGlue.*), with the real
// TensorRT headers and no TensorRT runtime: `guarded` turns any exception (std or not) into the
// failure value and a logged line, the creator's field list follows the declaration, and the
// conversions between TensorRT's types and the TensorRT-free ones. Run by ctest (common_glue).
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>

#include "glueTestSupport.h"
#include "pluginGlue.h"
#include "pluginLogger.h"

using namespace nvinfer1;
using namespace attnx::plugin;
using gluetest::Finder;

namespace {

constexpr FieldSpec kFields[] = {
    {"window", FieldType::kInt32, FieldCount::kRank, true},
    {"gain", FieldType::kFloat32, FieldCount::kOne, false},
    {"mode", FieldType::kChar, FieldCount::kOne, false},
};
constexpr PluginDecl kDecl = declare("Toy", "2", kFields);

class ToyCreator : public DeclaredCreator {
public:
    ToyCreator() : DeclaredCreator(kDecl) {}
    IPluginV3* createPlugin(char const*, PluginFieldCollection const*, TensorRTPhase) noexcept override { return nullptr; }
};

}  // namespace

int main() {
    Finder finder;
    setFinder(&finder);

    // guarded: the body's value, or the failure value and "<plugin>::<where>: <what>" for any throw.
    CHECK(guarded("Toy", "ok", -1, [] { return 7; }) == 7);
    CHECK(guarded("Toy", "enqueue", -1, []() -> int32_t { throw std::runtime_error("boom"); }) == -1);
    CHECK(finder.logger.last == "[attn_export] Toy::enqueue: boom");
    CHECK(guarded("Toy", "clone", nullptr, []() -> IPluginV3* { throw 42; }) == nullptr);
    CHECK(finder.logger.last == "[attn_export] Toy::clone: unknown exception");
    CHECK(!guarded("Toy", "supportsFormatCombination", false, []() -> bool { throw std::bad_alloc(); }));
    CHECK(finder.logger.last.find("Toy::supportsFormatCombination") != std::string::npos);
    CHECK(reportFailure("Toy", "configurePlugin", "why") == -1);

    // The creator's identity and field list come from the declaration.
    ToyCreator creator;
    CHECK(std::strcmp(creator.getPluginName(), "Toy") == 0 && std::strcmp(creator.getPluginVersion(), "2") == 0);
    CHECK(std::strcmp(creator.getPluginNamespace(), "attn_export") == 0);
    PluginFieldCollection const* names = creator.getFieldNames();
    CHECK(names->nbFields == 3);
    CHECK(std::strcmp(names->fields[0].name, "window") == 0 && names->fields[0].type == PluginFieldType::kINT32 &&
          names->fields[0].length == 0);
    CHECK(std::strcmp(names->fields[1].name, "gain") == 0 && names->fields[1].type == PluginFieldType::kFLOAT32 &&
          names->fields[1].length == 1);
    CHECK(names->fields[2].type == PluginFieldType::kCHAR);

    // Fields in and out.
    CHECK(fieldViews(nullptr).empty());
    int32_t const w[2] = {3, 5};
    PluginField const in[2] = {PluginField("window", w, PluginFieldType::kINT64, 2), PluginField(nullptr, w, PluginFieldType::kINT8, 1)};
    PluginFieldCollection const fc{2, in};
    std::vector<FieldView> const views = fieldViews(&fc);
    CHECK(views.size() == 2 && views[0].name == "window" && views[0].type == FieldType::kInt64 && views[0].length == 2);
    CHECK(views[1].name.empty() && views[1].type == FieldType::kOther);
    SerializedFields serialized;
    float const gain = 0.5f;
    PluginFieldCollection const* out = serialized.set({fieldOf(kFields[0], w, 2), fieldOf(kFields[1], &gain, 1)});
    CHECK(out->nbFields == 2 && std::strcmp(out->fields[1].name, "gain") == 0);
    CHECK(out->fields[0].type == PluginFieldType::kINT32 && out->fields[0].data == w && out->fields[1].length == 1);

    // Type conversions both ways.
    for (FieldType t : {FieldType::kInt32, FieldType::kInt64, FieldType::kFloat32, FieldType::kFloat64, FieldType::kChar})
        CHECK(toFieldType(toPluginFieldType(t)) == t);
    CHECK(toDType(DataType::kHALF) == DType::kFloat16 && toDType(DataType::kBF16) == DType::kBFloat16 &&
          toDType(DataType::kFLOAT) == DType::kFloat32 && toDType(DataType::kINT8) == DType::kOther &&
          toDType(DataType::kINT32) == DType::kInt32);
    PluginTensorDesc desc{};
    desc.type = DataType::kHALF;
    desc.format = TensorFormat::kCHW32;
    Dims dims{};
    dims.nbDims = 2;
    dims.d[0] = 4;
    dims.d[1] = -1;
    TensorInfo const info = toInfo(desc, dims);
    CHECK(info.type == DType::kFloat16 && !info.linear && info.nbDims == 2 && info.dims[1] == -1);

    setFinder(nullptr);
    return testharness::passed();
}
