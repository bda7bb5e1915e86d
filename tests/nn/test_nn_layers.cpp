// nn::Linear, norms and activations against their defining formulas (and torch.nn's parameter names).
#include "fluxbatch/nn/activations.h"
#include "fluxbatch/nn/linear.h"
#include "fluxbatch/nn/norms.h"

#include <catch2/catch_test_macros.hpp>

#include <ATen/ATen.h>

#include <cmath>
#include <string>
#include <vector>

namespace {

std::vector<std::string> parameter_names(const torch::nn::Module& m) {
  std::vector<std::string> names;
  for (const auto& p : m.named_parameters()) names.push_back(p.key());
  return names;
}

bool close(const at::Tensor& a, const at::Tensor& b, double tol = 1e-5) {
  return a.sizes() == b.sizes() && (a - b).abs().max().item<double>() < tol;
}

}  // namespace

TEST_CASE("nn::Linear has torch.nn.Linear's names, shapes and math", "[nn]") {
  at::manual_seed(1);
  fluxbatch::nn::Linear linear(5, 3);
  CHECK(parameter_names(*linear) == std::vector<std::string>{"weight", "bias"});
  CHECK(linear->weight.sizes() == at::IntArrayRef({3, 5}));
  CHECK_FALSE(linear->weight.requires_grad());
  linear->weight.copy_(at::randn({3, 5}));
  linear->bias.copy_(at::randn({3}));
  const at::Tensor x = at::randn({2, 4, 5});
  CHECK(close(linear->forward(x), at::matmul(x, linear->weight.t()) + linear->bias));

  fluxbatch::nn::Linear no_bias(5, 3, false, at::TensorOptions().dtype(at::kBFloat16));
  CHECK(parameter_names(*no_bias) == std::vector<std::string>{"weight"});
  CHECK(no_bias->weight.scalar_type() == at::kBFloat16);
  no_bias->to(at::kFloat);
  CHECK(no_bias->weight.scalar_type() == at::kFloat);  // the member follows Module::to
}

TEST_CASE("nn::RMSNorm normalises by the root mean square and scales by weight", "[nn]") {
  at::manual_seed(2);
  fluxbatch::nn::RMSNorm norm(8, 1e-6);
  CHECK(parameter_names(*norm) == std::vector<std::string>{"weight"});
  norm->weight.copy_(at::rand({8}) + 0.5);
  const at::Tensor x = at::randn({2, 3, 4, 8}) * 3;
  const at::Tensor expected = x * at::rsqrt(x.pow(2).mean(-1, true) + 1e-6) * norm->weight;
  CHECK(close(norm->forward(x), expected));
  CHECK(parameter_names(*fluxbatch::nn::RMSNorm(8, 1e-6, false)).empty());
}

TEST_CASE("nn layer norms: without affine, and with torch.nn.LayerNorm's weight and bias", "[nn]") {
  at::manual_seed(3);
  const at::Tensor x = at::randn({2, 5, 16}) * 2 + 1;
  const at::Tensor mean = x.mean(-1, true);
  const at::Tensor var = x.var(-1, /*unbiased=*/false, true);
  const at::Tensor normed = (x - mean) / at::sqrt(var + 1e-6);
  CHECK(close(fluxbatch::nn::layer_norm(x, 1e-6), normed));

  fluxbatch::nn::LayerNorm ln(16, 1e-6);
  CHECK(parameter_names(*ln) == std::vector<std::string>{"weight", "bias"});
  ln->weight.copy_(at::randn({16}));
  ln->bias.copy_(at::randn({16}));
  CHECK(close(ln->forward(x), normed * ln->weight + ln->bias));
  CHECK(parameter_names(*fluxbatch::nn::LayerNorm(16, 1e-5, true, false)) == std::vector<std::string>{"weight"});
}

TEST_CASE("nn activations follow their formulas", "[nn]") {
  const at::Tensor x = at::linspace(-4, 4, 33, at::kDouble);
  const at::Tensor tanh_form = 0.5 * x * (1 + at::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * x.pow(3))));
  CHECK(close(fluxbatch::nn::gelu_tanh(x), tanh_form, 1e-12));
  CHECK(close(fluxbatch::nn::gelu(x), 0.5 * x * (1 + at::erf(x / std::sqrt(2.0))), 1e-12));
  CHECK(close(fluxbatch::nn::silu(x), x / (1 + at::exp(-x)), 1e-12));
  CHECK(close(fluxbatch::nn::quick_gelu(x), x / (1 + at::exp(-1.702 * x)), 1e-12));
}
