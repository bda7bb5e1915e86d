// Argument checks shared by the fused FLUX ops: every tensor on one device in one dtype, the token rows
// [B, S, C] with a unit last stride, the per-image vectors [B, C].
#pragma once
#include "fluxbatch/core/error.h"

#include <ATen/core/Tensor.h>

#include <string>

namespace fluxbatch::ops::detail {

inline void check_rows(const char* op, const char* name, const at::Tensor& t) {
  FLUXBATCH_CHECK(t.defined() && t.dim() == 3 && t.stride(2) == 1, std::invalid_argument,
                  std::string(op) + ": " + name + " must be [B, S, C] with a contiguous last dimension");
}

inline void check_per_image(const char* op, const char* name, const at::Tensor& t, const at::Tensor& rows) {
  FLUXBATCH_CHECK(t.defined() && t.dim() == 2 && t.size(0) == rows.size(0) && t.size(1) == rows.size(2) &&
                      t.stride(1) == 1,
                  std::invalid_argument,
                  std::string(op) + ": " + name + " must be [B, C] = [" + std::to_string(rows.size(0)) + ", " +
                      std::to_string(rows.size(2)) + "] with a contiguous last dimension");
}

inline void check_like(const char* op, const char* name, const at::Tensor& t, const at::Tensor& ref) {
  FLUXBATCH_CHECK(t.scalar_type() == ref.scalar_type() && t.device() == ref.device(), std::invalid_argument,
                  std::string(op) + ": " + name + " must have the input's dtype and device");
}

}  // namespace fluxbatch::ops::detail
