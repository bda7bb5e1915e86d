#include "nf4_kernels.h"

namespace fluxbatch::ops::detail {

// The reference lives with the format (quant::dequantize_nf4_into): one loop, bnb's rounding.
void nf4_dequantize_cpu(const quant::Nf4Tensor& w, at::Tensor& out) { quant::dequantize_nf4_into(w, out); }

}  // namespace fluxbatch::ops::detail
