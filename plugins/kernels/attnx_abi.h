// Internal to libattnx_kernels (not part of the C ABI): how launchers of every kernel family record
// the reason behind a non-OK status, which attnx_last_error() then returns on the same thread.
#pragma once

#include <string>

#include "attnx_types.h"

namespace attnx {

// Records `message` as this thread's last error and returns `status`.
attnx_status fail(attnx_status status, const std::string& message);

// An OK call clears the previous reason.
void clear_error();

}  // namespace attnx
