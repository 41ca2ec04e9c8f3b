// What every kernel's C entry point does around its work: run it for the tensors' dtype,
// and turn any exception (a failed check included) into a message for the caller.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <exception>
#include <string>

namespace sluice {

// Calls `run(T{})` with T the C++ type of `dtype`: float, c10::BFloat16 or c10::Half.
template <typename F>
void dispatch_float_types(at::ScalarType dtype, const char* kernel, F&& run) {
  switch (dtype) {
    case at::kFloat: run(float{}); break;
    case at::kBFloat16: run(c10::BFloat16{}); break;
    case at::kHalf: run(c10::Half{}); break;
    default: TORCH_CHECK(false, kernel, " takes float32, bfloat16 or float16, not ", dtype);
  }
}

// Runs `body`; returns null, or what it threw (valid until the next call on this thread).
template <typename F>
const char* guarded(F&& body) {
  thread_local std::string last_error;
  try {
    body();
    return nullptr;
  } catch (const std::exception& e) {
    last_error = e.what();
    return last_error.c_str();
  }
}

}  // namespace sluice
