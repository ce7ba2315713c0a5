// Shared by the plugins' config tests (test_<folder>_config.cpp: a plugin's TensorRT-free logic on the CPU,
// no TensorRT include): tensor descriptions for the shape and format rules; the checks are testHarness.h's.
#pragma once

#include <cstdint>
#include <vector>

#include "tensorInfo.h"
#include "testHarness.h"

namespace configtest {

// A tensor of these dims, fp16 and linear unless told otherwise.
inline attnx::plugin::TensorInfo tensor(std::vector<int64_t> dims,
                                        attnx::plugin::DType type = attnx::plugin::DType::kFloat16,
                                        bool linear = true) {
    attnx::plugin::TensorInfo t{type, linear, static_cast<int32_t>(dims.size()), {}};
    for (size_t i = 0; i < dims.size(); ++i) t.dims[i] = dims[i];
    return t;
}

}  // namespace configtest
