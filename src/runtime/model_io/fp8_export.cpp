#include "fluxbatch/runtime/model_io/fp8_export.h"

#include "fluxbatch/core/error.h"
#include "fluxbatch/core/log.h"
#include "fluxbatch/core/strings.h"
#include "fluxbatch/models/weight_map.h"
#include "fluxbatch/nn/weights.h"
#include "fluxbatch/quant/fp8_format.h"
#include "fluxbatch/runtime/model_io/model_files.h"
#include "fluxbatch/runtime/model_io/quantize_model.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <filesystem>

namespace fluxbatch::runtime {
namespace {

namespace fs = std::filesystem;

// The blocks' Linear weights, by BFL name: 2-D ".weight" tensors under double_blocks. / single_blocks.
// (their norms' weights are 1-D ".scale").
bool fp8_in_file(const std::string& bfl_name, const at::Tensor& t) {
  return (starts_with(bfl_name, "double_blocks.") || starts_with(bfl_name, "single_blocks.")) &&
         ends_with(bfl_name, ".weight") && t.dim() == 2;
}

}  // namespace

Fp8ExportReport export_fp8_transformer(const std::string& in, const std::string& out, bool overwrite,
                                       c10::Device device) {
  const ModelFiles model = dense_diffusers_model(in);
  FLUXBATCH_CHECK(fs::path(out).extension() == ".safetensors", OutputError,
                  out + ": quantize --to fp8 writes one .safetensors file; name OUT <something>.safetensors");
  check_quantize_output(in, fs::path(out), overwrite);
  const models::flux::FluxConfig config = models::flux::FluxConfig::from_json_file(model.transformer.config_path);
  Fp8ExportReport report;
  for (const auto& f : weight_files(model.transformer)) report.transformer_bytes_in += fs::file_size(f);
  const c10::InferenceMode inference;
  const nn::TensorMap weights = read_component(model.transformer, /*rename=*/false);
  for (const auto& [name, t] : weights) {
    FLUXBATCH_CHECK(at::isFloatingType(t.scalar_type()) && !at::isFloat8Type(t.scalar_type()), ModelError,
                    in + ": " + name + " is " + std::string(c10::toString(t.scalar_type())) +
                        "; quantize --to fp8 reads a bf16 / fp16 / fp32 transformer");
  }
  // Each BFL tensor is converted as it is made: a fused qkv / linear1 exists in bf16 only until its fp8
  // copy does, and only the fp8 file's tensors stay in memory.
  nn::TensorMap file;
  file["scaled_fp8"] = at::empty({0}, at::TensorOptions().dtype(at::kFloat8_e4m3fn));
  models::flux_diffusers_to_bfl(weights, config, [&](const std::string& name, const at::Tensor& t) {
    if (!fp8_in_file(name, t)) {
      file[name] = t.to(at::kBFloat16);
      return;
    }
    const quant::Fp8Tensor q = quant::quantize_fp8_per_tensor(t.to(device));
    file[name] = q.data.to(at::kCPU);
    file[name.substr(0, name.size() - 7) + ".scale_weight"] = q.scale.narrow(0, 0, 1).reshape({}).to(at::kCPU);
    if (++report.fp8_linears % 50 == 0) log::debug("quantize --to fp8: " + std::to_string(report.fp8_linears) + " Linears");
  });
  nn::write_safetensors(out, file, {{"format", "pt"}});
  report.bytes_out = fs::file_size(out);
  return report;
}

}  // namespace fluxbatch::runtime
