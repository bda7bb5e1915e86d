// FluxPosEmbed: multi-axis RoPE over (text and image) position ids. Each id column i gets its own
// rope_1d of axes_dims[i] dims; the tables are concatenated to one head dim.
#pragma once
#include "fluxbatch/nn/rope.h"

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace fluxbatch::models::flux {

constexpr double kRopeTheta = 10000.0;

// ids: [S, n_axes] (txt_ids then img_ids, concatenated) -> cos/sin [S, sum(axes_dims)], fp32, on ids' device.
nn::RopeTables flux_pos_embed(const at::Tensor& ids, const std::vector<int64_t>& axes_dims,
                              double theta = kRopeTheta);

}  // namespace fluxbatch::models::flux
