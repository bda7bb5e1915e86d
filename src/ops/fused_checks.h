// Argument checks shared by the fused FLUX ops: every tensor on one device in one dtype, the token rows
// [B, S, C] with a unit last stride, the per-image vectors [B, C].
#pragma once
#include "fluxbatch/core/error.h"
#include "fluxbatch/ops/fp8_heads.h"

#include <ATen/core/Tensor.h>

#include <string>

namespace fluxbatch::ops::detail {

inline void check_rows(const char* op, const char* name, const at::Tensor& t) {
  FLUXBATCH_CHECK(t.defined() && t.dim() == 3 && t.stride(2) == 1, std::invalid_argument,
                  std::string(op) + ": " + name + " must be [B, S, C] with a contiguous last dimension");
}

// e4m3 heads (ops/fp8_heads.h): data [B, S, C] with a unit last stride, fp32 scales [B] on its device.
inline void check_fp8_heads(const char* op, const char* name, const Fp8Heads& t) {
  FLUXBATCH_CHECK(t.data.defined() && t.data.dim() == 3 && t.data.scalar_type() == at::kFloat8_e4m3fn &&
                      t.data.stride(2) == 1 && t.scale.defined() && t.scale.scalar_type() == at::kFloat &&
                      t.scale.numel() == t.data.size(0) && t.scale.device() == t.data.device(),
                  std::invalid_argument,
                  std::string(op) + ": " + name +
                      " must be e4m3 [B, S, C] (unit last stride) with fp32 scales [B] on its device");
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

// The gated residual update's operands (y <- x + gate * y): y contiguous and shaped like the rows x,
// gate per image; all like x.
inline void check_residual_update(const char* op, const at::Tensor& y, const at::Tensor& x, const at::Tensor& gate) {
  check_rows(op, "x", x);
  check_rows(op, "y", y);
  FLUXBATCH_CHECK(y.sizes() == x.sizes() && y.is_contiguous(), std::invalid_argument,
                  std::string(op) + ": y must be contiguous and shaped like x");
  check_like(op, "y", y, x);
  check_per_image(op, "gate", gate, x);
  check_like(op, "gate", gate, x);
}

}  // namespace fluxbatch::ops::detail
