// The checks of every CPU test program in plugins/tests (config, glue and layout tests alike): each check is
// counted; the first failing one prints "FAILED (line N): <what>" to stderr and exits 1, so ctest and
// tests/test_native_plugin_logic.py see a non-zero exit. A program that gets through ends with
// `return testharness::passed();`, which prints "N checks passed" (the count the Python tests read).
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string>

namespace testharness {

inline long g_checks = 0;

inline void check(bool ok, char const* what, int line) {
    ++g_checks;
    if (!ok) {
        std::fprintf(stderr, "FAILED (line %d): %s\n", line, what);
        std::exit(1);
    }
}

// Prints the count of checks that ran (all passed: a failure exits) and returns main's exit code.
inline int passed() {
    std::printf("%ld checks passed\n", g_checks);
    return 0;
}

}  // namespace testharness

#define CHECK(cond) ::testharness::check((cond), #cond, __LINE__)

// A problem text (a parser's or validator's returned string) that must contain `needle`.
#define CHECK_ERROR(expr, needle)                                                                          \
    do {                                                                                                   \
        std::string const e_ = (expr);                                                                     \
        ::testharness::check(e_.find(needle) != std::string::npos,                                         \
                             (std::string(#expr) + " -> '" + e_ + "' lacks '" + (needle) + "'").c_str(), \
                             __LINE__);                                                                    \
    } while (0)

// CHECK with a printf-style detail, formatted only on failure (for checks in hot loops):
// "FAILED (line N): <cond>: <detail>".
#define CHECK_MSG(cond, ...)                                                   \
    do {                                                                       \
        ++::testharness::g_checks;                                             \
        if (!(cond)) {                                                         \
            std::fprintf(stderr, "FAILED (line %d): %s: ", __LINE__, #cond);   \
            std::fprintf(stderr, __VA_ARGS__);                                 \
            std::fprintf(stderr, "\n");                                        \
            std::exit(1);                                                      \
        }                                                                      \
    } while (0)
