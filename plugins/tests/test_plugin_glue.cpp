// CPU test of the built plugin library as a whole, through its only exports (getCreators,
// setLoggerFinder), with the real TensorRT headers but no TensorRT runtime: both registration paths
// against a fake process registry that refuses duplicates as TensorRT 11 does, no registration next to
// another TensorRT major, and what every creator must do (V3One, the attn_export namespace, its field
// list, refusing a node with an unknown field with a logged reason). Each plugin's own behaviour:
// tests/test_<folder>_glue.cpp.
// Usage: test_plugin_glue path/to/libattnx_trt_plugins.so
#include <dlfcn.h>
#include <stdlib.h>
#include <unistd.h>

#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "glueTestSupport.h"

using namespace nvinfer1;
using namespace gluetest;

namespace {

// TensorRT's process registry as the library sees it (dlsym(RTLD_DEFAULT, "getPluginRegistry"); this
// executable exports the symbol). Like TensorRT, it refuses a second creator of the same name, version
// and namespace; TensorRT 11's loadLibrary returns null when registering what getCreators returned fails.
class FakeRegistry : public IPluginRegistry {
public:
    struct Entry {
        IPluginCreatorInterface* creator;
        std::string key;
    };
    std::vector<Entry> entries;
    int32_t refused = 0;

    static std::string keyOf(IPluginCreatorInterface& creator, AsciiChar const* ns) {
        auto& v3 = static_cast<IPluginCreatorV3One&>(creator);
        return std::string(v3.getPluginName()) + "/" + v3.getPluginVersion() + "/" + (ns ? ns : "");
    }
    bool registerCreator(IPluginCreatorInterface& creator, AsciiChar const* const ns) noexcept override {
        std::string const key = keyOf(creator, ns);
        for (Entry const& e : entries)
            if (e.key == key) {
                ++refused;
                return false;
            }
        entries.push_back({&creator, key});
        return true;
    }
    bool deregisterCreator(IPluginCreatorInterface const& creator) noexcept override {
        for (size_t i = 0; i < entries.size(); ++i)
            if (entries[i].creator == &creator) {
                entries.erase(entries.begin() + static_cast<std::ptrdiff_t>(i));
                return true;
            }
        return false;
    }
    // Emulates IPluginRegistry::loadLibrary on an already dlopened library (dlopen ran its static
    // initializer): register everything getCreators returns; any refusal makes the load fail.
    bool loadLibraryEmulated(void* lib) {
        using GetCreators = IPluginCreatorInterface* const* (*)(int32_t&);
        auto getCreators = reinterpret_cast<GetCreators>(dlsym(lib, "getCreators"));
        int32_t count = 0;
        IPluginCreatorInterface* const* list = getCreators(count);
        bool ok = count > 0;
        for (int32_t i = 0; i < count; ++i) {
            ok = registerCreator(*list[i], static_cast<IPluginCreatorV3One*>(list[i])->getPluginNamespace()) && ok;
            loaded.push_back(list[i]);
        }
        return ok;
    }
    void deregisterLibraryEmulated() {
        for (IPluginCreatorInterface* c : loaded) deregisterCreator(*c);
        loaded.clear();
    }
    std::vector<IPluginCreatorInterface*> loaded;

    // The rest of the interface: unused by the library.
#if NV_TENSORRT_MAJOR < 11
    bool registerCreator(IPluginCreator&, AsciiChar const* const) noexcept override { return false; }
    IPluginCreator* const* getPluginCreatorList(int32_t* const n) const noexcept override {
        *n = 0;
        return nullptr;
    }
    IPluginCreator* getPluginCreator(AsciiChar const* const, AsciiChar const* const, AsciiChar const* const) noexcept override {
        return nullptr;
    }
    bool deregisterCreator(IPluginCreator const&) noexcept override { return false; }
#endif
    void setErrorRecorder(IErrorRecorder* const) noexcept override {}
    IErrorRecorder* getErrorRecorder() const noexcept override { return nullptr; }
    bool isParentSearchEnabled() const override { return false; }
    void setParentSearchEnabled(bool const) override {}
    PluginLibraryHandle loadLibrary(AsciiChar const*) noexcept override { return nullptr; }
    void deregisterLibrary(PluginLibraryHandle) noexcept override {}
    IPluginCreatorInterface* const* getAllCreators(int32_t* const n) const noexcept override {
        *n = 0;
        return nullptr;
    }
    IPluginCreatorInterface* getCreator(AsciiChar const* const, AsciiChar const* const, AsciiChar const* const) noexcept override {
        return nullptr;
    }
    IPluginResource* acquirePluginResource(AsciiChar const*, IPluginResource*) noexcept override { return nullptr; }
    int32_t releasePluginResource(AsciiChar const*) noexcept override { return 0; }
    IPluginCreatorInterface* const* getAllCreatorsRecursive(int32_t* const n) noexcept override {
        *n = 0;
        return nullptr;
    }
};

FakeRegistry g_registry;
// What the fake getInferLibVersion reports: (major * 100 + minor) * 100 + patch, as TensorRT's.
int32_t g_inferVersion = (NV_TENSORRT_MAJOR * 100 + NV_TENSORRT_MINOR) * 100 + NV_TENSORRT_PATCH;

std::string readAll(char const* path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Next to a TensorRT of another major, the static initializer must not register (the registry's
// vtable would not match these headers) and must say why. A copy of the library, so that dlopen runs
// its static initializer again.
void checkOtherMajorIsRefused(char const* libPath) {
    char copy[] = "/tmp/attnx_glue_copy_XXXXXX";
    int const copyFd = mkstemp(copy);
    CHECK(copyFd >= 0);
    close(copyFd);
    std::ofstream(copy, std::ios::binary) << readAll(libPath);
    char log[] = "/tmp/attnx_glue_log_XXXXXX";
    int const logFd = mkstemp(log);
    CHECK(logFd >= 0);
    std::fflush(stderr);
    int const savedStderr = dup(2);
    dup2(logFd, 2);  // no logger finder yet: the warning goes to stderr
    g_inferVersion = (NV_TENSORRT_MAJOR + 1) * 10000;
    void* other = dlopen(copy, RTLD_NOW | RTLD_LOCAL);
    g_inferVersion = (NV_TENSORRT_MAJOR * 100 + NV_TENSORRT_MINOR) * 100 + NV_TENSORRT_PATCH;
    std::fflush(stderr);
    dup2(savedStderr, 2);
    close(savedStderr);
    close(logFd);
    std::string const text = readAll(log);
    unlink(copy);
    unlink(log);
    CHECK(other != nullptr);
    CHECK(g_registry.entries.empty() && g_registry.refused == 0);
    std::string const expected = "compiled for TensorRT " + std::to_string(NV_TENSORRT_MAJOR);
    CHECK(text.find("not registering statically") != std::string::npos && text.find(expected) != std::string::npos);
}

}  // namespace

extern "C" TENSORRTAPI IPluginRegistry* getPluginRegistry() noexcept { return &g_registry; }
extern "C" TENSORRTAPI int32_t getInferLibVersion() noexcept { return g_inferVersion; }

int main(int argc, char** argv) {
    if (argc != 2) return 2;
    checkOtherMajorIsRefused(argv[1]);
    void* lib = openLibrary(argv[1]);
    auto getCreators = reinterpret_cast<GetCreators>(dlsym(lib, "getCreators"));
    auto setLoggerFinder = reinterpret_cast<SetFinder>(dlsym(lib, "setLoggerFinder"));
    CHECK(getCreators && setLoggerFinder);
    CHECK(dlsym(lib, "attnx_na_forward") == nullptr);  // the kernels are linked in, not exported
    Finder finder;

    // Path 1, dlopen without loadLibrary (ctypes.CDLL, polygraphy --plugins, --staticPlugins): the
    // static initializer registered every creator once, under the attn_export namespace.
    size_t const registered = g_registry.entries.size();
    CHECK(registered >= 1 && g_registry.refused == 0);
    std::vector<std::string> staticKeys;
    for (auto const& e : g_registry.entries) {
        CHECK(e.key.size() > 12 && e.key.compare(e.key.size() - 12, 12, "/attn_export") == 0);
        staticKeys.push_back(e.key);
    }
    // Path 2, IPluginRegistry::loadLibrary (Python load_library, --dynamicPlugins): it dlopens (the
    // static initializer above), sets the logger, calls getCreators and registers the result. That
    // registration must not be a duplicate, and deregisterLibrary must leave nothing behind.
    setLoggerFinder(&finder);
    CHECK(g_registry.loadLibraryEmulated(lib));
    CHECK(g_registry.refused == 0 && g_registry.entries.size() == registered);
    for (size_t i = 0; i < registered; ++i) CHECK(g_registry.entries[i].key == staticKeys[i]);
    g_registry.deregisterLibraryEmulated();
    CHECK(g_registry.entries.empty());
    CHECK(g_registry.loadLibraryEmulated(lib));  // a second load_library after unloading
    CHECK(g_registry.refused == 0 && g_registry.entries.size() == registered);

    int32_t count = 0;
    IPluginCreatorInterface* const* creators = getCreators(count);
    CHECK(static_cast<size_t>(count) == registered);
    for (int32_t i = 0; i < count; ++i) CHECK(std::strcmp(creators[i]->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") == 0);

    // Every creator: its field list, and a node with an unknown field refused (nullptr) with a logged
    // reason naming the node.
    for (int32_t i = 0; i < count; ++i) {
        auto* creator = static_cast<IPluginCreatorV3One*>(creators[i]);
        PluginFieldCollection const* names = creator->getFieldNames();
        CHECK(names != nullptr && names->nbFields >= 1);
        for (int32_t f = 0; f < names->nbFields; ++f) CHECK(names->fields[f].name && *names->fields[f].name);
        int32_t const one = 1;
        PluginField const unknown("no_such_field", &one, PluginFieldType::kINT32, 1);
        PluginFieldCollection const fc{1, &unknown};
        finder.logger.last.clear();
        CHECK(creator->createPlugin("node_x", &fc, TensorRTPhase::kBUILD) == nullptr);
        CHECK(finder.logger.last.find("node_x") != std::string::npos);
        // An absent collection is "no fields": a plugin or a logged refusal, never a crash.
        delete creator->createPlugin("node_y", nullptr, TensorRTPhase::kBUILD);
    }
    return testharness::passed();
}
