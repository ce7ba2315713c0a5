// The ABI-wide functions of libattnx_kernels, shared by every kernel family: the ABI version and the
// per-thread last error. Host code only (no kernel), so it builds with the host compiler.
#include "attnx_abi.h"

#include "attnx_kernels.h"

namespace {

thread_local std::string g_last_error;

}  // namespace

namespace attnx {

attnx_status fail(attnx_status status, const std::string& message) {
    g_last_error = message;
    return status;
}

void clear_error() { g_last_error.clear(); }

}  // namespace attnx

extern "C" {

int32_t attnx_abi_version(void) { return ATTNX_ABI_VERSION; }

const char* attnx_last_error(void) { return g_last_error.c_str(); }

}  // extern "C"
