// What a LoRA costs on the GPU (issue 17). Not a test: scripts/bench/lora_bench.sh runs it on the GPU machine.
//   fluxbatch_bench_lora MODEL_DIR [--nf4 NF4_DIR] [--rank 16] [--size 1024] [--reps 10] [--json OUT.json]
// MODEL_DIR is a dense diffusers FLUX.1 folder (scripts/bench/make_random_flux.py makes a random full-size one;
// speed does not depend on the weight values), NF4_DIR its bitsandbytes-NF4 copy. A rank-R LoRA on every Linear
// of the transformer (diffusers/PEFT keys, bf16, random) is written next to OUT, then:
//   lora_load_s       read + check against the model + hash (LoraCatalog::load, what render does before loading)
//   lora_attach_s     its factors onto the transformer's Linears on the GPU
//   forward_*_ms      one transformer forward (fused kernels, eager, batch 1, SIZE^2, 512 tokens), median of REPS:
//                     no LoRA, side path, merged; side/none and merged/none ratios (targets 1.05 and 1.00)
//   merge_s/unmerge_s merging the LoRA into the bf16 weights (originals to host memory) and putting them back
//   nf4_*             the same forward on the NF4 transformer, without and with the side path
//   fp8_*             the same with --compute fp8's layers (per-channel e4m3 weights made from the NF4 ones,
//                     the blocks' Linears, models::flux::computes_in_fp8), without and with the side path
#include "bench_common.h"
#include "fluxbatch/job/job_spec.h"
#include "fluxbatch/models/flux/config.h"
#include "fluxbatch/models/flux/transformer.h"
#include "fluxbatch/nn/linear.h"
#include "fluxbatch/nn/lora.h"
#include "fluxbatch/nn/fp8_state.h"
#include "fluxbatch/nn/nf4_state.h"
#include "fluxbatch/nn/weights.h"
#include "fluxbatch/runtime/lora/lora_catalog.h"
#include "fluxbatch/runtime/model_io/model_files.h"
#include "fluxbatch/sampling/latents.h"

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAEvent.h>
#include <c10/core/InferenceMode.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using namespace fluxbatch;
using models::flux::FluxConfig;
using models::flux::FluxTransformer2DModel;

namespace {

bench::Figures figure("  %-28s %.4g\n");

using bench::Inputs;
using bench::median_ms;
using bench::random_inputs;
using bench::safetensors_in;
using bench::seconds_since;

// A rank-`rank` PEFT LoRA on every Linear of `model`, written to `path`.
void write_lora(const FluxTransformer2DModel& model, int64_t rank, const std::string& path) {
  nn::TensorMap tensors;
  at::manual_seed(7);
  for (const auto& item : model->named_modules()) {
    const auto* linear = dynamic_cast<const nn::LinearImpl*>(item.value().get());
    if (linear == nullptr) continue;
    const auto opt = at::TensorOptions().dtype(at::kBFloat16);
    tensors["transformer." + item.key() + ".lora_A.weight"] = at::randn({rank, linear->in_features()}, opt) * 0.01;
    tensors["transformer." + item.key() + ".lora_B.weight"] = at::randn({linear->out_features(), rank}, opt) * 0.01;
  }
  nn::write_safetensors(path, tensors);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s MODEL_DIR [--nf4 DIR] [--rank R] [--size PX] [--reps N] [--json OUT]\n", argv[0]);
    return 2;
  }
  const fs::path model_dir = argv[1];
  std::string nf4_dir, json_path = "lora_figures.json";
  int64_t rank = 16;
  int size = 1024, reps = 10;
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--nf4") nf4_dir = argv[i + 1];
    if (flag == "--rank") rank = std::stoll(argv[i + 1]);
    if (flag == "--size") size = std::stoi(argv[i + 1]);
    if (flag == "--reps") reps = std::stoi(argv[i + 1]);
    if (flag == "--json") json_path = argv[i + 1];
  }
  try {
    const c10::InferenceMode inference;
    const FluxConfig config = FluxConfig::from_json_file((model_dir / "transformer" / "config.json").string());
    FluxTransformer2DModel model(config, at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA));
    {
      nn::LoadOptions load;
      load.dtype = at::kBFloat16;
      load.device = at::Device(at::kCUDA);
      load.what = "transformer";
      nn::load_state(*model, nn::read_safetensors(safetensors_in(model_dir / "transformer")), load);
    }
    const std::string lora_path = (fs::path(json_path).parent_path() / ("bench_lora_r" + std::to_string(rank) +
                                                                          ".safetensors")).string();
    write_lora(model, rank, lora_path);
    figure("lora_file_mib", static_cast<double>(fs::file_size(lora_path)) / (1 << 20));

    job::JobSpec spec;
    job::RenderItem item;
    job::LoraRef ref;
    ref.path = lora_path;
    item.params.loras = {ref};
    spec.items = {item};
    auto t0 = std::chrono::steady_clock::now();
    const auto catalog = runtime::LoraCatalog::load(spec, runtime::locate_model(model_dir.string()));
    figure("lora_load_s", seconds_since(t0));
    t0 = std::chrono::steady_clock::now();
    catalog->attach(*model, models::lora::LoraComponent::kTransformer, {0}, at::kBFloat16, at::Device(at::kCUDA));
    c10::cuda::device_synchronize();
    figure("lora_attach_s", seconds_since(t0));

    const Inputs in = random_inputs(config, size);
    const auto run = [&](const FluxTransformer2DModel& m) {
      return [&] { m->forward(in.hidden, in.encoder, in.pooled, in.timestep, in.img_ids, in.txt_ids, in.guidance); };
    };
    const std::vector<nn::LoraSet> with = {{{0, 1.0}}};
    const double none = median_ms(run(model), reps);
    double side = 0;
    {
      const nn::LoraScope scope(&with);
      side = median_ms(run(model), reps);
    }
    std::vector<nn::LinearImpl*> linears;
    for (const auto& m : model->modules()) {
      if (auto* l = dynamic_cast<nn::LinearImpl*>(m.get())) linears.push_back(l);
    }
    t0 = std::chrono::steady_clock::now();
    for (auto* l : linears) l->merge_loras(with[0], at::Device(at::kCPU));
    c10::cuda::device_synchronize();
    const double merge_s = seconds_since(t0);
    const double merged = median_ms(run(model), reps);
    t0 = std::chrono::steady_clock::now();
    for (auto* l : linears) l->unmerge_loras();
    c10::cuda::device_synchronize();
    const double unmerge_s = seconds_since(t0);
    const std::string key = "forward_" + std::to_string(size) + "_r" + std::to_string(rank);
    figure(key + "_none_ms", none);
    figure(key + "_side_ms", side);
    figure(key + "_merged_ms", merged);
    figure(key + "_side_over_none", side / none);
    figure(key + "_merged_over_none", merged / none);
    figure("merge_s", merge_s);
    figure("unmerge_s", unmerge_s);

    if (!nf4_dir.empty()) {
      FluxTransformer2DModel nf4(config, at::TensorOptions().dtype(at::kBFloat16).device(at::kCPU));
      nn::LoadOptions load;
      load.dtype = at::kBFloat16;
      load.device = at::Device(at::kCUDA);
      load.what = "transformer (nf4)";
      nn::load_nf4_state(*nf4, nn::read_safetensors(safetensors_in(fs::path(nf4_dir) / "transformer")), load);
      model = FluxTransformer2DModel(nullptr);  // room for the NF4 copy's scratch
      c10::cuda::CUDACachingAllocator::emptyCache();
      catalog->attach(*nf4, models::lora::LoraComponent::kTransformer, {0}, at::kBFloat16, at::Device(at::kCUDA));
      const double nf4_none = median_ms(run(nf4), reps);
      double nf4_side = 0;
      {
        const nn::LoraScope scope(&with);
        nf4_side = median_ms(run(nf4), reps);
      }
      figure("nf4_" + key + "_none_ms", nf4_none);
      figure("nf4_" + key + "_side_ms", nf4_side);
      figure("nf4_" + key + "_side_over_none", nf4_side / nf4_none);

      // --compute fp8 (compute capability 8.9+): the blocks' NF4 layers become fp8 weights.
      if (ops::fp8_gemm_supported(at::Device(at::kCUDA))) {
        nn::nf4_layers_to_fp8(*nf4, models::flux::computes_in_fp8, /*keep_nf4=*/false);
        nf4->join_fp8_projections();  // as the pipeline's loader does
        c10::cuda::CUDACachingAllocator::emptyCache();
        const double fp8_none = median_ms(run(nf4), reps);
        double fp8_side = 0;
        {
          const nn::LoraScope scope(&with);
          fp8_side = median_ms(run(nf4), reps);
        }
        figure("fp8_" + key + "_none_ms", fp8_none);
        figure("fp8_" + key + "_side_ms", fp8_side);
        figure("fp8_" + key + "_side_over_none", fp8_side / fp8_none);
      }
    }
    figure.write_json(json_path);
    std::printf("figures in %s\n", json_path.c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
