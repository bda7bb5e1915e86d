#include "fluxbatch/models/vae/config.h"

#include "../config_fields.h"

namespace fluxbatch::models::vae {

void VaeConfig::validate(const std::string& origin) const {
  using detail::require_positive;
  require_positive(origin, "latent_channels", latent_channels);
  require_positive(origin, "out_channels", out_channels);
  require_positive(origin, "layers_per_block", layers_per_block);
  require_positive(origin, "norm_num_groups", norm_num_groups);
  if (block_out_channels.empty() || block_out_channels.size() > 8) {
    throw ModelError(origin + ": \"block_out_channels\" must have 1 to 8 entries (got " +
                     std::to_string(block_out_channels.size()) + ")");
  }
  for (int64_t channels : block_out_channels) {
    if (channels <= 0 || channels % norm_num_groups != 0) {
      throw ModelError(origin + ": \"block_out_channels\" entry " + std::to_string(channels) +
                       " is not a positive multiple of \"norm_num_groups\" " + std::to_string(norm_num_groups));
    }
  }
  if (!(scaling_factor > 0)) throw ModelError(origin + ": \"scaling_factor\" must be positive");
}

VaeConfig VaeConfig::from_json_file(const std::string& path) {
  const nlohmann::json root = detail::read_config_json(path);
  const detail::ConfigFields f(root, path);
  VaeConfig c;
  f.get("latent_channels", &c.latent_channels);
  f.get("out_channels", &c.out_channels);
  f.get("block_out_channels", &c.block_out_channels);
  f.get("layers_per_block", &c.layers_per_block);
  f.get("norm_num_groups", &c.norm_num_groups);
  f.get("mid_block_add_attention", &c.mid_block_add_attention);
  f.get("scaling_factor", &c.scaling_factor);
  if (root.contains("shift_factor") && root["shift_factor"].is_null()) {
    c.shift_factor = 0.0;  // SD-style VAEs: no shift
  } else {
    f.get("shift_factor", &c.shift_factor);
  }
  f.check_list_size("up_block_types", c.block_out_channels.size());
  std::string act = "silu";
  f.get("act_fn", &act);
  if (act != "silu") f.fail("act_fn", "must be \"silu\" (the only activation the decoder implements)");
  bool post_quant_conv = false;
  f.get("use_post_quant_conv", &post_quant_conv);
  if (post_quant_conv) f.fail("use_post_quant_conv", "is not supported (FLUX VAEs have no post_quant_conv)");
  c.validate(path);
  return c;
}

}  // namespace fluxbatch::models::vae
