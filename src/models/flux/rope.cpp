#include "fluxbatch/models/flux/rope.h"

#include "fluxbatch/core/error.h"

#include <ATen/ATen.h>

#include <string>

namespace fluxbatch::models::flux {

nn::RopeTables flux_pos_embed(const at::Tensor& ids, const std::vector<int64_t>& axes_dims, double theta) {
  FLUXBATCH_CHECK(ids.dim() == 2 && ids.size(1) == static_cast<int64_t>(axes_dims.size()), InputError,
                  "flux_pos_embed: ids must be [S, " + std::to_string(axes_dims.size()) + "], got " +
                      std::to_string(ids.dim()) + "-D");
  const at::Tensor pos = ids.to(at::kFloat);  // the reference rounds ids to fp32 first
  std::vector<at::Tensor> cos;
  std::vector<at::Tensor> sin;
  for (size_t axis = 0; axis < axes_dims.size(); ++axis) {
    nn::RopeTables t = nn::rope_1d(axes_dims[axis], pos.select(1, static_cast<int64_t>(axis)), theta);
    cos.push_back(std::move(t.cos));
    sin.push_back(std::move(t.sin));
  }
  return {at::cat(cos, -1), at::cat(sin, -1)};
}

}  // namespace fluxbatch::models::flux
