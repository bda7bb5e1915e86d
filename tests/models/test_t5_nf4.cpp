// T5 quantized to NF4 while loading (models::t5::load_t5_quantizing_nf4, what `--quantize nf4` does to
// text_encoder_2): which layers, exactly which weights, how far from dense, how much smaller.
#include "fluxbatch/models/t5/t5_encoder.h"
#include "fluxbatch/nn/linear.h"
#include "fluxbatch/quant/nf4_format.h"
#include "models/t5/t5_layers.h"
#include "test_t5_clip_vae_support.h"

#include <catch2/catch_test_macros.hpp>

#include <map>

using namespace fluxbatch;
using namespace fluxbatch::test::encoders;
using fluxbatch::models::t5::T5EncoderModel;

namespace {

struct Loaded {
  T5EncoderModel model{nullptr};
  nn::TensorMap weights;
};

Loaded load(bool quantize) {
  const auto folder = model_dir("dev", "text_encoder_2");
  Loaded out;
  out.model = T5EncoderModel(models::t5::T5Config::from_json_file(config_json(folder)), at::kFloat);
  out.weights = read_component_weights(folder);
  models::t5::canonicalize_t5_checkpoint(out.weights);
  nn::LoadOptions options;
  options.dtype = at::kFloat;
  options.ignore_prefixes = models::t5::t5_ignored_prefixes();
  if (quantize) {
    models::t5::load_t5_quantizing_nf4(*out.model, out.weights, options);
  } else {
    nn::load_state(*out.model, out.weights, options);
  }
  return out;
}

std::map<std::string, std::shared_ptr<nn::LinearImpl>> linears(T5EncoderModel& model) {
  std::map<std::string, std::shared_ptr<nn::LinearImpl>> out;
  for (const auto& item : model->named_modules("", false)) {
    if (auto l = std::dynamic_pointer_cast<nn::LinearImpl>(item.value())) out.emplace(item.key(), l);
  }
  return out;
}

}  // namespace

TEST_CASE("t5_linear_is_quantized skips only the feed-forward wo, as transformers' bnb quantizer", "[t5][nf4load]") {
  CHECK(models::t5::t5_linear_is_quantized("encoder.block.0.layer.0.SelfAttention.q"));
  CHECK(models::t5::t5_linear_is_quantized("encoder.block.3.layer.1.DenseReluDense.wi_0"));
  CHECK_FALSE(models::t5::t5_linear_is_quantized("encoder.block.3.layer.1.DenseReluDense.wo"));
  CHECK(models::t5::t5_linear_is_quantized("encoder.block.3.layer.1.DenseReluDense.wout"));
}

TEST_CASE("T5 quantized on load: every Linear but wo in NF4, bit-exact with its dequantized weights", "[t5][nf4load]") {
  Loaded q = load(true);
  Loaded dense = load(false);
  int nf4 = 0, kept = 0;
  int64_t dense_bytes = 0, nf4_bytes = 0;
  c10::InferenceMode guard;
  auto dense_linears = linears(dense.model);
  for (const auto& [name, layer] : linears(q.model)) {
    INFO(name);
    if (!models::t5::t5_linear_is_quantized(name)) {
      CHECK_FALSE(layer->is_nf4());
      CHECK(at::equal(layer->weight, dense_linears.at(name)->weight));
      ++kept;
      continue;
    }
    REQUIRE(layer->is_nf4());
    ++nf4;
    const quant::Nf4Tensor& w = layer->nf4();
    CHECK(w.dtype == at::kBFloat16);
    CHECK_FALSE(w.is_nested());
    // The same codes as quantizing the checkpoint's bf16 weight directly (bnb on CUDA's rounding).
    const quant::Nf4Tensor want = quant::quantize_nf4(q.weights.at(name + ".weight").to(at::kBFloat16), false);
    CHECK(at::equal(w.packed, want.packed));
    CHECK(at::equal(w.absmax, want.absmax));
    dense_bytes += w.numel() * 2;  // as bf16
    nf4_bytes += w.packed.numel() + w.absmax.numel() * 4;
    // Give the dense model the weights NF4 stands for: its output must then be identical.
    dense_linears.at(name)->weight.copy_(quant::dequantize_nf4(w, at::kBFloat16).to(at::kFloat));
  }
  CHECK(nf4 == 12);  // 2 blocks x (q, k, v, o, wi_0, wi_1)
  CHECK(kept == 2);  // 2 x wo
  // 4 bits + a float32 absmax per 64 weights = 4.5 bits against bf16's 16: 3.56x smaller.
  CHECK(static_cast<double>(dense_bytes) / static_cast<double>(nf4_bytes) > 3.5);

  const auto golden = read_tensors(golden_file("dev", "t5.safetensors"));
  const at::Tensor ids = golden.at("input_ids");
  const at::Tensor out = q.model->forward(ids);
  CHECK(at::equal(out, dense.model->forward(ids)));

  // Against the original dense T5 (fp32 golden). This tiny T5 has random weights, so NF4's error is
  // not damped as in a trained model: measured max error 0.24 of the largest magnitude, RMS error 0.19
  // of the RMS, cosine 0.983. The bounds leave some room and still catch a wrong layer or scale.
  const at::Tensor& expected = golden.at("last_hidden_state");
  const double rel = max_abs_diff(out, expected) / max_abs(expected);
  const at::Tensor diff = (out.to(at::kDouble) - expected.to(at::kDouble));
  const double rms = diff.norm().item<double>() / expected.to(at::kDouble).norm().item<double>();
  const double cosine = at::cosine_similarity(out.flatten(), expected.flatten(), 0).item<double>();
  INFO("NF4 T5 vs dense: max error " << rel << ", RMS error " << rms << ", cosine " << cosine);
  CHECK(rel > 0.0);
  CHECK(rel < 0.35);
  CHECK(rms < 0.25);
  CHECK(cosine > 0.97);
}
