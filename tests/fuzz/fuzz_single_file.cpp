// libFuzzer target over single-file layout detection (BFL / ComfyUI / Forge all-in-one files): the
// input is a safetensors file (or its head); its tensor names are classified into components
// (models::classify_keys) and each component's hyper-parameters detected from its shapes
// (models::detect_*_config), as runtime::locate_model and the configs of a single-file model do.
// Every step either succeeds with a validated result or fails with a ModelError. Any other
// exception, a crash, a sanitizer report, a runaway allocation or a hang is a bug.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "fluxbatch/core/error.h"
#include "fluxbatch/io/safetensors.h"
#include "fluxbatch/models/checkpoint_keys.h"

using namespace fluxbatch;

namespace {

void require(bool condition) {
  if (!condition) std::abort();
}

void detect(models::Component component, const models::ShapeMap& shapes) {
  try {
    switch (component) {
      case models::Component::kTransformer: {
        const auto c = models::detect_flux_config(shapes);
        require(c.in_channels > 0 && c.joint_attention_dim > 0 && c.num_attention_heads > 0);
        break;
      }
      case models::Component::kVae: {
        const auto c = models::detect_vae_config(shapes);
        require(c.latent_channels > 0 && !c.block_out_channels.empty());
        break;
      }
      case models::Component::kTextEncoder2: {
        const auto c = models::detect_t5_config(shapes);
        require(c.vocab_size > 0 && c.d_model > 0);
        break;
      }
      case models::Component::kTextEncoder: {
        const auto c = models::detect_clip_config(shapes);
        require(c.vocab_size > 0 && c.hidden_size > 0);
        break;
      }
    }
  } catch (const ModelError&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  io::SafetensorsHeader header;
  try {
    header = io::parse_safetensors_header(data, size, uint64_t(size) + (uint64_t{1} << 40), "fuzz.safetensors");
  } catch (const ModelError&) {
    return 0;
  }
  std::vector<std::string> names;
  for (const auto& t : header.tensors) names.push_back(t.name);
  for (const models::ComponentKeys& keys : models::classify_keys(names)) {
    require(keys.count > 0);
    models::ShapeMap shapes;
    std::vector<std::string> bare;
    for (const auto& t : header.tensors) {
      if (t.name.compare(0, keys.prefix.size(), keys.prefix) != 0) continue;
      shapes[t.name.substr(keys.prefix.size())] = t.shape;
      bare.push_back(t.name.substr(keys.prefix.size()));
    }
    require(!shapes.empty());
    if (keys.component == models::Component::kTransformer) models::has_guidance_embedder(bare);
    detect(keys.component, shapes);
  }
  return 0;
}
