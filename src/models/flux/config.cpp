#include "fluxbatch/models/flux/config.h"

#include "../config_fields.h"

namespace fluxbatch::models::flux {

void FluxConfig::validate(const std::string& origin) const {
  using detail::require_positive;
  require_positive(origin, "in_channels", in_channels);
  require_positive(origin, "out_channels", out_channels);
  require_positive(origin, "num_layers", num_layers);
  require_positive(origin, "attention_head_dim", attention_head_dim);
  require_positive(origin, "num_attention_heads", num_attention_heads);
  require_positive(origin, "joint_attention_dim", joint_attention_dim);
  require_positive(origin, "pooled_projection_dim", pooled_projection_dim);
  if (num_single_layers < 0) throw ModelError(origin + ": \"num_single_layers\" must not be negative");
  if (patch_size != 1) {
    throw ModelError(origin + ": \"patch_size\" " + std::to_string(patch_size) +
                     " is not supported (FLUX.1 packs 2x2 patches outside the transformer: patch_size 1)");
  }
  if (axes_dims_rope.size() != 3) {
    throw ModelError(origin + ": \"axes_dims_rope\" must have 3 entries (got " + std::to_string(axes_dims_rope.size()) +
                     ")");
  }
  int64_t sum = 0;
  for (int64_t axis : axes_dims_rope) {
    if (axis <= 0 || axis % 2 != 0) {
      throw ModelError(origin + ": \"axes_dims_rope\" entries must be positive and even (got " + std::to_string(axis) +
                       ")");
    }
    sum += axis;
  }
  if (sum != attention_head_dim) {
    throw ModelError(origin + ": sum of \"axes_dims_rope\" (" + std::to_string(sum) +
                     ") must equal \"attention_head_dim\" (" + std::to_string(attention_head_dim) + ")");
  }
}

FluxConfig FluxConfig::from_json_file(const std::string& path) {
  const nlohmann::json root = detail::read_config_json(path);
  const detail::ConfigFields f(root, path);
  FluxConfig c;
  f.get("patch_size", &c.patch_size);
  f.get("in_channels", &c.in_channels);
  c.out_channels = c.in_channels;  // diffusers: out_channels null -> in_channels
  f.get("out_channels", &c.out_channels);
  f.get("num_layers", &c.num_layers);
  f.get("num_single_layers", &c.num_single_layers);
  f.get("attention_head_dim", &c.attention_head_dim);
  f.get("num_attention_heads", &c.num_attention_heads);
  f.get("joint_attention_dim", &c.joint_attention_dim);
  f.get("pooled_projection_dim", &c.pooled_projection_dim);
  f.get("guidance_embeds", &c.guidance_embeds);
  f.get("axes_dims_rope", &c.axes_dims_rope);
  c.validate(path);
  return c;
}

}  // namespace fluxbatch::models::flux
